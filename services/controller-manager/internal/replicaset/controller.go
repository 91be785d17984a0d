// Package replicaset is the ReplicaSet controller: it keeps spec.replicas
// pods matching each ReplicaSet's selector running, as Kubernetes' ReplicaSet
// controller does.
//
// Informers on ReplicaSets and Pods feed a rate-limited work queue of
// ReplicaSet keys ("namespace/name"); a pod event maps to the ReplicaSet that
// controls it (its controller owner reference) or, for an orphan, to every
// ReplicaSet whose selector matches it, which may adopt it. A sync:
//
//   - claims the ReplicaSet's pods: adopts matching orphans (adding a
//     controller owner reference with an Update at the pod's
//     resource_version), releases owned pods that no longer match;
//   - if its expectations are met, creates or deletes pods to reach
//     spec.replicas, in slow-start batches (1, 2, 4, ...);
//   - writes the status (UpdateReplicaSetStatus, only when it changed).
//
// Every update and delete carries the uid and resource_version of the
// object as the sync read it (a create needs none: it is conditional on the
// name being free), so a write computed from a stale cache, or one that
// arrives late, is refused (ABORTED) rather than applied over newer state;
// the newer state's informer event queues the ReplicaSet again.
//
// # Not creating twice
//
// The controller acts on a cache that may lag behind its own writes. After
// it creates or deletes pods it expects to see them in the cache and does
// not count that ReplicaSet's pods again until it has (expectations, by pod
// name). If they do not show within Options.ExpectationsTimeout, the
// ReplicaSet's syncs read its namespace's pods from the API instead, until
// the cache agrees with the API again. A pod's name is chosen before its
// first create (<replicaset>-<5 random characters>); a create whose outcome
// is unknown (the call timed out) keeps its name, and the next attempt
// reuses it, so the name taken answers whether it landed. Run also waits,
// before acting at all, until the pod cache holds every pod the API had
// when Run began (or, after ExpectationsTimeout, reads from the API as
// above): a cache kept warm across a failover might otherwise miss the last
// pods the previous leader created.
//
// Every write uses the context given to Run; a lease-gated caller passes its
// fenced context, so a deposed leader changes nothing.
//
// # Concurrency
//
// The controller is a reconcile.Loop: its workers sync different
// ReplicaSets in parallel, and the queue never gives one key to two workers
// at once. Informer handlers only map events to keys and record
// observations in the expectations, which are safe for concurrent use. A
// Controller runs once.
package replicaset

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/clock"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/events"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/reconcile"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/selector"
)

// Defaults of Options.
const (
	DefaultExpectationsTimeout = 30 * time.Second
	// DefaultBurstReplicas caps the pods one sync creates or deletes, as in
	// Kubernetes.
	DefaultBurstReplicas = 500
)

// kindName is the owner reference kind of a ReplicaSet.
const kindName = "ReplicaSet"

var (
	podKind        = resource.MustLookup("Pod")
	replicaSetKind = resource.MustLookup(kindName)
)

// Options are what New needs besides the client and the recorder.
type Options struct {
	// ReplicaSets and Pods are the informers the controller reads. Required.
	// They may be shared with other controllers and may already be running;
	// Run waits for them to sync but does not start them.
	ReplicaSets *informer.Typed[*capstanv1.ReplicaSet]
	Pods        *informer.Typed[*capstanv1.Pod]
	// Loop: workers, logger, metrics, and the clock of expectations,
	// min_ready_seconds and back-off.
	Loop reconcile.Options
	// ExpectationsTimeout is how long the controller waits for the cache to
	// show its own creates and deletes before reading the pods from the API
	// instead; default DefaultExpectationsTimeout.
	ExpectationsTimeout time.Duration
	// BurstReplicas caps the pods created or deleted by one sync; default
	// DefaultBurstReplicas.
	BurstReplicas int
}

