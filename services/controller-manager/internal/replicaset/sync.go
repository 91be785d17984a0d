package replicaset

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/labels"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/selector"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Event reasons, as in Kubernetes.
const (
	ReasonSuccessfulCreate = "SuccessfulCreate"
	ReasonFailedCreate     = "FailedCreate"
	ReasonSuccessfulDelete = "SuccessfulDelete"
	ReasonFailedDelete     = "FailedDelete"
)

// sync brings one ReplicaSet's pods and status in line with its spec.
func (c *Controller) sync(ctx context.Context, key string) error {
	namespace, name := informer.SplitKey(key)
	rs, ok := c.rsInf.Get(namespace, name)
	if !ok {
		c.forget(key)
		return nil
	}
	if rs.GetMetadata().GetDeleteTime() != nil {
		return nil // being deleted: the garbage collector takes its pods
	}
	sel, err := selector.FromLabelSelector(rs.GetSpec().GetSelector())
	if err != nil || sel.Empty() {
		// Validation refuses both, so this is a bug elsewhere; retrying
		// cannot fix it.
		c.log.Error("ReplicaSet has an unusable selector", "replicaset", key, "error", err)
		return nil
	}

	satisfied, expired, wait := c.exp.satisfied(key)
	if !satisfied {
		// The pod events that meet the expectations queue this key again;
		// if they never come (a create that timed out and never happened),
		// this does once the expectations have expired.
		c.loop.AddAfter(key, wait+10*time.Millisecond)
	}
	if expired {
		// The cache never showed some of this controller's writes: trust the
		// API, not the cache, until the cache has caught up.
		c.log.Info("expectations expired, reading the pods from the API until the cache catches up", "replicaset", key)
		c.setDistrusted(key, true)
	}
	var pods []*capstanv1.Pod
	if c.distrusted(key) {
		live, version, err := c.livePods(ctx, namespace)
		if err != nil {
			return err
		}
		if c.cacheAgrees(live, version, func(ns string) bool { return ns == namespace }) {
			c.setDistrusted(key, false)
		}
		for _, obj := range live {
			pods = append(pods, obj.(*capstanv1.Pod))
		}
	} else {
		pods = c.podInf.ByIndex(informer.NamespaceIndex, namespace)
	}
	var active []*capstanv1.Pod
	for _, pod := range pods {
		if isActive(pod) {
			active = append(active, pod)
		}
	}
	owned, err := c.claimPods(ctx, rs, sel, active)
	if err != nil {
		return err
	}

	var manageErr error
	if satisfied {
		manageErr = c.manageReplicas(ctx, key, rs, owned)
	}
	now := c.clock.Now()
	status, nextAvailable := calculateStatus(rs, owned, manageErr, now)
	if !proto.Equal(status, rs.GetStatus()) {
		next := resource.Clone(rs)
		next.Status = status
		if _, err := c.client.UpdateStatus(ctx, next); err != nil {
			return errors.Join(manageErr, fmt.Errorf("replicaset: update status of %s: %w", key, err))
		}
	}
	if manageErr == nil && !nextAvailable.IsZero() {
		c.loop.AddAfter(key, nextAvailable.Sub(now)+100*time.Millisecond)
	}
	return manageErr
}

// livePods reads the pods of namespace from the API, and the version it
// read them at.
func (c *Controller) livePods(ctx context.Context, namespace string) ([]resource.Object, int64, error) {
	res, err := c.client.ListAll(ctx, podKind, client.ListOptions{Namespace: namespace, PageSize: 500})
	if err != nil {
		return nil, 0, fmt.Errorf("replicaset: list pods in %s: %w", namespace, err)
	}
	return res.Items, res.ResourceVersion, nil
}

