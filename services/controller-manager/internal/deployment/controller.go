// Package deployment is the Deployment controller: it rolls a Deployment's
// pod template out through ReplicaSets, one per template, the way Kubernetes'
// deployment controller does (sync.go, rolling.go, recreate.go, progress.go).
//
// For every Deployment it claims the ReplicaSets its selector matches (adopting
// orphans, releasing those that no longer match), finds or creates the
// ReplicaSet of the current template (named <deployment>-<pod-template-hash>),
// and scales ReplicaSets so that:
//
//   - RollingUpdate: the sum of every ReplicaSet's spec.replicas never exceeds
//     replicas + maxSurge, and the sum of their status.available_replicas is
//     never driven below replicas - maxUnavailable by a scale-down;
//   - Recreate: every old ReplicaSet is scaled to 0 and its pods are gone
//     before the new one is scaled up.
//
// Old ReplicaSets scaled to 0 beyond revision_history_limit are deleted.
// The Deployment's status (counts, Available and Progressing conditions) is
// written through UpdateDeploymentStatus.
//
// Every decision is made from the informer caches, and every write is
// conditional on the resource_version the decision was based on, so a write
// computed from a stale object is refused (ABORTED) and retried. After a
// write, the Deployment is not synced again until the caches show that write
// (see expectations), so a slow watch never makes two rounds scale from the
// same stale picture.
//
// # Concurrency
//
// Informer handlers only enqueue Deployment keys. Run's workers take keys from
// a rate-limited work queue, which hands a key to one worker at a time, so one
// Deployment is never synced twice at once; different Deployments are synced
// in parallel. Objects from the caches are cloned before they are changed.
// All API calls use Run's context (a leader's fenced context).
package deployment

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/events"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
)

// Retry back-off of a Deployment whose sync failed.
const (
	retryBaseDelay = 5 * time.Millisecond
	retryMaxDelay  = 60 * time.Second
)

// Options are what the Deployment controller needs besides the client and
// the event recorder.
type Options struct {
	// Deployments, ReplicaSets and Pods are the shared informers. They must
	// cache every namespace the controller should manage (normally
	// resource.AllNamespaces). The controller adds handlers to them in New;
	// whoever owns them runs them.
	Deployments *informer.Typed[*capstanv1.Deployment]
	ReplicaSets *informer.Typed[*capstanv1.ReplicaSet]
	Pods        *informer.Typed[*capstanv1.Pod]
	// Logger; default discard.
	Logger *slog.Logger
	// Clock stamps conditions and measures progress deadlines; default real.
	Clock clock.Clock
}

// Controller is the Deployment controller. See the package doc.
type Controller struct {
	client      *client.Client
	recorder    *events.Recorder
	deployments *informer.Typed[*capstanv1.Deployment]
	replicaSets *informer.Typed[*capstanv1.ReplicaSet]
	pods        *informer.Typed[*capstanv1.Pod]
	log         *slog.Logger
	clock       clock.Clock
	expect      *expectations

	// mu guards queue: the queue of the Run in progress, nil between Runs,
	// so handlers registered once feed whichever Run is going.
	mu    sync.RWMutex
	queue workqueue.TypedRateLimitingInterface[string]
}

