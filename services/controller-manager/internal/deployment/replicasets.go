package deployment

import (
	"cmp"
	"context"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/rand"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Annotations the controller keeps on its ReplicaSets (besides
// wellknown.AnnotationRevision), as Kubernetes does: the Deployment's
// replicas and replicas + maxSurge when the ReplicaSet was last scaled.
// Proportional scaling reads them to tell a user's scaling from a rollout.
const (
	annotationDesiredReplicas = "deployment.capstan.dev/desired-replicas"
	annotationMaxReplicas     = "deployment.capstan.dev/max-replicas"
)

// reasonScalingReplicaSet is the event reason of every scale.
const reasonScalingReplicaSet = "ScalingReplicaSet"

// templateHash is the pod-template-hash of a template: fnv32a over its
// deterministic protobuf encoding without the pod-template-hash label,
// encoded with Kubernetes' alphabet (no vowels, so no words).
func templateHash(template *capstanv1.PodTemplateSpec) string {
	t := proto.Clone(template).(*capstanv1.PodTemplateSpec)
	if t.GetMetadata() != nil {
		delete(t.Metadata.Labels, wellknown.LabelPodTemplateHash)
	}
	// Deterministic marshalling orders map entries, so equal templates
	// always give equal bytes (with one protobuf library version).
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(t)
	if err != nil {
		// Only an invalid message fails to marshal, and the API server
		// stored this one.
		panic(fmt.Sprintf("deployment: marshal pod template: %v", err))
	}
	h := fnv.New32a()
	h.Write(data)
	return rand.SafeEncodeString(strconv.FormatUint(uint64(h.Sum32()), 10))
}

// equalIgnoringHash reports whether two templates are the same apart from
// the pod-template-hash label.
func equalIgnoringHash(a, b *capstanv1.PodTemplateSpec) bool {
	a, b = proto.Clone(a).(*capstanv1.PodTemplateSpec), proto.Clone(b).(*capstanv1.PodTemplateSpec)
	for _, t := range []*capstanv1.PodTemplateSpec{a, b} {
		if t.GetMetadata() != nil {
			delete(t.Metadata.Labels, wellknown.LabelPodTemplateHash)
		}
	}
	return proto.Equal(a, b)
}

// controllerRefTo is the owner reference that makes d the controller.
func controllerRefTo(d *capstanv1.Deployment) *capstanv1.OwnerReference {
	return &capstanv1.OwnerReference{
		Kind:               deploymentKind.Name,
		Name:               d.GetMetadata().GetName(),
		Uid:                d.GetMetadata().GetUid(),
		Controller:         true,
		BlockOwnerDeletion: true,
	}
}

// claimReplicaSets returns the ReplicaSets d controls, after adopting the
// orphans its selector matches and releasing the ones it controls that the
// selector no longer matches (Kubernetes' ControllerRefManager).
func (c *Controller) claimReplicaSets(ctx context.Context, key string, d *capstanv1.Deployment, sel labels.Selector) ([]*capstanv1.ReplicaSet, error) {
	meta := d.GetMetadata()
	deleting := meta.GetDeleteTime() != nil
	var owned []*capstanv1.ReplicaSet
	adoptChecked := false
	for _, rs := range c.replicaSets.ByIndex(informer.NamespaceIndex, meta.GetNamespace()) {
		rsMeta := rs.GetMetadata()
		matches := sel.Matches(labels.Set(rsMeta.GetLabels()))
		if ref := controllerOf(rsMeta); ref != nil {
			if ref.GetUid() != meta.GetUid() {
				continue // someone else's
			}
			if matches || deleting {
				owned = append(owned, rs)
				continue
			}
			if err := c.release(ctx, key, d, rs); err != nil {
				return nil, err
			}
			continue
		}
		if !matches || deleting || rsMeta.GetDeleteTime() != nil {
			continue
		}
		if !adoptChecked {
			if err := c.canAdopt(ctx, d); err != nil {
				return nil, err
			}
			adoptChecked = true
		}
		adopted, err := c.adopt(ctx, key, d, rs)
		if err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return nil, err
		}
		owned = append(owned, adopted)
	}
	return owned, nil
}

