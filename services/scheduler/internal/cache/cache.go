// Package cache is the scheduler's picture of the cluster: a NodeInfo per
// node holding the pods bound to it (as the watch reports them) and the pods
// this scheduler has assumed there.
//
// Assuming is what lets the scheduler decide for the next pod before the
// watch confirms the last bind: once a bind is sent, the pod counts as placed
// on its node. The assumption ends when the watch shows the pod bound (it is
// confirmed, or moved to the node someone else bound it to), when the bind
// fails (Forget), or, as a safety net, when the watch never confirms it within
// the TTL after the bind returned (Expire).
//
// # Concurrency
//
// A Cache is safe for concurrent use. Place runs its decide function under
// the cache's lock, so a decision and the assumption of its result are one
// step that no watch update can split.
package cache

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/services/scheduler/internal/framework"
)

// DefaultAssumeTTL is how long an assumed pod whose bind succeeded waits for
// the watch to confirm it.
const DefaultAssumeTTL = 30 * time.Second

// podState is where the cache has placed a pod.
type podState struct {
	info *framework.PodInfo
	node string
	// assumed: placed by this scheduler's decision, not yet seen bound.
	assumed bool
	// bound: the bind call returned success; deadline then runs.
	bound    bool
	deadline time.Time
}

// Cache holds the nodes and the pods placed on them. See the package doc.
type Cache struct {
	clock clock.PassiveClock
	ttl   time.Duration

	mu    sync.Mutex
	nodes map[string]*framework.NodeInfo
	// ready is the NodeInfos whose Node is known, sorted by name; rebuilt
	// only when that set changes, so a decision does not pay for it.
	ready      []*framework.NodeInfo
	readyStale bool
	pods       map[string]*podState
}

// New returns an empty Cache; assumed pods expire ttl after their bind
// returned (DefaultAssumeTTL if ttl is 0), by clk (the real clock if nil).
func New(clk clock.PassiveClock, ttl time.Duration) *Cache {
	if clk == nil {
		clk = clock.RealClock{}
	}
	if ttl <= 0 {
		ttl = DefaultAssumeTTL
	}
	return &Cache{
		clock: clk,
		ttl:   ttl,
		nodes: make(map[string]*framework.NodeInfo),
		pods:  make(map[string]*podState),
	}
}

// SetNode adds or updates node. An allocatable quantity that does not parse
// counts 0 and is returned as the error; the node is set either way.
func (c *Cache) SetNode(node *capstanv1.Node) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	name := node.GetMetadata().GetName()
	n, ok := c.nodes[name]
	if !ok {
		n = framework.NewNodeInfo(name)
		c.nodes[name] = n
	}
	if n.Node == nil {
		c.readyStale = true
	}
	return n.SetNode(node)
}

// RemoveNode forgets the node named name. Pods still bound to it keep their
// place (a node deleted and re-created keeps its accounting) until the watch
// reports them gone.
func (c *Cache) RemoveNode(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.nodes[name]
	if !ok {
		return
	}
	_ = n.SetNode(nil)
	c.readyStale = true
	if n.NumPods() == 0 {
		delete(c.nodes, name)
	}
}

// SetPod records pod as bound to node (the watch shows it there and it is
// not terminal). An assumption on the same node is confirmed; one on another
// node is moved, and SetPod then returns true: that node got room back.
func (c *Cache) SetPod(pod *framework.PodInfo, node string) (freed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.pods[pod.Key]; ok && old.node != node {
		c.removeLocked(pod.Key)
		freed = true
	}
	c.placeLocked(pod, node)
	c.pods[pod.Key] = &podState{info: pod, node: node}
	return freed
}

// RemovePod forgets the pod with key, bound or assumed: it was deleted or
// has finished. It reports whether the pod was placed anywhere (a node got
// room back).
func (c *Cache) RemovePod(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.removeLocked(key)
}