// New returns a Deployment controller and registers its handlers on the
// informers. recorder may be nil (no events). New is meant to be called once
// per set of informers; Run may be called again after it returned (a new
// leadership), and starts from a full resync.
func New(c *client.Client, recorder *events.Recorder, opts Options) (*Controller, error) {
	switch {
	case c == nil:
		return nil, errors.New("deployment: client is nil")
	case opts.Deployments == nil:
		return nil, errors.New("deployment: Options.Deployments is nil")
	case opts.ReplicaSets == nil:
		return nil, errors.New("deployment: Options.ReplicaSets is nil")
	case opts.Pods == nil:
		return nil, errors.New("deployment: Options.Pods is nil")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	ctrl := &Controller{
		client:      c,
		recorder:    recorder,
		deployments: opts.Deployments,
		replicaSets: opts.ReplicaSets,
		pods:        opts.Pods,
		log:         opts.Logger.With("controller", "deployment"),
		clock:       opts.Clock,
	}
	ctrl.expect = newExpectations(ctrl.deployments, ctrl.replicaSets, opts.Clock)
	ctrl.deployments.AddEventHandler(informer.TypedHandler[*capstanv1.Deployment]{
		OnAdd:    func(d *capstanv1.Deployment) { ctrl.enqueue(d) },
		OnUpdate: func(_, d *capstanv1.Deployment) { ctrl.enqueue(d) },
		OnDelete: func(d *capstanv1.Deployment) { ctrl.enqueue(d) },
	})
	ctrl.replicaSets.AddEventHandler(informer.TypedHandler[*capstanv1.ReplicaSet]{
		OnAdd:    ctrl.replicaSetAdded,
		OnUpdate: ctrl.replicaSetUpdated,
		OnDelete: ctrl.replicaSetDeleted,
	})
	ctrl.pods.AddEventHandler(informer.TypedHandler[*capstanv1.Pod]{
		OnUpdate: ctrl.podUpdated,
		OnDelete: ctrl.podDeleted,
	})
	return ctrl, nil
}

// Run syncs Deployments with workers goroutines until ctx ends, then waits
// for the workers and returns nil. Every API call is made with ctx. It
// returns ctx's error if ctx ends before the caches have synced.
func (c *Controller) Run(ctx context.Context, workers int) error {
	if workers < 1 {
		return fmt.Errorf("deployment: workers is %d: it must be at least 1", workers)
	}
	queue := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](retryBaseDelay, retryMaxDelay),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "deployment"})
	c.mu.Lock()
	if c.queue != nil {
		c.mu.Unlock()
		queue.ShutDown()
		return errors.New("deployment: Run is already running")
	}
	c.queue = queue
	c.mu.Unlock()
	defer func() {
		queue.ShutDown()
		c.mu.Lock()
		c.queue = nil
		c.mu.Unlock()
	}()

	c.log.Info("starting", "workers", workers)
	if !informer.WaitForCacheSync(ctx, c.deployments.Informer, c.replicaSets.Informer, c.pods.Informer) {
		return fmt.Errorf("deployment: caches did not sync: %w", context.Cause(ctx))
	}
	// Handlers may have fired before this Run had a queue.
	for _, d := range c.deployments.List() {
		queue.Add(informer.Key(d))
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for c.processNext(ctx, queue) {
			}
		})
	}
	<-ctx.Done()
	queue.ShutDown()
	wg.Wait()
	c.log.Info("stopped")
	return nil
}

func (c *Controller) currentQueue() workqueue.TypedRateLimitingInterface[string] {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.queue
}

func (c *Controller) enqueue(d *capstanv1.Deployment) { c.enqueueKey(informer.Key(d)) }

func (c *Controller) enqueueKey(key string) {
	if q := c.currentQueue(); q != nil {
		q.Add(key)
	}
}

func (c *Controller) enqueueAfter(key string, after time.Duration) {
	if q := c.currentQueue(); q != nil {
		q.AddAfter(key, after)
	}
}

// processNext syncs one key; it reports false once the queue is shut down.
func (c *Controller) processNext(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string]) bool {
	key, quit := queue.Get()
	if quit {
		return false
	}
	defer queue.Done(key)
	err := c.sync(ctx, key)
	switch {
	case err == nil:
		queue.Forget(key)
	case ctx.Err() != nil:
		// Leadership or the process is ending; the next leader resyncs.
	case apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || apierrors.IsNotFound(err):
		// A cache behind the API: expected now and then, fixed by a retry.
		c.log.Debug("sync raced a change; retrying", "deployment", key, "error", err)
		queue.AddRateLimited(key)
	default:
		c.log.Warn("sync failed; retrying", "deployment", key, "retries", queue.NumRequeues(key), "error", err)
		queue.AddRateLimited(key)
	}
	return true
}

// controllerOf returns the owner reference of meta that is its controller.
func controllerOf(meta *capstanv1.ObjectMeta) *capstanv1.OwnerReference {
	for _, ref := range meta.GetOwnerReferences() {
		if ref.GetController() {
			return ref
		}
	}
	return nil
}