// canAdopt re-reads d from the API (not the cache): a Deployment deleted and
// re-created under the same name since the cache saw it must not adopt
// with the old one's uid.
func (c *Controller) canAdopt(ctx context.Context, d *capstanv1.Deployment) error {
	meta := d.GetMetadata()
	resp, err := c.client.Deployments().GetDeployment(ctx, &capstanv1.GetDeploymentRequest{Namespace: meta.GetNamespace(), Name: meta.GetName()})
	if err != nil {
		return fmt.Errorf("re-read deployment before adopting: %w", err)
	}
	fresh := resp.GetDeployment().GetMetadata()
	if fresh.GetUid() != meta.GetUid() {
		return fmt.Errorf("deployment %s/%s was re-created (uid %s, cached %s): not adopting", meta.GetNamespace(), meta.GetName(), fresh.GetUid(), meta.GetUid())
	}
	if fresh.GetDeleteTime() != nil {
		return fmt.Errorf("deployment %s/%s is being deleted: not adopting", meta.GetNamespace(), meta.GetName())
	}
	return nil
}

func (c *Controller) adopt(ctx context.Context, key string, d *capstanv1.Deployment, rs *capstanv1.ReplicaSet) (*capstanv1.ReplicaSet, error) {
	next := resource.Clone(rs)
	next.Metadata.OwnerReferences = append(next.Metadata.OwnerReferences, controllerRefTo(d))
	stored, err := c.updateReplicaSet(ctx, key, next)
	if err != nil {
		return nil, fmt.Errorf("adopt replica set %s: %w", rs.GetMetadata().GetName(), err)
	}
	c.log.Info("adopted replica set", "deployment", key, "replica-set", rs.GetMetadata().GetName())
	return stored, nil
}

func (c *Controller) release(ctx context.Context, key string, d *capstanv1.Deployment, rs *capstanv1.ReplicaSet) error {
	next := resource.Clone(rs)
	next.Metadata.OwnerReferences = slices.DeleteFunc(next.Metadata.OwnerReferences, func(ref *capstanv1.OwnerReference) bool {
		return ref.GetUid() == d.GetMetadata().GetUid()
	})
	if _, err := c.updateReplicaSet(ctx, key, next); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("release replica set %s: %w", rs.GetMetadata().GetName(), err)
	}
	c.log.Info("released replica set: the selector no longer matches it", "deployment", key, "replica-set", rs.GetMetadata().GetName())
	return nil
}

// updateReplicaSet writes rs's metadata and spec at its resource_version.
func (c *Controller) updateReplicaSet(ctx context.Context, key string, rs *capstanv1.ReplicaSet) (*capstanv1.ReplicaSet, error) {
	resp, err := c.client.ReplicaSets().UpdateReplicaSet(ctx, &capstanv1.UpdateReplicaSetRequest{ReplicaSet: rs})
	if err != nil {
		return nil, err
	}
	c.expect.wrote(key, resp.GetReplicaSet())
	return resp.GetReplicaSet(), nil
}

// byCreation orders ReplicaSets oldest first, by name among equals.
func byCreation(a, b *capstanv1.ReplicaSet) int {
	if c := a.GetMetadata().GetCreateTime().AsTime().Compare(b.GetMetadata().GetCreateTime().AsTime()); c != 0 {
		return c
	}
	return cmp.Compare(a.GetMetadata().GetName(), b.GetMetadata().GetName())
}

// revisionOf is a ReplicaSet's rollout revision; 0 if it has none.
func revisionOf(rs *capstanv1.ReplicaSet) int64 {
	v, err := strconv.ParseInt(rs.GetMetadata().GetAnnotations()[wellknown.AnnotationRevision], 10, 64)
	if err != nil {
		return 0
	}
	return v
}

func maxRevision(rss []*capstanv1.ReplicaSet) int64 {
	var highest int64
	for _, rs := range rss {
		highest = max(highest, revisionOf(rs))
	}
	return highest
}

// splitNewAndOld returns the ReplicaSet of d's current template (the oldest
// one if several match) and all the others.
func splitNewAndOld(d *capstanv1.Deployment, rss []*capstanv1.ReplicaSet) (newRS *capstanv1.ReplicaSet, old []*capstanv1.ReplicaSet) {
	sorted := slices.Clone(rss)
	slices.SortFunc(sorted, byCreation)
	for _, rs := range sorted {
		if newRS == nil && equalIgnoringHash(rs.GetSpec().GetTemplate(), d.GetSpec().GetTemplate()) {
			newRS = rs
			continue
		}
		old = append(old, rs)
	}
	return newRS, old
}

