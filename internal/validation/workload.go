package validation

import (
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/labels"
	k8svalidation "k8s.io/apimachinery/pkg/util/validation"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/selector"
)

// Deployment strategy types.
const (
	strategyRollingUpdate = "RollingUpdate"
	strategyRecreate      = "Recreate"
)

func validateReplicaSetSpec(spec *capstanv1.ReplicaSetSpec, p fieldPath) error {
	if spec == nil {
		spec = &capstanv1.ReplicaSetSpec{} // reported as a missing selector
	}
	if spec.Replicas != nil {
		if err := nonNegative(p.child("replicas"), spec.GetReplicas()); err != nil {
			return err
		}
	}
	if err := validateSelectorAndTemplate(spec.GetSelector(), spec.GetTemplate(), p); err != nil {
		return err
	}
	return nonNegative(p.child("min_ready_seconds"), spec.GetMinReadySeconds())
}

func validateDeploymentSpec(spec *capstanv1.DeploymentSpec, p fieldPath) error {
	if spec == nil {
		spec = &capstanv1.DeploymentSpec{} // reported as a missing selector
	}
	if spec.Replicas != nil {
		if err := nonNegative(p.child("replicas"), spec.GetReplicas()); err != nil {
			return err
		}
	}
	if err := validateSelectorAndTemplate(spec.GetSelector(), spec.GetTemplate(), p); err != nil {
		return err
	}
	if err := validateStrategy(spec.GetStrategy(), p.child("strategy")); err != nil {
		return err
	}
	if err := nonNegative(p.child("min_ready_seconds"), spec.GetMinReadySeconds()); err != nil {
		return err
	}
	if spec.RevisionHistoryLimit != nil {
		if err := nonNegative(p.child("revision_history_limit"), spec.GetRevisionHistoryLimit()); err != nil {
			return err
		}
	}
	// A deadline no longer than min_ready_seconds would fail every rollout
	// before a single new pod could count as available.
	if spec.ProgressDeadlineSeconds != nil && spec.GetProgressDeadlineSeconds() <= spec.GetMinReadySeconds() {
		return invalid(p.child("progress_deadline_seconds"), "must be greater than min_ready_seconds (%d), not %d",
			spec.GetMinReadySeconds(), spec.GetProgressDeadlineSeconds())
	}
	return nil
}

// validateSelectorAndTemplate checks the selector and pod template of a
// ReplicaSet or Deployment spec at p: the selector must be non-empty and
// select the template's labels, or the controller would never see the pods
// it creates (and would create them without end).
func validateSelectorAndTemplate(sel *capstanv1.LabelSelector, template *capstanv1.PodTemplateSpec, p fieldPath) error {
	sp := p.child("selector")
	if sel == nil {
		return required(sp)
	}
	if len(sel.GetMatchLabels())+len(sel.GetMatchExpressions()) == 0 {
		return invalid(sp, "must not be empty: an empty selector selects every pod in the namespace")
	}
	if err := validateLabelSelector(sel, sp); err != nil {
		return err
	}
	matcher, err := selector.FromLabelSelector(sel)
	if err != nil {
		// validateLabelSelector checks everything FromLabelSelector does.
		return invalid(sp, "%v", err)
	}
	tp := p.child("template")
	if template == nil {
		return required(tp)
	}
	mp := tp.child("metadata")
	if err := validateLabels(template.GetMetadata().GetLabels(), mp.child("labels")); err != nil {
		return err
	}
	if err := validateAnnotations(template.GetMetadata().GetAnnotations(), mp.child("annotations")); err != nil {
		return err
	}
	if !matcher.Matches(labels.Set(template.GetMetadata().GetLabels())) {
		return invalid(mp.child("labels"), "selector does not match template labels")
	}
	if err := validatePodSpec(template.GetSpec(), tp.child("spec")); err != nil {
		return err
	}
	// A controller keeps its pods running: one that exits for good would
	// count as missing and be replaced, over and over.
	if policy := template.GetSpec().GetRestartPolicy(); policy != "" && policy != restartPolicyAlways {
		return invalid(tp.child("spec").child("restart_policy"), "must be %q (or empty) in a pod template, not %q", restartPolicyAlways, policy)
	}
	return nil
}

