package framework

import (
	"github.com/capstan-dev/capstan/internal/taints"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Reasons a node is refused, worded as kube-scheduler words them so that a
// FailedScheduling message reads the same ("0/3 nodes are available: 1
// node(s) didn't match node selector, 2 Insufficient cpu.").
const (
	ReasonNotReady           = "node(s) were not ready"
	ReasonUnschedulable      = "node(s) were unschedulable"
	ReasonNodeSelector       = "node(s) didn't match node selector"
	ReasonHostPorts          = "node(s) didn't have free ports for the requested pod ports"
	ReasonInsufficientCPU    = "Insufficient cpu"
	ReasonInsufficientMemory = "Insufficient memory"
	ReasonTooManyPods        = "Too many pods"
	// An untolerated taint reads "node(s) had untolerated taint {key: value}".
)

// Filter appends to reasons why pod cannot go on node and returns the
// result; reasons comes back unchanged when the node fits. Appending to the
// caller's slice keeps a decision free of per-node allocations.
type Filter func(pod *PodInfo, node *NodeInfo, reasons []string) []string

// Filters run in this order, and a node's first failing filter is the one
// reported (as kube-scheduler does): cheap, decisive checks first.
var Filters = []Filter{
	NodeReady,
	NodeSchedulable,
	NodeSelectorMatches,
	TaintsTolerated,
	HostPortsFree,
	ResourcesFit,
}

// NodeReady refuses a node whose Ready condition is not True.
func NodeReady(_ *PodInfo, node *NodeInfo, reasons []string) []string {
	if !node.Ready {
		return append(reasons, ReasonNotReady)
	}
	return reasons
}

// NodeSchedulable refuses a cordoned node (spec.unschedulable).
func NodeSchedulable(_ *PodInfo, node *NodeInfo, reasons []string) []string {
	if node.Node.GetSpec().GetUnschedulable() {
		return append(reasons, ReasonUnschedulable)
	}
	return reasons
}

// NodeSelectorMatches refuses a node that lacks one of the labels of the
// pod's node_selector.
func NodeSelectorMatches(pod *PodInfo, node *NodeInfo, reasons []string) []string {
	selector := pod.Pod.GetSpec().GetNodeSelector()
	if len(selector) == 0 {
		return reasons
	}
	labels := node.Node.GetMetadata().GetLabels()
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return append(reasons, ReasonNodeSelector)
		}
	}
	return reasons
}

// TaintsTolerated refuses a node with a NoSchedule or NoExecute taint the
// pod does not tolerate. PreferNoSchedule taints only lower the score.
func TaintsTolerated(pod *PodInfo, node *NodeInfo, reasons []string) []string {
	tolerations := pod.Pod.GetSpec().GetTolerations()
	for _, t := range node.taints {
		effect := t.taint.GetEffect()
		if effect != wellknown.TaintNoSchedule && effect != wellknown.TaintNoExecute {
			continue
		}
		if !taints.Tolerated(t.taint, tolerations) {
			return append(reasons, t.reason)
		}
	}
	return reasons
}

// HostPortsFree refuses a node where a placed pod already takes one of the
// pod's host ports (same port and protocol).
func HostPortsFree(pod *PodInfo, node *NodeInfo, reasons []string) []string {
	for _, p := range pod.HostPorts {
		if node.PortInUse(p) {
			return append(reasons, ReasonHostPorts)
		}
	}
	return reasons
}

// ResourcesFit refuses a node whose allocatable, less what the pods placed
// there request, is smaller than the pod's request, naming every resource
// that is short; and a node already at its pod cap.
func ResourcesFit(pod *PodInfo, node *NodeInfo, reasons []string) []string {
	if node.MaxPods > 0 && int64(node.NumPods())+1 > node.MaxPods {
		reasons = append(reasons, ReasonTooManyPods)
	}
	free := node.Allocatable.Sub(node.Requested)
	if pod.Requests.MilliCPU > 0 && pod.Requests.MilliCPU > free.MilliCPU {
		reasons = append(reasons, ReasonInsufficientCPU)
	}
	if pod.Requests.Memory > 0 && pod.Requests.Memory > free.Memory {
		reasons = append(reasons, ReasonInsufficientMemory)
	}
	return reasons
}

// FilterNode runs every filter on node until one refuses it, and returns
// reasons with that filter's reasons appended (unchanged if the node fits).
func FilterNode(pod *PodInfo, node *NodeInfo, reasons []string) []string {
	n := len(reasons)
	for _, f := range Filters {
		if reasons = f(pod, node, reasons); len(reasons) > n {
			return reasons
		}
	}
	return reasons
}
