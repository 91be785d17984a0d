// Package framework decides where one pod goes. It holds the scheduler's view
// of a node (NodeInfo: the node and the pods placed on it, their requests
// summed), the filters a node must pass, the scores that rank the nodes that
// pass, and Schedule, which runs them all.
//
// Everything here is a pure function of its arguments: no I/O, no clock, no
// globals. Deciding for one pod costs O(nodes): the sums a filter or a score
// needs are kept up to date in NodeInfo as pods are added and removed, never
// recomputed per decision.
//
// # Concurrency
//
// PodInfo is immutable once built. A NodeInfo is not safe for concurrent
// use: its owner (package cache) guards it. Schedule only reads the NodeInfos
// it is given, so decisions may run concurrently over nodes nobody changes.
package framework

import (
	"errors"
	"fmt"
	"strings"

	k8sresource "k8s.io/apimachinery/pkg/api/resource"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Resource names the scheduler accounts for.
const (
	ResourceCPU    = "cpu"
	ResourceMemory = "memory"
	// ResourcePods, in a node's allocatable, caps how many pods it runs;
	// a node that does not declare it has no cap.
	ResourcePods = "pods"
)

// Resources are the amounts the scheduler accounts for.
type Resources struct {
	// MilliCPU is CPU in thousandths of a core ("100m" is 100, "2" is 2000).
	MilliCPU int64
	// Memory in bytes.
	Memory int64
}

// Add returns r + o.
func (r Resources) Add(o Resources) Resources {
	return Resources{MilliCPU: r.MilliCPU + o.MilliCPU, Memory: r.Memory + o.Memory}
}

// Sub returns r - o.
func (r Resources) Sub(o Resources) Resources {
	return Resources{MilliCPU: r.MilliCPU - o.MilliCPU, Memory: r.Memory - o.Memory}
}

// HostPort is a port a pod takes on its node.
type HostPort struct {
	// Protocol, "TCP" or "UDP".
	Protocol string
	// Port number on the node.
	Port int32
}

// PodInfo is a pod with what the scheduler needs of it parsed once.
type PodInfo struct {
	// Pod is the pod itself; shared with the informer cache, never modified.
	Pod *capstanv1.Pod
	// Key is "namespace/name".
	Key string
	// Requests are the sums of the containers' requests; a container that
	// declares none counts 0.
	Requests Resources
	// HostPorts the pod takes on its node.
	HostPorts []HostPort
	// Owner identifies the pod's controller owner (its uid, or kind/name if
	// the reference has no uid); empty if it has none. Pods of one owner are
	// spread across nodes.
	Owner string
}

// NewPodInfo parses pod. A request that is not a valid quantity (the API
// server's validation rejects those, so only a hand-made object has one)
// counts 0 and is reported in the error; the PodInfo is usable either way.
func NewPodInfo(pod *capstanv1.Pod) (*PodInfo, error) {
	meta := pod.GetMetadata()
	namespace := meta.GetNamespace()
	if namespace == "" {
		namespace = "default"
	}
	info := &PodInfo{Pod: pod, Key: namespace + "/" + meta.GetName()}
	var errs []error
	for i, c := range pod.GetSpec().GetContainers() {
		for name, value := range c.GetResources().GetRequests() {
			if name != ResourceCPU && name != ResourceMemory {
				continue
			}
			q, err := k8sresource.ParseQuantity(value)
			if err != nil {
				errs = append(errs, fmt.Errorf("pod %s: spec.containers[%d].resources.requests[%s]: %w", info.Key, i, name, err))
				continue
			}
			if name == ResourceCPU {
				info.Requests.MilliCPU += q.MilliValue()
			} else {
				info.Requests.Memory += q.Value()
			}
		}
		for _, p := range c.GetPorts() {
			if p.GetHostPort() == 0 {
				continue
			}
			info.HostPorts = append(info.HostPorts, HostPort{Protocol: protocol(p.GetProtocol()), Port: p.GetHostPort()})
		}
	}
	for _, ref := range meta.GetOwnerReferences() {
		if !ref.GetController() {
			continue
		}
		if ref.GetUid() != "" {
			info.Owner = ref.GetUid()
		} else {
			info.Owner = ref.GetKind() + "/" + ref.GetName()
		}
		break
	}
	return info, errors.Join(errs...)
}

func protocol(p string) string {
	if p == "" {
		return "TCP"
	}
	return strings.ToUpper(p)
}

// taintInfo is a taint with the reason a pod that does not tolerate it is
// refused, formatted once when the node is set rather than per decision.
type taintInfo struct {
	taint  *capstanv1.Taint
	reason string
}

// NodeInfo is a node and the pods placed on it: bound ones the watch
// reported and ones this scheduler assumed. It exists before its Node does
// when the watch reports a pod on a node it has not reported yet.
type NodeInfo struct {
	// Name of the node.
	Name string
	// Node is nil while only pods bound to it are known.
	Node *capstanv1.Node
	// Ready: the node's Ready condition is True.
	Ready bool
	// Allocatable resources of the node; missing ones are 0.
	Allocatable Resources
	// MaxPods is the node's allocatable "pods"; 0 means no cap.
	MaxPods int64
	// Requested is the sum of the requests of the pods placed here.
	Requested Resources

	taints     []taintInfo
	pods       map[string]*PodInfo
	usedPorts  map[HostPort]int
	ownerCount map[string]int
}

// NewNodeInfo returns an empty NodeInfo for the node named name.
func NewNodeInfo(name string) *NodeInfo {
	return &NodeInfo{
		Name:       name,
		pods:       make(map[string]*PodInfo),
		usedPorts:  make(map[HostPort]int),
		ownerCount: make(map[string]int),
	}
}

// SetNode records node (nil: the node is gone, its pods are kept). An
// allocatable quantity that does not parse counts 0 and is reported in the
// error; the node is set either way.
func (n *NodeInfo) SetNode(node *capstanv1.Node) error {
	n.Node = node
	n.Ready = false
	n.Allocatable = Resources{}
	n.MaxPods = 0
	n.taints = n.taints[:0]
	if node == nil {
		return nil
	}
	for _, c := range node.GetStatus().GetConditions() {
		if c.GetType() == wellknown.NodeReady {
			n.Ready = c.GetStatus() == wellknown.ConditionTrue
		}
	}
	var errs []error
	for name, value := range node.GetStatus().GetAllocatable() {
		if name != ResourceCPU && name != ResourceMemory && name != ResourcePods {
			continue
		}
		q, err := k8sresource.ParseQuantity(value)
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s: status.allocatable[%s]: %w", n.Name, name, err))
			continue
		}
		switch name {
		case ResourceCPU:
			n.Allocatable.MilliCPU = q.MilliValue()
		case ResourceMemory:
			n.Allocatable.Memory = q.Value()
		case ResourcePods:
			n.MaxPods = q.Value()
		}
	}
	for _, t := range node.GetSpec().GetTaints() {
		n.taints = append(n.taints, taintInfo{
			taint:  t,
			reason: fmt.Sprintf("node(s) had untolerated taint {%s: %s}", t.GetKey(), t.GetValue()),
		})
	}
	return errors.Join(errs...)
}

