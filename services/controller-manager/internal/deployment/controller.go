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
// Informer handlers only enqueue Deployment keys. The controller is a
// reconcile.Loop: its queue hands a key to one worker at a time, so one
// Deployment is never synced twice at once; different Deployments are synced
// in parallel. Objects from the caches are cloned before they are changed.
// All API calls use Run's context (a leader's fenced context). A Controller
// runs once.
package deployment

import (
	"context"
	"errors"
	"log/slog"

	"k8s.io/utils/clock"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/events"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/reconcile"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
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
	// Loop: workers, logger, metrics, and the clock that stamps conditions,
	// measures progress deadlines and paces back-off.
	Loop reconcile.Options
}

// Controller is the Deployment controller. See the package doc.
type Controller struct {
	client      *client.Client
	recorder    *events.Recorder
	deployments *informer.Typed[*capstanv1.Deployment]
	replicaSets *informer.Typed[*capstanv1.ReplicaSet]
	pods        *informer.Typed[*capstanv1.Pod]
	log         *slog.Logger
	clock       clock.WithTicker
	expect      *expectations
	loop        *reconcile.Loop
}

// New returns a Deployment controller and registers its handlers on the
// informers. recorder may be nil (no events).
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
	opts.Loop = opts.Loop.Complete()
	opts.Loop.Logger = opts.Loop.Logger.With("controller", loopName)
	ctrl := &Controller{
		client:      c,
		recorder:    recorder,
		deployments: opts.Deployments,
		replicaSets: opts.ReplicaSets,
		pods:        opts.Pods,
		log:         opts.Loop.Logger,
		clock:       opts.Loop.Clock,
	}
	ctrl.expect = newExpectations(ctrl.deployments, ctrl.replicaSets, opts.Loop.Clock)
	loop, err := reconcile.New(reconcile.Config{
		Name:    loopName,
		Sync:    ctrl.sync,
		WaitFor: []*informer.Informer{opts.Deployments.Informer, opts.ReplicaSets.Informer, opts.Pods.Informer},
		Options: opts.Loop,
	})
	if err != nil {
		return nil, err
	}
	ctrl.loop = loop
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

// loopName names the controller in logs and metrics.
const loopName = "deployment"

// Run waits for the informers to sync, then syncs Deployments until ctx
// ends (or a write finds the lease lost). Every API call is made with ctx.
// It returns nil once the workers have stopped; an error only for a second
// Run.
func (c *Controller) Run(ctx context.Context) error { return c.loop.Run(ctx) }

func (c *Controller) enqueue(d *capstanv1.Deployment) { c.loop.Add(informer.Key(d)) }

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