// active keeps the ReplicaSets with spec.replicas > 0.
func active(rss []*capstanv1.ReplicaSet) []*capstanv1.ReplicaSet {
	var out []*capstanv1.ReplicaSet
	for _, rs := range rss {
		if rs != nil && replicasOf(rs) > 0 {
			out = append(out, rs)
		}
	}
	return out
}

// Sums over ReplicaSets (nil entries count as nothing).
func sumSpecReplicas(rss []*capstanv1.ReplicaSet) int32 {
	var n int32
	for _, rs := range rss {
		if rs != nil {
			n += replicasOf(rs)
		}
	}
	return n
}

func sumStatus(rss []*capstanv1.ReplicaSet, field func(*capstanv1.ReplicaSetStatus) int32) int32 {
	var n int32
	for _, rs := range rss {
		if rs != nil {
			n += field(rs.GetStatus())
		}
	}
	return n
}

func statusReplicas(s *capstanv1.ReplicaSetStatus) int32  { return s.GetReplicas() }
func statusReady(s *capstanv1.ReplicaSetStatus) int32     { return s.GetReadyReplicas() }
func statusAvailable(s *capstanv1.ReplicaSetStatus) int32 { return s.GetAvailableReplicas() }

// withNew returns old with newRS appended if it is not nil.
func withNew(old []*capstanv1.ReplicaSet, newRS *capstanv1.ReplicaSet) []*capstanv1.ReplicaSet {
	all := slices.Clone(old)
	if newRS != nil {
		all = append(all, newRS)
	}
	return all
}

// newAndOldReplicaSets finds d's new ReplicaSet, creating it if asked and
// missing, and brings its revision annotation (max of the old ones + 1, so a
// rollback to an old template gets a new revision) and min_ready_seconds up
// to date.
func (c *Controller) newAndOldReplicaSets(ctx context.Context, key string, d *capstanv1.Deployment, rss []*capstanv1.ReplicaSet, create bool) (*capstanv1.ReplicaSet, []*capstanv1.ReplicaSet, error) {
	existing, old := splitNewAndOld(d, rss)
	newRevision := maxRevision(old) + 1

	if existing != nil {
		next := resource.Clone(existing)
		changed := false
		if revisionOf(existing) < newRevision {
			if next.Metadata.Annotations == nil {
				next.Metadata.Annotations = map[string]string{}
			}
			next.Metadata.Annotations[wellknown.AnnotationRevision] = strconv.FormatInt(newRevision, 10)
			changed = true
		}
		if next.GetSpec().GetMinReadySeconds() != d.GetSpec().GetMinReadySeconds() {
			next.Spec.MinReadySeconds = d.GetSpec().GetMinReadySeconds()
			changed = true
		}
		if changed {
			stored, err := c.updateReplicaSet(ctx, key, next)
			if err != nil {
				return nil, nil, fmt.Errorf("update new replica set %s: %w", existing.GetMetadata().GetName(), err)
			}
			existing = stored
		}
		if findCondition(d.GetStatus().GetConditions(), wellknown.DeploymentProgressing) == nil {
			c.setCondition(d, progressingCondition(wellknown.ConditionTrue, reasonFoundNewReplicaSet,
				fmt.Sprintf("Found new replica set %q", existing.GetMetadata().GetName())))
			if err := c.writeStatus(ctx, key, d); err != nil {
				return nil, nil, err
			}
		}
		return existing, old, nil
	}
	if !create {
		return nil, old, nil
	}

	created, err := c.createNewReplicaSet(ctx, key, d, old, newRevision)
	if err != nil {
		return nil, nil, err
	}
	return created, old, nil
}

