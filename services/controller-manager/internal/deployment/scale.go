package deployment

import (
	"context"
	"math"
	"slices"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// isScalingEvent reports whether replicas changed since the active
// ReplicaSets were last scaled (their desired-replicas annotation differs):
// a user's scale, handled by scaling rather than by rolling.
func isScalingEvent(d *capstanv1.Deployment, rss []*capstanv1.ReplicaSet) bool {
	for _, rs := range active(rss) {
		if desired, ok := intAnnotation(rs, annotationDesiredReplicas); ok && desired != desiredReplicas(d) {
			return true
		}
	}
	return false
}

// syncScale handles a paused Deployment or a scaling event: scale, prune
// history if paused, and write the status; no rollout step.
func (c *Controller) syncScale(ctx context.Context, key string, d *capstanv1.Deployment, rss []*capstanv1.ReplicaSet) error {
	newRS, old, err := c.newAndOldReplicaSets(ctx, key, d, rss, false)
	if err != nil {
		return err
	}
	if newRS, old, err = c.scale(ctx, key, d, newRS, old); err != nil {
		return err
	}
	if d.GetSpec().GetPaused() {
		if err := c.cleanupHistory(ctx, key, d, old); err != nil {
			return err
		}
	}
	return c.syncStatus(ctx, key, d, withNew(old, newRS), newRS)
}

// scale resizes ReplicaSets after replicas changed. With one active
// ReplicaSet (or none) it takes the whole count; a saturated new one makes
// the old ones go to 0; during a rolling update the change is spread over
// the active ReplicaSets in proportion to their sizes (Kubernetes'
// proportional scaling), so the total stays replicas + maxSurge and the
// rollout's proportions are kept.
func (c *Controller) scale(ctx context.Context, key string, d *capstanv1.Deployment, newRS *capstanv1.ReplicaSet, old []*capstanv1.ReplicaSet) (*capstanv1.ReplicaSet, []*capstanv1.ReplicaSet, error) {
	replicas := desiredReplicas(d)
	if target := activeOrLatest(newRS, old); target != nil {
		if replicasOf(target) == replicas {
			return newRS, old, nil
		}
		_, stored, err := c.scaleReplicaSet(ctx, key, d, target, replicas)
		if err != nil {
			return newRS, old, err
		}
		if newRS != nil && newRS.GetMetadata().GetUid() == stored.GetMetadata().GetUid() {
			return stored, old, nil
		}
		return newRS, replace(old, stored), nil
	}

	if saturated(d, newRS) {
		for _, rs := range active(old) {
			_, stored, err := c.scaleReplicaSet(ctx, key, d, rs, 0)
			if err != nil {
				return newRS, old, err
			}
			old = replace(old, stored)
		}
		return newRS, old, nil
	}

	if !isRollingUpdate(d) {
		return newRS, old, nil
	}
	all := active(withNew(old, newRS))
	allowed := int32(0)
	if replicas > 0 {
		allowed = replicas + maxSurge(d)
	}
	toAdd := allowed - sumSpecReplicas(all)
	switch {
	case toAdd > 0:
		// Bigger first; among equals the newer grows first.
		slices.SortFunc(all, func(a, b *capstanv1.ReplicaSet) int {
			if n := replicasOf(b) - replicasOf(a); n != 0 {
				return int(n)
			}
			return byCreation(b, a)
		})
	case toAdd < 0:
		// Bigger first; among equals the older shrinks first.
		slices.SortFunc(all, func(a, b *capstanv1.ReplicaSet) int {
			if n := replicasOf(b) - replicasOf(a); n != 0 {
				return int(n)
			}
			return byCreation(a, b)
		})
	}
	sizes := make([]int32, len(all))
	var added int32
	for i, rs := range all {
		sizes[i] = replicasOf(rs)
		if toAdd != 0 {
			p := proportion(rs, d, toAdd, added)
			sizes[i] += p
			added += p
		}
	}
	for i, rs := range all {
		// The rounding leftover goes to the biggest.
		if i == 0 && toAdd != 0 {
			sizes[i] = max(sizes[i]+toAdd-added, 0)
		}
		_, stored, err := c.scaleReplicaSet(ctx, key, d, rs, sizes[i])
		if err != nil {
			return newRS, old, err
		}
		if newRS != nil && newRS.GetMetadata().GetUid() == stored.GetMetadata().GetUid() {
			newRS = stored
		} else {
			old = replace(old, stored)
		}
	}
	return newRS, old, nil
}

// activeOrLatest is the one ReplicaSet with pods, or the newest one if none
// has pods; nil when several have pods.
func activeOrLatest(newRS *capstanv1.ReplicaSet, old []*capstanv1.ReplicaSet) *capstanv1.ReplicaSet {
	if newRS == nil && len(old) == 0 {
		return nil
	}
	all := active(withNew(old, newRS))
	switch len(all) {
	case 0:
		if newRS != nil {
			return newRS
		}
		return slices.MaxFunc(old, byCreation)
	case 1:
		return all[0]
	}
	return nil
}

// saturated: the new ReplicaSet has all the pods, all available.
func saturated(d *capstanv1.Deployment, newRS *capstanv1.ReplicaSet) bool {
	if newRS == nil {
		return false
	}
	desired, ok := intAnnotation(newRS, annotationDesiredReplicas)
	replicas := desiredReplicas(d)
	return ok && desired == replicas && replicasOf(newRS) == replicas && newRS.GetStatus().GetAvailableReplicas() == replicas
}

// proportion is rs's share of toAdd pods (negative: to remove), bounded by
// what is left to hand out.
func proportion(rs *capstanv1.ReplicaSet, d *capstanv1.Deployment, toAdd, added int32) int32 {
	if replicasOf(rs) == 0 || toAdd == 0 || toAdd == added {
		return 0
	}
	fraction := fractionOf(rs, d)
	left := toAdd - added
	if toAdd > 0 {
		return min(fraction, left)
	}
	return max(fraction, left)
}

// fractionOf is how many pods rs gains (or loses) when the Deployment's
// maximum size goes from what it was when rs was last scaled to what it is.
func fractionOf(rs *capstanv1.ReplicaSet, d *capstanv1.Deployment) int32 {
	replicas := desiredReplicas(d)
	if replicas == 0 {
		return -replicasOf(rs)
	}
	maxNow := replicas + maxSurge(d)
	maxBefore, ok := intAnnotation(rs, annotationMaxReplicas)
	if !ok || maxBefore == 0 {
		maxBefore = d.GetStatus().GetReplicas()
		if maxBefore == 0 {
			return 0
		}
	}
	size := replicasOf(rs)
	return int32(math.Round(float64(size)*float64(maxNow)/float64(maxBefore))) - size
}