// Place decides where pod goes and assumes it there in one step: decide runs
// under the cache's lock with the nodes whose Node is known (it must not keep
// the slice or change the NodeInfos) and returns a node name or an error;
// Place returns what decide returned. A pod already placed is refused.
func (c *Cache) Place(pod *framework.PodInfo, decide func(nodes []*framework.NodeInfo) (string, error)) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.pods[pod.Key]; ok {
		return "", fmt.Errorf("cache: pod %s is already placed on node %s", pod.Key, s.node)
	}
	if c.readyStale {
		c.ready = c.ready[:0]
		for _, n := range c.nodes {
			if n.Node != nil {
				c.ready = append(c.ready, n)
			}
		}
		slices.SortFunc(c.ready, func(a, b *framework.NodeInfo) int { return strings.Compare(a.Name, b.Name) })
		c.readyStale = false
	}
	node, err := decide(c.ready)
	if err != nil {
		return "", err
	}
	c.assumeLocked(pod, node)
	return node, nil
}

// Assume places pod on node as this scheduler's decision, before the bind
// is sent. Place does this itself; Assume is for a decision made elsewhere.
func (c *Cache) Assume(pod *framework.PodInfo, node string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.pods[pod.Key]; ok {
		return fmt.Errorf("cache: pod %s is already placed on node %s", pod.Key, s.node)
	}
	c.assumeLocked(pod, node)
	return nil
}

// FinishBinding starts the TTL of the assumed pod with key: its bind
// succeeded, and the watch should confirm it soon. A pod the watch has
// already confirmed is left alone.
func (c *Cache) FinishBinding(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.pods[key]; ok && s.assumed {
		s.bound = true
		s.deadline = c.clock.Now().Add(c.ttl)
	}
}

// Forget drops the assumption for the pod with key: its bind failed. A pod
// the watch has meanwhile shown bound (to any node) is left alone. It reports
// whether an assumption was dropped (a node got room back).
func (c *Cache) Forget(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.pods[key]; ok && s.assumed {
		return c.removeLocked(key)
	}
	return false
}

// IsAssumed reports whether the pod with key is placed by this scheduler's
// decision and not yet confirmed by the watch.
func (c *Cache) IsAssumed(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.pods[key]
	return ok && s.assumed
}

// Expire drops the assumed pods whose bind returned more than the TTL ago
// without the watch confirming them, and returns their keys.
func (c *Cache) Expire() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock.Now()
	var expired []string
	for key, s := range c.pods {
		if s.assumed && s.bound && now.After(s.deadline) {
			c.removeLocked(key)
			expired = append(expired, key)
		}
	}
	return expired
}

// NodeUsage is what the cache counts on one node.
type NodeUsage struct {
	Requested framework.Resources
	Pods      int
	Assumed   int
}

// Usage returns what is counted on the node named name.
func (c *Cache) Usage(name string) NodeUsage {
	c.mu.Lock()
	defer c.mu.Unlock()
	var u NodeUsage
	if n, ok := c.nodes[name]; ok {
		u.Requested, u.Pods = n.Requested, n.NumPods()
	}
	for _, s := range c.pods {
		if s.node == name && s.assumed {
			u.Assumed++
		}
	}
	return u
}

func (c *Cache) assumeLocked(pod *framework.PodInfo, node string) {
	c.placeLocked(pod, node)
	c.pods[pod.Key] = &podState{info: pod, node: node, assumed: true}
}

func (c *Cache) placeLocked(pod *framework.PodInfo, node string) {
	n, ok := c.nodes[node]
	if !ok {
		n = framework.NewNodeInfo(node)
		c.nodes[node] = n
	}
	n.AddPod(pod)
}

func (c *Cache) removeLocked(key string) bool {
	s, ok := c.pods[key]
	if !ok {
		return false
	}
	delete(c.pods, key)
	n, ok := c.nodes[s.node]
	if !ok {
		return true
	}
	n.RemovePod(key)
	if n.Node == nil && n.NumPods() == 0 {
		delete(c.nodes, s.node)
	}
	return true
}