// claimPods returns the active pods rs owns after adopting the matching
// orphans and releasing the owned pods that no longer match, as Kubernetes'
// PodControllerRefManager does.
func (c *Controller) claimPods(ctx context.Context, rs *capstanv1.ReplicaSet, sel labels.Selector, pods []*capstanv1.Pod) ([]*capstanv1.Pod, error) {
	uid := rs.GetMetadata().GetUid()
	var owned []*capstanv1.Pod
	var errs []error
	adoptionChecked, mayAdopt := false, false
	for _, pod := range pods {
		matches := sel.Matches(labels.Set(pod.GetMetadata().GetLabels()))
		if ref := controllerRef(pod.GetMetadata()); ref != nil {
			if ref.GetUid() != uid {
				continue // another controller's
			}
			if matches {
				owned = append(owned, pod)
				continue
			}
			if err := c.release(ctx, rs, pod); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if !matches || pod.GetMetadata().GetDeleteTime() != nil {
			continue // never adopt a pod on its way out
		}
		if !adoptionChecked {
			var err error
			if mayAdopt, err = c.mayAdopt(ctx, rs); err != nil {
				return nil, err
			}
			adoptionChecked = true
		}
		if !mayAdopt {
			continue
		}
		adopted, err := c.adopt(ctx, rs, pod)
		switch {
		case err == nil:
			owned = append(owned, adopted)
		case apierrors.IsNotFound(err):
		default:
			errs = append(errs, err)
		}
	}
	return owned, errors.Join(errs...)
}

// mayAdopt re-reads rs from the API: a ReplicaSet the cache still shows but
// that is gone, re-created or being deleted must not take pods.
func (c *Controller) mayAdopt(ctx context.Context, rs *capstanv1.ReplicaSet) (bool, error) {
	meta := rs.GetMetadata()
	obj, err := c.client.Get(ctx, replicaSetKind, meta.GetNamespace(), meta.GetName())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("replicaset: re-read %s/%s before adopting: %w", meta.GetNamespace(), meta.GetName(), err)
	}
	current := obj.GetMetadata()
	return current.GetUid() == meta.GetUid() && current.GetDeleteTime() == nil, nil
}

func ownerReference(rs *capstanv1.ReplicaSet) *capstanv1.OwnerReference {
	return &capstanv1.OwnerReference{
		Kind:               kindName,
		Name:               rs.GetMetadata().GetName(),
		Uid:                rs.GetMetadata().GetUid(),
		Controller:         true,
		BlockOwnerDeletion: true,
	}
}

// adopt makes rs the controller of the orphan pod, at the pod's
// resource_version (ABORTED if it changed since the cache saw it).
func (c *Controller) adopt(ctx context.Context, rs *capstanv1.ReplicaSet, pod *capstanv1.Pod) (*capstanv1.Pod, error) {
	next := resource.Clone(pod)
	next.Metadata.OwnerReferences = append(next.Metadata.OwnerReferences, ownerReference(rs))
	obj, err := c.client.Update(ctx, next)
	if err != nil {
		return nil, fmt.Errorf("replicaset: adopt pod %s: %w", pod.GetMetadata().GetName(), err)
	}
	c.log.Info("adopted pod", "replicaset", informer.Key(rs), "pod", pod.GetMetadata().GetName())
	return obj.(*capstanv1.Pod), nil
}

// release removes rs's owner reference from pod, which no longer matches.
func (c *Controller) release(ctx context.Context, rs *capstanv1.ReplicaSet, pod *capstanv1.Pod) error {
	next := resource.Clone(pod)
	var refs []*capstanv1.OwnerReference
	for _, ref := range next.GetMetadata().GetOwnerReferences() {
		if ref.GetUid() != rs.GetMetadata().GetUid() {
			refs = append(refs, ref)
		}
	}
	next.Metadata.OwnerReferences = refs
	if _, err := c.client.Update(ctx, next); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("replicaset: release pod %s: %w", pod.GetMetadata().GetName(), err)
	}
	c.log.Info("released pod", "replicaset", informer.Key(rs), "pod", pod.GetMetadata().GetName())
	return nil
}

// manageError is a failure to create or delete pods; reason is the
// ReplicaFailure condition's.
type manageError struct {
	reason string
	err    error
}

func (e *manageError) Error() string { return e.err.Error() }
func (e *manageError) Unwrap() error { return e.err }

func desiredReplicas(rs *capstanv1.ReplicaSet) int {
	if rs.GetSpec().Replicas == nil {
		return 1
	}
	return int(rs.GetSpec().GetReplicas())
}

// manageReplicas creates or deletes pods so that rs owns spec.replicas.
func (c *Controller) manageReplicas(ctx context.Context, key string, rs *capstanv1.ReplicaSet, owned []*capstanv1.Pod) error {
	diff := len(owned) - desiredReplicas(rs)
	switch {
	case diff < 0:
		n := min(-diff, c.burst)
		names := c.podNames(key, rs, n)
		// Expect before creating: the informer may show a pod before its
		// create call returns.
		c.exp.expectCreations(key, names)
		started, err := slowStartBatch(n, func(i int) error { return c.createPod(ctx, key, rs, names[i]) })
		for _, name := range names[started:] {
			c.exp.creationObserved(key, name) // never tried: it will not appear
		}
		if err != nil {
			return &manageError{reason: ReasonFailedCreate, err: err}
		}
	case diff > 0:
		victims := podsToDelete(owned, min(diff, c.burst))
		names := make([]string, len(victims))
		for i, pod := range victims {
			names[i] = pod.GetMetadata().GetName()
		}
		c.exp.expectDeletions(key, names)
		started, err := slowStartBatch(len(victims), func(i int) error { return c.deletePodOf(ctx, key, rs, victims[i]) })
		for _, name := range names[started:] {
			c.exp.deletionObserved(key, name)
		}
		if err != nil {
			return &manageError{reason: ReasonFailedDelete, err: err}
		}
	}
	return nil
}

