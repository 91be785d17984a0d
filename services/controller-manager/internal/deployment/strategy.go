package deployment

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/selector"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Defaults of a Deployment spec.
const (
	defaultReplicas                = 1
	defaultMaxSurge                = "25%"
	defaultMaxUnavailable          = "25%"
	defaultRevisionHistoryLimit    = 10
	defaultProgressDeadlineSeconds = 600
)

// desiredReplicas is spec.replicas, 1 when unset.
func desiredReplicas(d *capstanv1.Deployment) int32 {
	if r := d.GetSpec().Replicas; r != nil {
		return *r
	}
	return defaultReplicas
}

// replicasOf is a ReplicaSet's spec.replicas, 1 when unset (as the
// ReplicaSet controller reads it).
func replicasOf(rs *capstanv1.ReplicaSet) int32 {
	if r := rs.GetSpec().Replicas; r != nil {
		return *r
	}
	return defaultReplicas
}

func revisionHistoryLimit(d *capstanv1.Deployment) int32 {
	if l := d.GetSpec().RevisionHistoryLimit; l != nil {
		return *l
	}
	return defaultRevisionHistoryLimit
}

func progressDeadlineSeconds(d *capstanv1.Deployment) int32 {
	if s := d.GetSpec().ProgressDeadlineSeconds; s != nil {
		return *s
	}
	return defaultProgressDeadlineSeconds
}

func isRollingUpdate(d *capstanv1.Deployment) bool {
	t := d.GetSpec().GetStrategy().GetType()
	return t == "" || t == wellknown.StrategyRollingUpdate
}

// scaledValue resolves a max_surge or max_unavailable value ("3" or "25%")
// against total: a percentage rounds up or down as asked.
func scaledValue(v string, total int32, roundUp bool) (int32, error) {
	if digits, ok := strings.CutSuffix(v, "%"); ok {
		percent, err := strconv.ParseUint(digits, 10, 31)
		if err != nil {
			return 0, fmt.Errorf("deployment: invalid percentage %q: %w", v, err)
		}
		exact := float64(percent) * float64(total) / 100
		if roundUp {
			return int32(math.Ceil(exact)), nil
		}
		return int32(math.Floor(exact)), nil
	}
	n, err := strconv.ParseUint(v, 10, 31)
	if err != nil {
		return 0, fmt.Errorf("deployment: invalid count %q: %w", v, err)
	}
	return int32(n), nil
}

// fenceposts resolves a rolling update's bounds for the deployment's
// replicas: surge rounds up, unavailable rounds down. Validation refuses
// both set to zero; if rounding makes both zero, unavailable becomes 1, as
// in Kubernetes, or the rollout could never move.
func fenceposts(d *capstanv1.Deployment) (surge, unavailable int32, err error) {
	ru := d.GetSpec().GetStrategy().GetRollingUpdate()
	surgeValue, unavailableValue := ru.GetMaxSurge(), ru.GetMaxUnavailable()
	if surgeValue == "" {
		surgeValue = defaultMaxSurge
	}
	if unavailableValue == "" {
		unavailableValue = defaultMaxUnavailable
	}
	replicas := desiredReplicas(d)
	if surge, err = scaledValue(surgeValue, replicas, true); err != nil {
		return 0, 0, fmt.Errorf("strategy.rolling_update.max_surge: %w", err)
	}
	if unavailable, err = scaledValue(unavailableValue, replicas, false); err != nil {
		return 0, 0, fmt.Errorf("strategy.rolling_update.max_unavailable: %w", err)
	}
	if surge == 0 && unavailable == 0 {
		unavailable = 1
	}
	return surge, unavailable, nil
}

// maxSurge is how many pods a rolling update may add above replicas; 0 for
// Recreate. Values validation would refuse count as 0.
func maxSurge(d *capstanv1.Deployment) int32 {
	if !isRollingUpdate(d) {
		return 0
	}
	surge, _, err := fenceposts(d)
	if err != nil {
		return 0
	}
	return surge
}

// maxUnavailable is how many of replicas may be unavailable during a
// rolling update, at most replicas; 0 for Recreate.
func maxUnavailable(d *capstanv1.Deployment) int32 {
	replicas := desiredReplicas(d)
	if !isRollingUpdate(d) || replicas == 0 {
		return 0
	}
	_, unavailable, err := fenceposts(d)
	if err != nil {
		return 0
	}
	return min(unavailable, replicas)
}

func labelSelector(d *capstanv1.Deployment) (labels.Selector, error) {
	return selector.FromLabelSelector(d.GetSpec().GetSelector())
}

func labelSet(m map[string]string) labels.Set { return labels.Set(m) }