// deploymentFor returns the cached Deployment a controller reference points
// at, if it is one and the uid matches.
func (c *Controller) deploymentFor(namespace string, ref *capstanv1.OwnerReference) (*capstanv1.Deployment, bool) {
	if ref == nil || ref.GetKind() != deploymentKind.Name {
		return nil, false
	}
	d, ok := c.deployments.Get(namespace, ref.GetName())
	if !ok || d.GetMetadata().GetUid() != ref.GetUid() {
		return nil, false
	}
	return d, true
}

// deploymentsMatching returns the Deployments whose selector matches an
// orphan ReplicaSet's labels: candidates to adopt it.
func (c *Controller) deploymentsMatching(rs *capstanv1.ReplicaSet) []*capstanv1.Deployment {
	var out []*capstanv1.Deployment
	for _, d := range c.deployments.ByIndex(informer.NamespaceIndex, rs.GetMetadata().GetNamespace()) {
		sel, err := labelSelector(d)
		if err != nil {
			continue
		}
		if sel.Matches(labelSet(rs.GetMetadata().GetLabels())) {
			out = append(out, d)
		}
	}
	return out
}

func (c *Controller) replicaSetAdded(rs *capstanv1.ReplicaSet) {
	ns := rs.GetMetadata().GetNamespace()
	if ref := controllerOf(rs.GetMetadata()); ref != nil {
		if d, ok := c.deploymentFor(ns, ref); ok {
			c.enqueue(d)
		}
		return
	}
	for _, d := range c.deploymentsMatching(rs) {
		c.enqueue(d)
	}
}

func (c *Controller) replicaSetUpdated(old, cur *capstanv1.ReplicaSet) {
	if old.GetMetadata().GetResourceVersion() == cur.GetMetadata().GetResourceVersion() {
		return // a resync: nothing changed
	}
	ns := cur.GetMetadata().GetNamespace()
	oldRef, curRef := controllerOf(old.GetMetadata()), controllerOf(cur.GetMetadata())
	if oldRef != nil && (curRef == nil || oldRef.GetUid() != curRef.GetUid()) {
		// The former owner must learn it lost the ReplicaSet.
		if d, ok := c.deploymentFor(ns, oldRef); ok {
			c.enqueue(d)
		}
	}
	if curRef != nil {
		if d, ok := c.deploymentFor(ns, curRef); ok {
			c.enqueue(d)
		}
		return
	}
	for _, d := range c.deploymentsMatching(cur) {
		c.enqueue(d)
	}
}

func (c *Controller) replicaSetDeleted(rs *capstanv1.ReplicaSet) {
	if d, ok := c.deploymentFor(rs.GetMetadata().GetNamespace(), controllerOf(rs.GetMetadata())); ok {
		c.enqueue(d)
	}
}

// recreateDeploymentOfPod returns the Recreate Deployment whose ReplicaSet
// controls pod: only Recreate rollouts wait for pods to be gone.
func (c *Controller) recreateDeploymentOfPod(pod *capstanv1.Pod) (*capstanv1.Deployment, bool) {
	ref := controllerOf(pod.GetMetadata())
	if ref == nil || ref.GetKind() != replicaSetKind.Name {
		return nil, false
	}
	ns := pod.GetMetadata().GetNamespace()
	rs, ok := c.replicaSets.Get(ns, ref.GetName())
	if !ok || rs.GetMetadata().GetUid() != ref.GetUid() {
		return nil, false
	}
	d, ok := c.deploymentFor(ns, controllerOf(rs.GetMetadata()))
	if !ok || d.GetSpec().GetStrategy().GetType() != wellknown.StrategyRecreate {
		return nil, false
	}
	return d, true
}

func (c *Controller) podUpdated(old, cur *capstanv1.Pod) {
	if terminal(old) || !terminal(cur) {
		return
	}
	if d, ok := c.recreateDeploymentOfPod(cur); ok {
		c.enqueue(d)
	}
}

func (c *Controller) podDeleted(pod *capstanv1.Pod) {
	if d, ok := c.recreateDeploymentOfPod(pod); ok {
		c.enqueue(d)
	}
}

func terminal(pod *capstanv1.Pod) bool {
	phase := pod.GetStatus().GetPhase()
	return phase == wellknown.PodSucceeded || phase == wellknown.PodFailed
}

var (
	deploymentKind = resource.MustLookup("Deployment")
	replicaSetKind = resource.MustLookup("ReplicaSet")
)