// Controller is the ReplicaSet controller. See the package doc.
type Controller struct {
	client   *client.Client
	recorder *events.Recorder
	rsInf    *informer.Typed[*capstanv1.ReplicaSet]
	podInf   *informer.Typed[*capstanv1.Pod]
	log      *slog.Logger
	clock    clock.WithTicker
	timeout  time.Duration
	burst    int

	loop *reconcile.Loop
	exp  *expectations

	mu sync.Mutex
	// unsettled holds, per ReplicaSet key, the names of pods whose create
	// failed without saying whether it was applied; the next creates reuse
	// them.
	unsettled map[string]map[string]bool
	// distrust holds the ReplicaSet keys whose expectations expired: their
	// syncs read pods from the API until the cache agrees with it.
	distrust map[string]bool
}

// New returns a ReplicaSet controller writing through c. recorder may be
// nil (no events).
func New(c *client.Client, recorder *events.Recorder, opts Options) (*Controller, error) {
	switch {
	case c == nil:
		return nil, errors.New("replicaset: client is nil")
	case opts.ReplicaSets == nil:
		return nil, errors.New("replicaset: Options.ReplicaSets (the ReplicaSet informer) is nil")
	case opts.Pods == nil:
		return nil, errors.New("replicaset: Options.Pods (the Pod informer) is nil")
	case opts.ExpectationsTimeout < 0:
		return nil, fmt.Errorf("replicaset: Options.ExpectationsTimeout is %v: it must not be negative", opts.ExpectationsTimeout)
	case opts.BurstReplicas < 0:
		return nil, fmt.Errorf("replicaset: Options.BurstReplicas is %d: it must not be negative", opts.BurstReplicas)
	}
	opts.Loop = opts.Loop.Complete()
	opts.Loop.Logger = opts.Loop.Logger.With("controller", loopName)
	if opts.ExpectationsTimeout == 0 {
		opts.ExpectationsTimeout = DefaultExpectationsTimeout
	}
	if opts.BurstReplicas == 0 {
		opts.BurstReplicas = DefaultBurstReplicas
	}
	ctrl := &Controller{
		client:    c,
		recorder:  recorder,
		rsInf:     opts.ReplicaSets,
		podInf:    opts.Pods,
		log:       opts.Loop.Logger,
		clock:     opts.Loop.Clock,
		timeout:   opts.ExpectationsTimeout,
		burst:     opts.BurstReplicas,
		exp:       newExpectations(opts.Loop.Clock, opts.ExpectationsTimeout),
		unsettled: make(map[string]map[string]bool),
		distrust:  make(map[string]bool),
	}
	loop, err := reconcile.New(reconcile.Config{
		Name:    loopName,
		Sync:    ctrl.sync,
		WaitFor: []*informer.Informer{opts.ReplicaSets.Informer, opts.Pods.Informer},
		Prepare: ctrl.waitForPodCache,
		Options: opts.Loop,
	})
	if err != nil {
		return nil, err
	}
	ctrl.loop = loop
	ctrl.addHandlers()
	return ctrl, nil
}

// loopName names the controller in logs and metrics.
const loopName = "replicaset"

// Run waits for the informers to sync and for the pod cache to catch up
// with the API, then syncs ReplicaSets until ctx ends (or a write finds
// the lease lost). Every write uses ctx. It returns nil once the workers
// have stopped; an error only for a second Run.
func (c *Controller) Run(ctx context.Context) error { return c.loop.Run(ctx) }

