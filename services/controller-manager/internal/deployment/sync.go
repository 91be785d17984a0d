package deployment

import (
	"context"

	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// sync brings one Deployment a step closer to its spec. It is idempotent:
// everything it needs is read from the caches each time.
func (c *Controller) sync(ctx context.Context, key string) error {
	namespace, name := informer.SplitKey(key)
	cached, ok := c.deployments.Get(namespace, name)
	if !ok {
		// Deleted: the garbage collector removes its ReplicaSets.
		c.expect.forget(key)
		return nil
	}
	switch ok, timedOut := c.expect.satisfied(key); {
	case !ok:
		// The informer event of the write brings the key back; the
		// recheck is a safety net.
		c.loop.AddAfter(key, expectationRecheck)
		return nil
	case timedOut:
		c.log.Warn("the caches never showed this controller's writes; syncing anyway", "deployment", key)
	}

	d := cloneDeployment(cached)
	sel, err := labelSelector(d)
	if err != nil {
		// Validation refuses such a selector, so a retry cannot help.
		c.recorder.Eventf(ctx, d, wellknown.EventWarning, "SelectorInvalid", "invalid selector: %v", err)
		c.log.Error("invalid selector", "deployment", key, "error", err)
		return nil
	}
	rss, err := c.claimReplicaSets(ctx, key, d, sel)
	if err != nil {
		return err
	}

	if d.GetMetadata().GetDeleteTime() != nil {
		newRS, old := splitNewAndOld(d, rss)
		return c.syncStatus(ctx, key, d, withNew(old, newRS), newRS)
	}
	if err := c.checkPausedConditions(ctx, key, d); err != nil {
		return err
	}
	if d.GetSpec().GetPaused() || isScalingEvent(d, rss) {
		return c.syncScale(ctx, key, d, rss)
	}
	if d.GetSpec().GetStrategy().GetType() == wellknown.StrategyRecreate {
		return c.rolloutRecreate(ctx, key, d, rss)
	}
	return c.rolloutRolling(ctx, key, d, rss)
}