// validateLabelSelector checks each part of a LabelSelector with the rules
// selector.FromLabelSelector applies, so that the error names the part.
func validateLabelSelector(sel *capstanv1.LabelSelector, p fieldPath) error {
	if err := validateLabels(sel.GetMatchLabels(), p.child("match_labels")); err != nil {
		return err
	}
	for i, expr := range sel.GetMatchExpressions() {
		ep := p.child("match_expressions").index(i)
		if err := checkFormat(ep.child("key"), "key", expr.GetKey(), content.IsLabelKey(expr.GetKey())); err != nil {
			return err
		}
		switch expr.GetOperator() {
		case "In", "NotIn":
			if len(expr.GetValues()) == 0 {
				return invalid(ep.child("values"), "required: operator %q needs at least one value", expr.GetOperator())
			}
		case "Exists", "DoesNotExist":
			if len(expr.GetValues()) > 0 {
				return invalid(ep.child("values"), "must be empty: operator %q takes no values", expr.GetOperator())
			}
		default:
			return checkEnum(ep.child("operator"), expr.GetOperator(), "In", "NotIn", "Exists", "DoesNotExist")
		}
		for j, v := range expr.GetValues() {
			if err := checkFormat(ep.child("values").index(j), "value", v, content.IsLabelValue(v)); err != nil {
				return err
			}
		}
	}
	return nil
}

func validateStrategy(strategy *capstanv1.DeploymentStrategy, p fieldPath) error {
	if err := checkEnum(p.child("type"), strategy.GetType(), "", strategyRollingUpdate, strategyRecreate); err != nil {
		return err
	}
	rolling := strategy.GetRollingUpdate()
	if rolling == nil {
		return nil
	}
	rp := p.child("rolling_update")
	if strategy.GetType() == strategyRecreate {
		return invalid(rp, "must not be set when type is %q", strategyRecreate)
	}
	surgeZero, err := parseIntOrPercent(rolling.GetMaxSurge(), rp.child("max_surge"))
	if err != nil {
		return err
	}
	unavailableZero, err := parseIntOrPercent(rolling.GetMaxUnavailable(), rp.child("max_unavailable"))
	if err != nil {
		return err
	}
	if surgeZero && unavailableZero {
		return invalid(rp.child("max_unavailable"), "must not be 0 when max_surge is 0: the rollout could never replace a pod")
	}
	return nil
}

// parseIntOrPercent checks a max_surge or max_unavailable value: empty (the
// default, 25%), a non-negative integer ("1") or a percentage from 0% to
// 100% ("25%"). It reports whether the value is zero.
func parseIntOrPercent(v string, p fieldPath) (zero bool, err error) {
	if v == "" {
		return false, nil
	}
	const want = "a non-negative integer (\"1\") or a percentage from 0%% to 100%% (\"25%%\")"
	if digits, ok := strings.CutSuffix(v, "%"); ok {
		if msgs := k8svalidation.IsValidPercent(v); len(msgs) > 0 {
			return false, invalid(p, "invalid value %s: must be "+want, quote(v))
		}
		n, err := strconv.Atoi(digits)
		if err != nil || n > 100 {
			return false, invalid(p, "invalid value %s: must be "+want, quote(v))
		}
		return n == 0, nil
	}
	// ParseUint takes no sign, so "-1" and "+1" fail here too.
	n, err := strconv.ParseUint(v, 10, 31)
	if err != nil {
		return false, invalid(p, "invalid value %s: must be "+want, quote(v))
	}
	return n == 0, nil
}
