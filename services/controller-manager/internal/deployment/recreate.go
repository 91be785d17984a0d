package deployment

import (
	"context"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/informer"
)

// rolloutRecreate moves a Recreate Deployment one step: scale every old
// ReplicaSet to 0; once none of their pods is left (running or not yet
// terminated), create the new ReplicaSet if needed and scale it to replicas.
func (c *Controller) rolloutRecreate(ctx context.Context, key string, d *capstanv1.Deployment, rss []*capstanv1.ReplicaSet) error {
	// Not created yet: nothing new may start before the old pods are gone.
	newRS, old, err := c.newAndOldReplicaSets(ctx, key, d, rss, false)
	if err != nil {
		return err
	}

	scaledDown := false
	for _, rs := range active(old) {
		scaled, stored, err := c.scaleReplicaSet(ctx, key, d, rs, 0)
		if err != nil {
			return err
		}
		old = replace(old, stored)
		scaledDown = scaledDown || scaled
	}
	if scaledDown || c.oldPodsRemain(d, old, newRS) {
		return c.syncRolloutStatus(ctx, key, d, withNew(old, newRS), newRS)
	}

	if newRS == nil {
		if newRS, err = c.createNewReplicaSet(ctx, key, d, old, maxRevision(old)+1); err != nil {
			return err
		}
	}
	if _, newRS, err = c.scaleReplicaSet(ctx, key, d, newRS, desiredReplicas(d)); err != nil {
		return err
	}
	if deploymentComplete(d, d.GetStatus()) {
		if err := c.cleanupHistory(ctx, key, d, old); err != nil {
			return err
		}
	}
	return c.syncRolloutStatus(ctx, key, d, withNew(old, newRS), newRS)
}

// oldPodsRemain reports whether an old ReplicaSet still has pods: by its
// status, or by a pod in the cache it controls that has not terminated
// (status can lag behind the pods).
func (c *Controller) oldPodsRemain(d *capstanv1.Deployment, old []*capstanv1.ReplicaSet, newRS *capstanv1.ReplicaSet) bool {
	if sumStatus(old, statusReplicas) > 0 {
		return true
	}
	oldUIDs := make(map[string]bool, len(old))
	for _, rs := range old {
		oldUIDs[rs.GetMetadata().GetUid()] = true
	}
	if newRS != nil {
		delete(oldUIDs, newRS.GetMetadata().GetUid())
	}
	for _, pod := range c.pods.ByIndex(informer.NamespaceIndex, d.GetMetadata().GetNamespace()) {
		ref := controllerOf(pod.GetMetadata())
		if ref == nil || !oldUIDs[ref.GetUid()] {
			continue
		}
		if !terminal(pod) {
			return true
		}
	}
	return false
}
