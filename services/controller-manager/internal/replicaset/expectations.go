package replicaset

import (
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// expectations remember, per ReplicaSet key, the pods the controller has
// asked to create or delete and the informer has not shown yet, as
// Kubernetes' ControllerExpectations do. While any are outstanding the
// cache is known to be behind the controller's own writes, so the
// ReplicaSet's pod count must not be acted on: that is what keeps a lagging
// cache from creating the same pods twice.
//
// Unlike Kubernetes, creations are tracked by pod name (the controller picks
// the names), so only the pods this controller created satisfy them, and a
// pod someone else happened to create does not.
//
// Safe for concurrent use: informer handlers observe, workers expect.
type expectations struct {
	clock   clock.PassiveClock
	timeout time.Duration

	mu    sync.Mutex
	byKey map[string]*expectation
}

type expectation struct {
	creates map[string]bool // pod names
	deletes map[string]bool // pod names
	// since is when the last expectations were raised; after timeout they
	// are given up on (a watch event was lost, or a write that failed
	// ambiguously never happened).
	since time.Time
}

func newExpectations(clk clock.PassiveClock, timeout time.Duration) *expectations {
	return &expectations{clock: clk, timeout: timeout, byKey: make(map[string]*expectation)}
}

// satisfied reports whether the cache may be trusted for rsKey: nothing is
// outstanding, or what is has been outstanding longer than the timeout
// (expired, and then it is forgotten: the caller must not trust the cache
// blindly and should read the pods from the API). When not satisfied, wait
// is how long until the outstanding expectations expire.
func (e *expectations) satisfied(rsKey string) (ok, expired bool, wait time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	exp, found := e.byKey[rsKey]
	if !found || len(exp.creates)+len(exp.deletes) == 0 {
		return true, false, 0
	}
	if age := e.clock.Since(exp.since); age <= e.timeout {
		return false, false, e.timeout - age
	}
	delete(e.byKey, rsKey)
	return true, true, 0
}

func (e *expectations) get(rsKey string) *expectation {
	exp, ok := e.byKey[rsKey]
	if !ok {
		exp = &expectation{creates: map[string]bool{}, deletes: map[string]bool{}}
		e.byKey[rsKey] = exp
	}
	return exp
}

// expectCreations records that the pods named are about to be created.
func (e *expectations) expectCreations(rsKey string, podNames []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	exp := e.get(rsKey)
	for _, n := range podNames {
		exp.creates[n] = true
	}
	exp.since = e.clock.Now()
}

// expectDeletions records that the pods named are about to be deleted.
func (e *expectations) expectDeletions(rsKey string, podNames []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	exp := e.get(rsKey)
	for _, n := range podNames {
		exp.deletes[n] = true
	}
	exp.since = e.clock.Now()
}

// creationObserved: the pod appeared in the cache, or its creation
// certainly failed.
func (e *expectations) creationObserved(rsKey, podName string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if exp, ok := e.byKey[rsKey]; ok {
		delete(exp.creates, podName)
	}
}

// deletionObserved: the pod left the cache (or is being deleted), or its
// deletion certainly failed.
func (e *expectations) deletionObserved(rsKey, podName string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if exp, ok := e.byKey[rsKey]; ok {
		delete(exp.deletes, podName)
	}
}

// forget drops everything about rsKey (the ReplicaSet is gone).
func (e *expectations) forget(rsKey string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.byKey, rsKey)
}

// pending returns the outstanding creations and deletions of rsKey.
func (e *expectations) pending(rsKey string) (creates, deletes int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if exp, ok := e.byKey[rsKey]; ok {
		return len(exp.creates), len(exp.deletes)
	}
	return 0, 0
}