func (c *Controller) createNewReplicaSet(ctx context.Context, key string, d *capstanv1.Deployment, old []*capstanv1.ReplicaSet, revision int64) (*capstanv1.ReplicaSet, error) {
	meta := d.GetMetadata()
	hash := templateHash(d.GetSpec().GetTemplate())
	template := proto.Clone(d.GetSpec().GetTemplate()).(*capstanv1.PodTemplateSpec)
	if template.Metadata == nil {
		template.Metadata = &capstanv1.ObjectMeta{}
	}
	if template.Metadata.Labels == nil {
		template.Metadata.Labels = map[string]string{}
	}
	template.Metadata.Labels[wellknown.LabelPodTemplateHash] = hash
	sel := proto.Clone(d.GetSpec().GetSelector()).(*capstanv1.LabelSelector)
	if sel.MatchLabels == nil {
		sel.MatchLabels = map[string]string{}
	}
	sel.MatchLabels[wellknown.LabelPodTemplateHash] = hash

	rs := &capstanv1.ReplicaSet{
		Metadata: &capstanv1.ObjectMeta{
			// Deterministic, so a create repeated from a stale cache is
			// ALREADY_EXISTS rather than a second ReplicaSet.
			Name:            meta.GetName() + "-" + hash,
			Namespace:       meta.GetNamespace(),
			Labels:          maps.Clone(template.Metadata.Labels),
			OwnerReferences: []*capstanv1.OwnerReference{controllerRefTo(d)},
			Annotations: map[string]string{
				wellknown.AnnotationRevision: strconv.FormatInt(revision, 10),
			},
		},
		Spec: &capstanv1.ReplicaSetSpec{
			Replicas:        new(int32), // sized below, counting itself as 0
			Selector:        sel,
			Template:        template,
			MinReadySeconds: d.GetSpec().GetMinReadySeconds(),
		},
	}
	replicas := newReplicaSetSize(d, withNew(old, rs), rs)
	*rs.Spec.Replicas = replicas
	setReplicasAnnotations(rs, desiredReplicas(d), desiredReplicas(d)+maxSurge(d))

	resp, err := c.client.ReplicaSets().CreateReplicaSet(ctx, &capstanv1.CreateReplicaSetRequest{ReplicaSet: rs})
	if err != nil {
		if apierrors.IsAlreadyExists(err) {
			// Either the cache has not shown our earlier create yet (the
			// retry will find it), or another template hashes to the same
			// name: say so, the retry will not fix that.
			if cached, ok := c.replicaSets.Get(meta.GetNamespace(), rs.GetMetadata().GetName()); ok {
				ref := controllerOf(cached.GetMetadata())
				if ref == nil || ref.GetUid() != meta.GetUid() || !equalIgnoringHash(cached.GetSpec().GetTemplate(), d.GetSpec().GetTemplate()) {
					msg := fmt.Sprintf("replica set %q exists and is not this deployment's replica set for its template (a hash collision or a foreign object)", rs.GetMetadata().GetName())
					c.recorder.Eventf(ctx, d, wellknown.EventWarning, reasonReplicaSetCreateError, "%s", msg)
					c.setCondition(d, progressingCondition(wellknown.ConditionFalse, reasonReplicaSetCreateError, msg))
					_ = c.writeStatus(ctx, key, d)
				}
			}
			return nil, fmt.Errorf("create replica set %s: %w", rs.GetMetadata().GetName(), err)
		}
		msg := fmt.Sprintf("Failed to create new replica set %q: %v", rs.GetMetadata().GetName(), err)
		c.recorder.Eventf(ctx, d, wellknown.EventWarning, reasonReplicaSetCreateError, "%s", msg)
		if ctx.Err() == nil && !apierrors.IsConflict(err) {
			c.setCondition(d, progressingCondition(wellknown.ConditionFalse, reasonReplicaSetCreateError, msg))
			// The create's error is the one to report.
			_ = c.writeStatus(ctx, key, d)
		}
		return nil, fmt.Errorf("create replica set %s: %w", rs.GetMetadata().GetName(), err)
	}
	created := resp.GetReplicaSet()
	c.expect.wrote(key, created)
	c.log.Info("created replica set", "deployment", key, "replica-set", created.GetMetadata().GetName(), "replicas", replicas, "revision", revision)
	if replicas > 0 {
		c.recorder.Eventf(ctx, d, wellknown.EventNormal, reasonScalingReplicaSet, "Scaled up replica set %s from 0 to %d", created.GetMetadata().GetName(), replicas)
	}
	c.setCondition(d, progressingCondition(wellknown.ConditionTrue, reasonNewReplicaSetCreated,
		fmt.Sprintf("Created new replica set %q", created.GetMetadata().GetName())))
	if err := c.writeStatus(ctx, key, d); err != nil {
		return nil, err
	}
	return created, nil
}