// podNames returns n names for new pods of rs: first those whose earlier
// create had an unknown outcome, then new random ones.
func (c *Controller) podNames(key string, rs *capstanv1.ReplicaSet, n int) []string {
	names := c.takeUnsettled(key, n)
	for len(names) < n {
		name := newPodName(rs.GetMetadata().GetName())
		if _, taken := c.podInf.Get(rs.GetMetadata().GetNamespace(), name); !taken {
			names = append(names, name)
		}
	}
	return names
}

// newPodName returns <replicaset>-<5 random characters>, the ReplicaSet's
// name cut so that the whole is a valid name.
func newPodName(rsName string) string {
	const suffixLength = 5
	base := rsName
	if limit := 253 - 1 - suffixLength; len(base) > limit {
		base = strings.TrimRight(base[:limit], ".-")
	}
	return base + "-" + randomSuffix(suffixLength)
}

// suffixAlphabet has no vowels (no words) and no look-alikes (0/o, 1/l),
// as Kubernetes' generated names.
const suffixAlphabet = "bcdfghjklmnpqrstvwxz2456789"

func randomSuffix(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = suffixAlphabet[rand.IntN(len(suffixAlphabet))]
	}
	return string(b)
}

// newPod is the pod rs creates under name.
func newPod(rs *capstanv1.ReplicaSet, name string) *capstanv1.Pod {
	template := rs.GetSpec().GetTemplate()
	return &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{
			Namespace:       rs.GetMetadata().GetNamespace(),
			Name:            name,
			Labels:          maps.Clone(template.GetMetadata().GetLabels()),
			Annotations:     maps.Clone(template.GetMetadata().GetAnnotations()),
			OwnerReferences: []*capstanv1.OwnerReference{ownerReference(rs)},
		},
		Spec: proto.Clone(template.GetSpec()).(*capstanv1.PodSpec),
	}
}