// waitForPodCache returns once the pod cache holds every pod the API has
// now, in the namespaces that have ReplicaSets, at its current version or a
// later one (and none the API no longer has): at the start of a leadership
// the previous leader's last writes are then in the cache, though the
// informers were running before. After ExpectationsTimeout it stops waiting
// and marks every ReplicaSet distrusted, so that their syncs read pods from
// the API until the cache agrees. Its error is ctx's.
func (c *Controller) waitForPodCache(ctx context.Context) error {
	namespaces := map[string]bool{}
	for _, rs := range c.rsInf.List() {
		namespaces[rs.GetMetadata().GetNamespace()] = true
	}
	if len(namespaces) == 0 {
		return nil
	}
	var live client.ListResult
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 2*time.Second) {
		var err error
		live, err = c.client.ListAll(ctx, podKind, client.ListOptions{Namespace: resource.AllNamespaces, PageSize: 500})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.log.Warn("listing pods to check the cache failed, will retry", "error", err)
		if err := sleep(ctx, c.clock, delay); err != nil {
			return err
		}
	}
	inScope := func(ns string) bool { return namespaces[ns] }
	caughtUp := func() bool { return c.cacheAgrees(live.Items, live.ResourceVersion, inScope) }
	deadline := c.clock.Now().Add(c.timeout)
	ticker := c.clock.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	for !caughtUp() {
		if c.clock.Now().After(deadline) {
			c.log.Warn("the pod cache has not caught up with the API; reading pods from the API until it has",
				"resource-version", live.ResourceVersion)
			for _, rs := range c.rsInf.List() {
				c.setDistrusted(informer.Key(rs), true)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C():
		}
	}
	return nil
}

// cacheAgrees reports whether the pod cache, in the namespaces inScope,
// holds every pod of live (a list read at version) at its version or a later
// one, and no pod that live lacks unless the cache's copy is newer than the
// list (created since).
func (c *Controller) cacheAgrees(live []resource.Object, version int64, inScope func(namespace string) bool) bool {
	// A cache that has seen the list's revision has seen everything the
	// list did, and every change since: a listed pod it lacks was deleted.
	if c.podInf.ResourceVersion() >= version {
		return true
	}
	listed := make(map[string]bool, len(live))
	for _, obj := range live {
		if !inScope(obj.GetMetadata().GetNamespace()) {
			continue
		}
		k := informer.Key(obj)
		listed[k] = true
		cached, ok := c.podInf.GetByKey(k)
		if !ok || cached.GetMetadata().GetResourceVersion() < obj.GetMetadata().GetResourceVersion() {
			return false
		}
	}
	for _, pod := range c.podInf.List() {
		meta := pod.GetMetadata()
		if inScope(meta.GetNamespace()) && !listed[informer.Key(pod)] && meta.GetResourceVersion() <= version {
			return false // deleted, and the cache has not seen it yet
		}
	}
	return true
}

func sleep(ctx context.Context, clk clock.Clock, d time.Duration) error {
	t := clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}

// --- informer handlers: map events to ReplicaSet keys ---

func (c *Controller) addHandlers() {
	c.rsInf.AddEventHandler(informer.TypedHandler[*capstanv1.ReplicaSet]{
		OnAdd: func(rs *capstanv1.ReplicaSet) { c.loop.Add(informer.Key(rs)) },
		OnUpdate: func(old, rs *capstanv1.ReplicaSet) {
			if old.GetMetadata().GetUid() != rs.GetMetadata().GetUid() {
				c.forget(informer.Key(old)) // re-created under the same name
			}
			c.loop.Add(informer.Key(rs))
		},
		OnDelete: func(rs *capstanv1.ReplicaSet) {
			c.forget(informer.Key(rs))
			c.loop.Add(informer.Key(rs))
		},
	})
	c.podInf.AddEventHandler(informer.TypedHandler[*capstanv1.Pod]{
		OnAdd:    c.addPod,
		OnUpdate: c.updatePod,
		OnDelete: c.deletePod,
	})
}

// forget drops what the controller remembers about a ReplicaSet key.
func (c *Controller) forget(key string) {
	c.exp.forget(key)
	c.mu.Lock()
	delete(c.unsettled, key)
	delete(c.distrust, key)
	c.mu.Unlock()
}

func (c *Controller) distrusted(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.distrust[key]
}

func (c *Controller) setDistrusted(key string, distrusted bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if distrusted {
		c.distrust[key] = true
	} else {
		delete(c.distrust, key)
	}
}

// ownerKey returns the key of the ReplicaSet controlling pod, if one does.
func ownerKey(pod *capstanv1.Pod) (string, bool) {
	ref := controllerRef(pod.GetMetadata())
	if ref == nil || ref.GetKind() != kindName {
		return "", false
	}
	return pod.GetMetadata().GetNamespace() + "/" + ref.GetName(), true
}