// newReplicaSetSize is how big the new ReplicaSet may be now: for a rolling
// update, as big as keeps every ReplicaSet's spec.replicas together within
// replicas + maxSurge (and no bigger than replicas); for Recreate, replicas.
func newReplicaSetSize(d *capstanv1.Deployment, all []*capstanv1.ReplicaSet, newRS *capstanv1.ReplicaSet) int32 {
	replicas := desiredReplicas(d)
	if !isRollingUpdate(d) {
		return replicas
	}
	current := sumSpecReplicas(all)
	maxTotal := replicas + maxSurge(d)
	newSize := replicasOf(newRS)
	if current >= maxTotal {
		return newSize
	}
	return newSize + min(maxTotal-current, max(replicas-newSize, 0))
}

// setReplicasAnnotations records the deployment's size on rs; it reports
// whether anything changed.
func setReplicasAnnotations(rs *capstanv1.ReplicaSet, desired, maxReplicas int32) bool {
	if rs.Metadata.Annotations == nil {
		rs.Metadata.Annotations = map[string]string{}
	}
	changed := false
	for k, v := range map[string]string{
		annotationDesiredReplicas: strconv.FormatInt(int64(desired), 10),
		annotationMaxReplicas:     strconv.FormatInt(int64(maxReplicas), 10),
	} {
		if rs.Metadata.Annotations[k] != v {
			rs.Metadata.Annotations[k] = v
			changed = true
		}
	}
	return changed
}

func replicasAnnotationsNeedUpdate(rs *capstanv1.ReplicaSet, desired, maxReplicas int32) bool {
	a := rs.GetMetadata().GetAnnotations()
	return a[annotationDesiredReplicas] != strconv.FormatInt(int64(desired), 10) ||
		a[annotationMaxReplicas] != strconv.FormatInt(int64(maxReplicas), 10)
}

func intAnnotation(rs *capstanv1.ReplicaSet, key string) (int32, bool) {
	v, ok := rs.GetMetadata().GetAnnotations()[key]
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return 0, false
	}
	return int32(n), true
}

// scaleReplicaSet sets rs's spec.replicas to size (and the replicas
// annotations), records a ScalingReplicaSet event if the size changed, and
// returns the stored ReplicaSet.
func (c *Controller) scaleReplicaSet(ctx context.Context, key string, d *capstanv1.Deployment, rs *capstanv1.ReplicaSet, size int32) (scaled bool, stored *capstanv1.ReplicaSet, err error) {
	oldSize := replicasOf(rs)
	desired, maxReplicas := desiredReplicas(d), desiredReplicas(d)+maxSurge(d)
	if oldSize == size && !replicasAnnotationsNeedUpdate(rs, desired, maxReplicas) {
		return false, rs, nil
	}
	next := resource.Clone(rs)
	next.Spec.Replicas = &size
	setReplicasAnnotations(next, desired, maxReplicas)
	stored, err = c.updateReplicaSet(ctx, key, next)
	if err != nil {
		return false, nil, fmt.Errorf("scale replica set %s to %d: %w", rs.GetMetadata().GetName(), size, err)
	}
	if oldSize == size {
		return false, stored, nil
	}
	direction := "up"
	if size < oldSize {
		direction = "down"
	}
	c.log.Info("scaled replica set", "deployment", key, "replica-set", rs.GetMetadata().GetName(), "from", oldSize, "to", size)
	c.recorder.Eventf(ctx, d, wellknown.EventNormal, reasonScalingReplicaSet, "Scaled %s replica set %s from %d to %d",
		direction, rs.GetMetadata().GetName(), oldSize, size)
	return true, stored, nil
}

// replace returns rss with the ReplicaSet of the same uid as rs replaced by
// rs, so later steps of a sync see what it wrote.
func replace(rss []*capstanv1.ReplicaSet, rs *capstanv1.ReplicaSet) []*capstanv1.ReplicaSet {
	for i, r := range rss {
		if r != nil && r.GetMetadata().GetUid() == rs.GetMetadata().GetUid() {
			rss[i] = rs
		}
	}
	return rss
}
