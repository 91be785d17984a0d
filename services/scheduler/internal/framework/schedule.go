package framework

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"

	"github.com/capstan-dev/capstan/internal/taints"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// MaxScore is the best score one scoring rule gives a node; 0 is the worst.
const MaxScore = 100

// Weights of the scoring rules in a node's total, as kube-scheduler weighs
// its equivalents (NodeResourcesFit 1, PodTopologySpread 2,
// TaintToleration 3): spreading an owner's pods beats packing by free
// resources, and avoiding a PreferNoSchedule taint beats both.
const (
	WeightLeastAllocated = 1
	WeightOwnerSpread    = 2
	WeightPreferNoTaint  = 3
)

// LeastAllocated scores how much of node would stay free with pod on it:
// MaxScore × (allocatable − requested)/allocatable, averaged over cpu and
// memory. A resource the node does not have scores 0.
func LeastAllocated(pod *PodInfo, node *NodeInfo) int64 {
	requested := node.Requested.Add(pod.Requests)
	return (freeShare(requested.MilliCPU, node.Allocatable.MilliCPU) +
		freeShare(requested.Memory, node.Allocatable.Memory)) / 2
}

func freeShare(requested, allocatable int64) int64 {
	if allocatable <= 0 || requested >= allocatable {
		return 0
	}
	if requested <= 0 {
		return MaxScore
	}
	// Float, because MaxScore × bytes of memory can overflow int64.
	return int64(float64(allocatable-requested) * MaxScore / float64(allocatable))
}

// OwnerSpread scores a node that holds count pods of the pod's owner when
// the busiest feasible node holds most: fewer scores higher; every node
// scores MaxScore while no feasible node holds any.
func OwnerSpread(count, most int) int64 {
	if most <= 0 {
		return MaxScore
	}
	return int64(MaxScore * (most - count) / most)
}

// IntolerablePreferNoSchedule counts node's PreferNoSchedule taints that pod
// does not tolerate.
func IntolerablePreferNoSchedule(pod *PodInfo, node *NodeInfo) int {
	n := 0
	for _, t := range node.taints {
		if t.taint.GetEffect() == wellknown.TaintPreferNoSchedule && !taints.Tolerated(t.taint, pod.Pod.GetSpec().GetTolerations()) {
			n++
		}
	}
	return n
}

// PreferNoTaint scores a node with count intolerable PreferNoSchedule
// taints when the worst feasible node has most: fewer scores higher.
func PreferNoTaint(count, most int) int64 {
	if most <= 0 {
		return MaxScore
	}
	return int64(MaxScore * (most - count) / most)
}

// Decision is where Schedule puts a pod.
type Decision struct {
	// Node is the name of the chosen node.
	Node string
	// Score is its total score.
	Score int64
	// Feasible is how many nodes passed every filter.
	Feasible int
}

// FitError says why no node can take a pod.
type FitError struct {
	// Pod is the pod's key, namespace/name.
	Pod string
	// Nodes is how many nodes were considered.
	Nodes int
	// Reasons counts the nodes refused for each reason (a node short of
	// both cpu and memory counts under both).
	Reasons map[string]int
}

// Error reads like kube-scheduler's: "0/3 nodes are available: 1 node(s)
// didn't match node selector, 2 Insufficient cpu." The reasons are sorted as
// formatted, so the message is stable and repeats of it aggregate into one
// Event.
func (e *FitError) Error() string {
	parts := make([]string, 0, len(e.Reasons))
	for reason, n := range e.Reasons {
		parts = append(parts, fmt.Sprintf("%d %s", n, reason))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return fmt.Sprintf("0/%d nodes are available.", e.Nodes)
	}
	return fmt.Sprintf("0/%d nodes are available: %s.", e.Nodes, strings.Join(parts, ", "))
}

// candidate is a node that passed the filters, with its raw scores.
type candidate struct {
	node        *NodeInfo
	ownerPods   int
	preferTaint int
}

// Schedule picks the node for pod among nodes (those whose Node is nil are
// skipped): every filter must pass, then the highest weighted score wins,
// ties broken at random with rng. It returns a *FitError when no node fits.
// It reads nodes and pod and changes neither.
func Schedule(pod *PodInfo, nodes []*NodeInfo, rng *rand.Rand) (Decision, error) {
	var (
		reasons     []string
		refusals    map[string]int
		candidates  = make([]candidate, 0, len(nodes))
		considered  int
		mostOwner   int
		mostTainted int
	)
	for _, node := range nodes {
		if node.Node == nil {
			continue
		}
		considered++
		reasons = FilterNode(pod, node, reasons[:0])
		if len(reasons) > 0 {
			if refusals == nil {
				refusals = make(map[string]int)
			}
			for _, r := range reasons {
				refusals[r]++
			}
			continue
		}
		c := candidate{node: node, preferTaint: IntolerablePreferNoSchedule(pod, node)}
		if pod.Owner != "" {
			c.ownerPods = node.PodsOfOwner(pod.Owner)
		}
		mostOwner = max(mostOwner, c.ownerPods)
		mostTainted = max(mostTainted, c.preferTaint)
		candidates = append(candidates, c)
	}
	if len(candidates) == 0 {
		return Decision{}, &FitError{Pod: pod.Key, Nodes: considered, Reasons: refusals}
	}
	var (
		best  *NodeInfo
		score int64 = -1
		ties  int
	)
	for _, c := range candidates {
		total := WeightLeastAllocated*LeastAllocated(pod, c.node) +
			WeightOwnerSpread*OwnerSpread(c.ownerPods, mostOwner) +
			WeightPreferNoTaint*PreferNoTaint(c.preferTaint, mostTainted)
		switch {
		case total > score:
			best, score, ties = c.node, total, 1
		case total == score:
			// Reservoir sampling: each of the tied nodes ends up chosen with
			// equal probability, in one pass.
			ties++
			if rng.IntN(ties) == 0 {
				best = c.node
			}
		}
	}
	return Decision{Node: best.Name, Score: score, Feasible: len(candidates)}, nil
}