// outcomeUnknown reports whether a failed write may have been applied all
// the same (the call ran out of time or its connection broke).
func outcomeUnknown(err error) bool {
	switch apierrors.Code(err) {
	case codes.DeadlineExceeded, codes.Canceled, codes.Unavailable, codes.Unknown:
		return true
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

func (c *Controller) createPod(ctx context.Context, key string, rs *capstanv1.ReplicaSet, name string) error {
	_, err := c.client.Create(ctx, newPod(rs, name))
	if err == nil {
		c.recorder.Eventf(ctx, rs, wellknown.EventNormal, ReasonSuccessfulCreate, "Created pod: %s", name)
		return nil
	}
	if apierrors.IsAlreadyExists(err) {
		// An earlier create with this name, whose answer was lost, may have
		// made it.
		existing, getErr := c.client.Get(ctx, podKind, rs.GetMetadata().GetNamespace(), name)
		if getErr == nil {
			if ref := controllerRef(existing.GetMetadata()); ref != nil && ref.GetUid() == rs.GetMetadata().GetUid() {
				c.settle(key, name)
				if _, cached := c.podInf.Get(rs.GetMetadata().GetNamespace(), name); cached {
					c.exp.creationObserved(key, name)
				}
				return nil
			}
		}
	}
	if outcomeUnknown(err) && ctx.Err() == nil {
		// Keep expecting it: if it was made, the cache will show it; the
		// next create reuses the name either way.
		c.unsettle(key, name)
	} else {
		c.exp.creationObserved(key, name)
	}
	if ctx.Err() == nil {
		c.recorder.Eventf(ctx, rs, wellknown.EventWarning, ReasonFailedCreate, "Error creating: %v", err)
	}
	return fmt.Errorf("replicaset: create pod %s: %w", name, err)
}

// deletePodOf deletes pod, one of rs's, at the version it was chosen from:
// a pod that changed since (became ready, was released, or the name holds
// another pod now) may not be the one to delete any more, and a delete that
// arrives late must not take a newer pod with it.
func (c *Controller) deletePodOf(ctx context.Context, key string, rs *capstanv1.ReplicaSet, pod *capstanv1.Pod) error {
	meta := pod.GetMetadata()
	_, err := c.client.Delete(ctx, podKind, meta.GetNamespace(), meta.GetName(),
		&capstanv1.Preconditions{Uid: meta.GetUid(), ResourceVersion: meta.GetResourceVersion()})
	switch {
	case err == nil:
		c.recorder.Eventf(ctx, rs, wellknown.EventNormal, ReasonSuccessfulDelete, "Deleted pod: %s", meta.GetName())
		return nil
	case apierrors.IsNotFound(err):
		// Gone already.
		c.exp.deletionObserved(key, meta.GetName())
		return nil
	case apierrors.IsConflict(err):
		// Not deleted, and no deletion to wait for. The change that beat
		// this delete reaches the pod cache as an event that queues this
		// ReplicaSet again (updatePod, or deletePod and addPod for a new
		// pod of the name), and that sync chooses afresh. Not a failure:
		// no FailedDelete, no ReplicaFailure.
		c.exp.deletionObserved(key, meta.GetName())
		c.log.Debug("pod changed since it was chosen for deletion: not deleted", "replicaset", key,
			"pod", meta.GetName(), "resource-version", meta.GetResourceVersion(), "error", err)
		return nil
	}
	if !outcomeUnknown(err) {
		c.exp.deletionObserved(key, meta.GetName())
	}
	if ctx.Err() == nil {
		c.recorder.Eventf(ctx, rs, wellknown.EventWarning, ReasonFailedDelete, "Error deleting: %v", err)
	}
	return fmt.Errorf("replicaset: delete pod %s: %w", meta.GetName(), err)
}

// slowStartBatch calls fn(0..count-1) in batches of 1, 2, 4, ... calls at
// once, stopping after the first batch with an error, so that a systematic
// failure (a quota, a bad template) costs a few calls, not count. It
// returns how many calls were made and their errors.
func slowStartBatch(count int, fn func(i int) error) (started int, err error) {
	for batch := min(1, count); started < count; batch = min(2*batch, count-started) {
		var wg sync.WaitGroup
		errs := make([]error, batch)
		for j := range batch {
			wg.Go(func() { errs[j] = fn(started + j) })
		}
		wg.Wait()
		started += batch
		if err := errors.Join(errs...); err != nil {
			return started, err
		}
	}
	return started, nil
}

// calculateStatus computes rs's status from the pods it owns. It also
// returns when the next ready pod becomes available (zero if none waits).
func calculateStatus(rs *capstanv1.ReplicaSet, owned []*capstanv1.Pod, manageErr error, now time.Time) (*capstanv1.ReplicaSetStatus, time.Time) {
	status := proto.Clone(rs.GetStatus()).(*capstanv1.ReplicaSetStatus)
	if status == nil {
		status = &capstanv1.ReplicaSetStatus{}
	}
	templateLabels := labels.Set(rs.GetSpec().GetTemplate().GetMetadata().GetLabels())
	minReady := time.Duration(rs.GetSpec().GetMinReadySeconds()) * time.Second
	var fullyLabeled, ready, available int32
	var nextAvailable time.Time
	for _, pod := range owned {
		if labels.SelectorFromSet(templateLabels).Matches(labels.Set(pod.GetMetadata().GetLabels())) {
			fullyLabeled++
		}
		at, isReady := availableAt(pod, minReady)
		if !isReady {
			continue
		}
		ready++
		if !at.After(now) {
			available++
		} else if nextAvailable.IsZero() || at.Before(nextAvailable) {
			nextAvailable = at
		}
	}
	status.Replicas = int32(len(owned))
	status.FullyLabeledReplicas = fullyLabeled
	status.ReadyReplicas = ready
	status.AvailableReplicas = available
	status.ObservedGeneration = rs.GetMetadata().GetGeneration()

	var failure *capstanv1.Condition
	for _, cond := range status.GetConditions() {
		if cond.GetType() == wellknown.ReplicaSetReplicaFailure {
			failure = cond
		}
	}
	var me *manageError
	switch {
	case errors.As(manageErr, &me) && failure == nil:
		status.Conditions = append(status.Conditions, &capstanv1.Condition{
			Type:               wellknown.ReplicaSetReplicaFailure,
			Status:             wellknown.ConditionTrue,
			Reason:             me.reason,
			Message:            me.Error(),
			LastTransitionTime: timestamppb.New(now),
			ObservedGeneration: rs.GetMetadata().GetGeneration(),
		})
	case manageErr == nil && failure != nil:
		var kept []*capstanv1.Condition
		for _, cond := range status.GetConditions() {
			if cond.GetType() != wellknown.ReplicaSetReplicaFailure {
				kept = append(kept, cond)
			}
		}
		status.Conditions = kept
	}
	return status, nextAvailable
}