// AddPod places pod here. A pod already placed under the same key is
// replaced.
func (n *NodeInfo) AddPod(pod *PodInfo) {
	n.RemovePod(pod.Key)
	n.pods[pod.Key] = pod
	n.Requested = n.Requested.Add(pod.Requests)
	for _, p := range pod.HostPorts {
		n.usedPorts[p]++
	}
	if pod.Owner != "" {
		n.ownerCount[pod.Owner]++
	}
}

// RemovePod takes the pod with key off this node and returns it; false if it
// was not here.
func (n *NodeInfo) RemovePod(key string) (*PodInfo, bool) {
	pod, ok := n.pods[key]
	if !ok {
		return nil, false
	}
	delete(n.pods, key)
	n.Requested = n.Requested.Sub(pod.Requests)
	for _, p := range pod.HostPorts {
		if n.usedPorts[p]--; n.usedPorts[p] <= 0 {
			delete(n.usedPorts, p)
		}
	}
	if pod.Owner != "" {
		if n.ownerCount[pod.Owner]--; n.ownerCount[pod.Owner] <= 0 {
			delete(n.ownerCount, pod.Owner)
		}
	}
	return pod, true
}

// NumPods is how many pods are placed here.
func (n *NodeInfo) NumPods() int { return len(n.pods) }

// HasPod reports whether the pod with key is placed here.
func (n *NodeInfo) HasPod(key string) bool {
	_, ok := n.pods[key]
	return ok
}

// PodsOfOwner is how many pods of owner are placed here.
func (n *NodeInfo) PodsOfOwner(owner string) int { return n.ownerCount[owner] }

// PortInUse reports whether a pod placed here takes p.
func (n *NodeInfo) PortInUse(p HostPort) bool { return n.usedPorts[p] > 0 }