func (c *Controller) addPod(pod *capstanv1.Pod) {
	if pod.GetMetadata().GetDeleteTime() != nil {
		// Seen for the first time while being deleted (after a relist, say).
		c.deletePod(pod)
		return
	}
	if key, ok := ownerKey(pod); ok {
		c.exp.creationObserved(key, pod.GetMetadata().GetName())
		c.settle(key, pod.GetMetadata().GetName())
		c.loop.Add(key)
		return
	}
	c.enqueueMatching(pod)
}

func (c *Controller) updatePod(old, pod *capstanv1.Pod) {
	if old.GetMetadata().GetResourceVersion() == pod.GetMetadata().GetResourceVersion() {
		return // a resync: ReplicaSet resyncs cover it
	}
	labelsChanged := !maps.Equal(old.GetMetadata().GetLabels(), pod.GetMetadata().GetLabels())
	if pod.GetMetadata().GetDeleteTime() != nil && old.GetMetadata().GetDeleteTime() == nil {
		// A deletion has begun: count it as observed now, as Kubernetes
		// does, rather than when the object is finally gone.
		c.deletePod(pod)
		if labelsChanged {
			c.deletePod(old)
		}
		return
	}
	oldKey, hadOwner := ownerKey(old)
	newKey, hasOwner := ownerKey(pod)
	if hadOwner && (!hasOwner || oldKey != newKey) {
		c.loop.Add(oldKey)
	}
	if hasOwner {
		c.loop.Add(newKey)
		if isReady(pod) && !isReady(old) {
			// It becomes available after min_ready_seconds: look again then.
			ns, name := informer.SplitKey(newKey)
			if rs, ok := c.rsInf.Get(ns, name); ok && rs.GetSpec().GetMinReadySeconds() > 0 {
				c.loop.AddAfter(newKey, time.Duration(rs.GetSpec().GetMinReadySeconds())*time.Second+100*time.Millisecond)
			}
		}
		return
	}
	if labelsChanged || hadOwner {
		c.enqueueMatching(pod)
	}
}

func (c *Controller) deletePod(pod *capstanv1.Pod) {
	key, ok := ownerKey(pod)
	if !ok {
		return // an orphan's deletion changes no ReplicaSet's count
	}
	c.exp.deletionObserved(key, pod.GetMetadata().GetName())
	c.loop.Add(key)
}

// enqueueMatching queues every ReplicaSet that could adopt the orphan pod.
func (c *Controller) enqueueMatching(pod *capstanv1.Pod) {
	if pod.GetMetadata().GetDeleteTime() != nil {
		return
	}
	set := labels.Set(pod.GetMetadata().GetLabels())
	for _, rs := range c.rsInf.ByIndex(informer.NamespaceIndex, pod.GetMetadata().GetNamespace()) {
		sel, err := selector.FromLabelSelector(rs.GetSpec().GetSelector())
		if err != nil || sel.Empty() {
			continue // validation refuses both; never adopt with them
		}
		if sel.Matches(set) {
			c.loop.Add(informer.Key(rs))
		}
	}
}

// settle forgets that the create of podName had an unknown outcome.
func (c *Controller) settle(key, podName string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if names, ok := c.unsettled[key]; ok {
		delete(names, podName)
		if len(names) == 0 {
			delete(c.unsettled, key)
		}
	}
}

// unsettle remembers that the create of podName had an unknown outcome.
func (c *Controller) unsettle(key, podName string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.unsettled[key] == nil {
		c.unsettled[key] = make(map[string]bool)
	}
	c.unsettled[key][podName] = true
}

// takeUnsettled returns up to n unsettled names of key, forgetting them
// (a create with them unsettles them again if its outcome is unknown too).
func (c *Controller) takeUnsettled(key string, n int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for name := range c.unsettled[key] {
		if len(out) == n {
			break
		}
		out = append(out, name)
		delete(c.unsettled[key], name)
	}
	if len(c.unsettled[key]) == 0 {
		delete(c.unsettled, key)
	}
	return out
}
