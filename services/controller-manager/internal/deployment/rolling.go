package deployment

import (
	"context"
	"slices"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// rolloutRolling moves a RollingUpdate Deployment one step: scale the new
// ReplicaSet up within maxSurge, or else scale old ones down within
// maxUnavailable; once complete, prune history. One kind of step per sync:
// the next sync starts from caches that show this one's writes.
func (c *Controller) rolloutRolling(ctx context.Context, key string, d *capstanv1.Deployment, rss []*capstanv1.ReplicaSet) error {
	newRS, old, err := c.newAndOldReplicaSets(ctx, key, d, rss, true)
	if err != nil {
		return err
	}
	all := withNew(old, newRS)

	scaledUp, newRS, err := c.reconcileNewReplicaSet(ctx, key, d, all, newRS)
	if err != nil {
		return err
	}
	if scaledUp {
		return c.syncRolloutStatus(ctx, key, d, withNew(old, newRS), newRS)
	}

	scaledDown, old, err := c.reconcileOldReplicaSets(ctx, key, d, old, newRS)
	if err != nil {
		return err
	}
	if scaledDown {
		return c.syncRolloutStatus(ctx, key, d, withNew(old, newRS), newRS)
	}

	if deploymentComplete(d, d.GetStatus()) {
		if err := c.cleanupHistory(ctx, key, d, old); err != nil {
			return err
		}
	}
	return c.syncRolloutStatus(ctx, key, d, withNew(old, newRS), newRS)
}

// reconcileNewReplicaSet scales the new ReplicaSet towards replicas: down at
// once if it is bigger, up only as far as keeps the total of every
// ReplicaSet's spec.replicas within replicas + maxSurge.
func (c *Controller) reconcileNewReplicaSet(ctx context.Context, key string, d *capstanv1.Deployment, all []*capstanv1.ReplicaSet, newRS *capstanv1.ReplicaSet) (bool, *capstanv1.ReplicaSet, error) {
	replicas := desiredReplicas(d)
	switch current := replicasOf(newRS); {
	case current == replicas:
		return false, newRS, nil
	case current > replicas:
		return c.scaleReplicaSet(ctx, key, d, newRS, replicas)
	}
	// An old ReplicaSet just scaled down still has its extra pods until its
	// controller removes them; surging now would exceed replicas + maxSurge
	// pods. Its status update (pods gone) brings the deployment back here.
	for _, rs := range all {
		if rs.GetMetadata().GetUid() != newRS.GetMetadata().GetUid() && !converged(rs) {
			return false, newRS, nil
		}
	}
	return c.scaleReplicaSet(ctx, key, d, newRS, newReplicaSetSize(d, all, newRS))
}

// reconcileOldReplicaSets scales old ReplicaSets down as far as keeps
// replicas - maxUnavailable pods available: first the pods of old
// ReplicaSets that are not available anyway (removing them costs no
// availability), then available ones. It returns the old ReplicaSets as
// they are after its writes.
func (c *Controller) reconcileOldReplicaSets(ctx context.Context, key string, d *capstanv1.Deployment, old []*capstanv1.ReplicaSet, newRS *capstanv1.ReplicaSet) (bool, []*capstanv1.ReplicaSet, error) {
	activeOld := active(old)
	if sumSpecReplicas(activeOld) == 0 {
		return false, old, nil
	}
	// Decide on settled numbers only: an old ReplicaSet whose controller has
	// not yet acted on its last scale-down still counts pods that are about
	// to go as available, and scaling down on that would drop below
	// replicas - maxUnavailable.
	for _, rs := range activeOld {
		if !converged(rs) {
			return false, old, nil
		}
	}
	all := withNew(old, newRS)
	minAvailable := desiredReplicas(d) - maxUnavailable(d)
	newUnavailable := replicasOf(newRS) - newRS.GetStatus().GetAvailableReplicas()
	// Pods that may go: all of them, less those that must stay available,
	// less the new ReplicaSet's pods that are not available yet (they may
	// never become so).
	maxScaledDown := sumSpecReplicas(all) - minAvailable - newUnavailable
	if maxScaledDown <= 0 {
		return false, old, nil
	}

	cleaned, old, err := c.scaleDownUnhealthy(ctx, key, d, old, maxScaledDown)
	if err != nil {
		return false, old, err
	}
	scaled, old, err := c.scaleDownAvailable(ctx, key, d, old, newRS)
	if err != nil {
		return false, old, err
	}
	return cleaned+scaled > 0, old, nil
}

// converged reports whether rs's controller has acted on its current spec:
// it observed this generation and has no more pods than asked for.
func converged(rs *capstanv1.ReplicaSet) bool {
	return rs.GetStatus().GetObservedGeneration() >= rs.GetMetadata().GetGeneration() &&
		rs.GetStatus().GetReplicas() <= replicasOf(rs)
}

// scaleDownUnhealthy removes up to limit pods from old ReplicaSets that have
// fewer available pods than replicas, oldest ReplicaSet first: the
// ReplicaSet controller deletes unavailable pods first, so availability does
// not drop.
func (c *Controller) scaleDownUnhealthy(ctx context.Context, key string, d *capstanv1.Deployment, old []*capstanv1.ReplicaSet, limit int32) (int32, []*capstanv1.ReplicaSet, error) {
	ordered := slices.Clone(old)
	slices.SortFunc(ordered, byCreation)
	var total int32
	for _, rs := range ordered {
		if total >= limit {
			break
		}
		size := replicasOf(rs)
		unhealthy := size - rs.GetStatus().GetAvailableReplicas()
		if size == 0 || unhealthy <= 0 {
			continue
		}
		down := min(limit-total, unhealthy)
		_, stored, err := c.scaleReplicaSet(ctx, key, d, rs, size-down)
		if err != nil {
			return total, old, err
		}
		old = replace(old, stored)
		total += down
	}
	return total, old, nil
}

// scaleDownAvailable removes available pods from old ReplicaSets, oldest
// first, as long as the available pods of every ReplicaSet together stay at
// or above replicas - maxUnavailable.
func (c *Controller) scaleDownAvailable(ctx context.Context, key string, d *capstanv1.Deployment, old []*capstanv1.ReplicaSet, newRS *capstanv1.ReplicaSet) (int32, []*capstanv1.ReplicaSet, error) {
	minAvailable := desiredReplicas(d) - maxUnavailable(d)
	available := sumStatus(withNew(old, newRS), statusAvailable)
	if available <= minAvailable {
		return 0, old, nil
	}
	limit := available - minAvailable
	ordered := slices.Clone(old)
	slices.SortFunc(ordered, byCreation)
	var total int32
	for _, rs := range ordered {
		if total >= limit {
			break
		}
		size := replicasOf(rs)
		if size == 0 {
			continue
		}
		down := min(size, limit-total)
		_, stored, err := c.scaleReplicaSet(ctx, key, d, rs, size-down)
		if err != nil {
			return total, old, err
		}
		old = replace(old, stored)
		total += down
	}
	return total, old, nil
}
