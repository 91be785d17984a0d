package replicaset

import (
	"cmp"
	"slices"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// isActive: the pod counts towards replicas: not finished and not being
// deleted.
func isActive(pod *capstanv1.Pod) bool {
	phase := pod.GetStatus().GetPhase()
	return phase != wellknown.PodSucceeded && phase != wellknown.PodFailed && pod.GetMetadata().GetDeleteTime() == nil
}

// readyCondition returns the pod's Ready condition, or nil.
func readyCondition(pod *capstanv1.Pod) *capstanv1.Condition {
	for _, c := range pod.GetStatus().GetConditions() {
		if c.GetType() == wellknown.PodReady {
			return c
		}
	}
	return nil
}

func isReady(pod *capstanv1.Pod) bool {
	return readyCondition(pod).GetStatus() == wellknown.ConditionTrue
}

// availableAt returns when a ready pod becomes available (ready for
// minReady), and false for a pod that is not ready.
func availableAt(pod *capstanv1.Pod, minReady time.Duration) (time.Time, bool) {
	c := readyCondition(pod)
	if c.GetStatus() != wellknown.ConditionTrue {
		return time.Time{}, false
	}
	if minReady <= 0 || c.GetLastTransitionTime() == nil {
		return time.Time{}, true
	}
	return c.GetLastTransitionTime().AsTime().Add(minReady), true
}

// phaseRank orders phases for scale-down: a pod not yet running is the
// cheapest to lose.
func phaseRank(pod *capstanv1.Pod) int {
	switch pod.GetStatus().GetPhase() {
	case wellknown.PodPending, "":
		return 0
	case wellknown.PodUnknown:
		return 1
	case wellknown.PodRunning:
		return 2
	}
	return 3
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// compareForDeletion orders pods so that the ones to delete first come
// first, as Kubernetes' ActivePods does: unassigned before assigned, Pending
// before Unknown before Running, not ready before ready, a pod ready for a
// shorter time before one ready longer, more container restarts before
// fewer, newer before older (then by name, for a stable order).
func compareForDeletion(a, b *capstanv1.Pod) int {
	if c := cmp.Compare(boolRank(a.GetSpec().GetNodeName() != ""), boolRank(b.GetSpec().GetNodeName() != "")); c != 0 {
		return c
	}
	if c := cmp.Compare(phaseRank(a), phaseRank(b)); c != 0 {
		return c
	}
	if c := cmp.Compare(boolRank(isReady(a)), boolRank(isReady(b))); c != 0 {
		return c
	}
	if isReady(a) && isReady(b) {
		// Ready more recently first.
		if c := readyCondition(b).GetLastTransitionTime().AsTime().Compare(readyCondition(a).GetLastTransitionTime().AsTime()); c != 0 {
			return c
		}
	}
	if c := cmp.Compare(restarts(b), restarts(a)); c != 0 {
		return c
	}
	if c := b.GetMetadata().GetCreateTime().AsTime().Compare(a.GetMetadata().GetCreateTime().AsTime()); c != 0 {
		return c
	}
	return cmp.Compare(a.GetMetadata().GetName(), b.GetMetadata().GetName())
}

func restarts(pod *capstanv1.Pod) int32 {
	var n int32
	for _, cs := range pod.GetStatus().GetContainerStatuses() {
		n = max(n, cs.GetRestartCount())
	}
	return n
}

// podsToDelete picks the n pods to delete first.
func podsToDelete(pods []*capstanv1.Pod, n int) []*capstanv1.Pod {
	sorted := slices.Clone(pods)
	slices.SortFunc(sorted, compareForDeletion)
	return sorted[:min(n, len(sorted))]
}

// controllerRef returns the owner reference marked controller, or nil.
func controllerRef(meta interface {
	GetOwnerReferences() []*capstanv1.OwnerReference
}) *capstanv1.OwnerReference {
	for _, ref := range meta.GetOwnerReferences() {
		if ref.GetController() {
			return ref
		}
	}
	return nil
}
