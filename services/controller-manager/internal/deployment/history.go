package deployment

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
)

// cleanupHistory deletes the oldest old ReplicaSets beyond
// revision_history_limit, lowest revision first, skipping any that still
// has pods or whose status has not caught up with its spec (it may still be
// deleting pods).
func (c *Controller) cleanupHistory(ctx context.Context, key string, d *capstanv1.Deployment, old []*capstanv1.ReplicaSet) error {
	var cleanable []*capstanv1.ReplicaSet
	for _, rs := range old {
		if rs != nil && rs.GetMetadata().GetDeleteTime() == nil {
			cleanable = append(cleanable, rs)
		}
	}
	excess := len(cleanable) - int(revisionHistoryLimit(d))
	if excess <= 0 {
		return nil
	}
	slices.SortFunc(cleanable, func(a, b *capstanv1.ReplicaSet) int {
		if n := cmp.Compare(revisionOf(a), revisionOf(b)); n != 0 {
			return n
		}
		return byCreation(a, b)
	})
	for _, rs := range cleanable[:excess] {
		meta := rs.GetMetadata()
		if rs.GetStatus().GetReplicas() != 0 || replicasOf(rs) != 0 || meta.GetGeneration() > rs.GetStatus().GetObservedGeneration() {
			continue
		}
		_, err := c.client.ReplicaSets().DeleteReplicaSet(ctx, &capstanv1.DeleteReplicaSetRequest{
			Namespace: meta.GetNamespace(),
			Name:      meta.GetName(),
			// Only the version this decision was made on: one scaled up
			// since (a rollback) must stay.
			Preconditions: &capstanv1.Preconditions{Uid: meta.GetUid(), ResourceVersion: meta.GetResourceVersion()},
		})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete old replica set %s: %w", meta.GetName(), err)
		}
		c.expect.deleted(key, rs)
		c.log.Info("deleted old replica set beyond the revision history limit", "deployment", key,
			"replica-set", meta.GetName(), "revision", revisionOf(rs), "limit", revisionHistoryLimit(d))
	}
	return nil
}
