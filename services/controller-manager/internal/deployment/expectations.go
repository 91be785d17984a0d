package deployment

import (
	"sync"
	"time"

	"k8s.io/utils/clock"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/resource"
)

// expectationTimeout bounds how long a Deployment waits for its caches to
// show its own writes. The informers deliver every change (a relist after a
// compaction included), so it is only a guard against an unforeseen case.
const expectationTimeout = 2 * time.Minute

// expectationRecheck is when a Deployment skipped for unmet expectations is
// looked at again if no informer event brings it back first.
const expectationRecheck = time.Second

// expectations remember, per Deployment, the writes its last sync made and
// the resource_version each produced. A sync is skipped until the informer
// caches hold those versions (or newer), so decisions are never made from a
// picture that lacks the controller's own last move: scaling a new
// ReplicaSet up from a cache that still shows an old ReplicaSet's
// pre-scale-down size could otherwise exceed replicas + maxSurge.
//
// Safe for concurrent use.
type expectations struct {
	deployments *informer.Typed[*capstanv1.Deployment]
	replicaSets *informer.Typed[*capstanv1.ReplicaSet]
	clock       clock.PassiveClock

	mu      sync.Mutex
	pending map[string]*pendingWrites // by Deployment key
}

type pendingWrites struct {
	since  time.Time
	writes map[writeTarget]writeResult
}

// writeTarget is one object written: its kind and key.
type writeTarget struct {
	kind string
	key  string
}

// writeResult is what the cache must show for the write to be seen.
type writeResult struct {
	uid             string
	resourceVersion int64
	deleted         bool
}

func newExpectations(d *informer.Typed[*capstanv1.Deployment], rs *informer.Typed[*capstanv1.ReplicaSet], clk clock.PassiveClock) *expectations {
	return &expectations{deployments: d, replicaSets: rs, clock: clk, pending: make(map[string]*pendingWrites)}
}

// wrote records that syncing deploymentKey stored obj (a Deployment or a
// ReplicaSet) as returned by the API.
func (e *expectations) wrote(deploymentKey string, obj resource.Object) {
	if obj == nil {
		return
	}
	meta := obj.GetMetadata()
	e.add(deploymentKey, targetOf(obj), writeResult{uid: meta.GetUid(), resourceVersion: meta.GetResourceVersion()})
}

// deleted records that syncing deploymentKey deleted obj.
func (e *expectations) deleted(deploymentKey string, obj resource.Object) {
	e.add(deploymentKey, targetOf(obj), writeResult{uid: obj.GetMetadata().GetUid(), deleted: true})
}

func targetOf(obj resource.Object) writeTarget {
	kind := replicaSetKind.Name
	if _, ok := obj.(*capstanv1.Deployment); ok {
		kind = deploymentKind.Name
	}
	return writeTarget{kind: kind, key: informer.Key(obj)}
}

func (e *expectations) add(deploymentKey string, target writeTarget, result writeResult) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.pending[deploymentKey]
	if !ok {
		p = &pendingWrites{since: e.clock.Now(), writes: make(map[writeTarget]writeResult)}
		e.pending[deploymentKey] = p
	}
	p.writes[target] = result
}

// satisfied reports whether the caches show every write recorded for
// deploymentKey; once they do (or the wait timed out) the record is dropped.
func (e *expectations) satisfied(deploymentKey string) (ok, timedOut bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, found := e.pending[deploymentKey]
	if !found {
		return true, false
	}
	for target, result := range p.writes {
		if e.seen(target, result) {
			delete(p.writes, target)
		}
	}
	if len(p.writes) == 0 {
		delete(e.pending, deploymentKey)
		return true, false
	}
	if e.clock.Since(p.since) > expectationTimeout {
		delete(e.pending, deploymentKey)
		return true, true
	}
	return false, false
}

func (e *expectations) seen(target writeTarget, result writeResult) bool {
	inf := e.replicaSets.Informer
	if target.kind == deploymentKind.Name {
		inf = e.deployments.Informer
	}
	if result.deleted {
		cached, ok := inf.GetByKey(target.key)
		return !ok || cached.GetMetadata().GetUid() != result.uid
	}
	// Watch events arrive in revision order: a cache at or past the write's
	// revision holds the write or something newer.
	return inf.ResourceVersion() >= result.resourceVersion
}

// forget drops the record of a Deployment that is gone.
func (e *expectations) forget(deploymentKey string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.pending, deploymentKey)
}
