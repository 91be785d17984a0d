package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/resource"
)

// Index names of the pod informer.
const (
	podsByNode = "node-name"
	podsByUID  = "uid"
)

// Caches are the informers agents read: the pods bound to their nodes and
// their Node objects. One Caches serves one agent (NewCaches with its node
// name: the informers select that node's pods and Node on the server) or
// every agent of a process (NewCaches with no node name: one informer of
// every bound pod and one of every Node, whose events are fanned out to the
// attached agents by node name). The second form is what hollow mode uses,
// so that a thousand simulated nodes cost two watches rather than two
// thousand.
//
// Caches is safe for concurrent use. Its informers' handlers run on the
// informers' goroutines and only put keys into the attached agents' work
// queues.
type Caches struct {
	node  string // "" for a shared Caches
	pods  *informer.Typed[*capstanv1.Pod]
	nodes *informer.Typed[*capstanv1.Node]

	mu     sync.RWMutex
	agents map[string]*Agent // attached, by node name
}

// NewCaches returns the caches of the pods bound to node and of its Node
// or, when node is empty, of every bound pod and every Node, to share among
// several agents. Nothing is read until Run.
func NewCaches(c *client.Client, node string, logger *slog.Logger) (*Caches, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	podSelector, nodeSelector := "spec.node_name!=", ""
	if node != "" {
		podSelector, nodeSelector = "spec.node_name="+node, "metadata.name="+node
	}
	pods, err := informer.NewTyped[*capstanv1.Pod](c, informer.Options{
		Namespace:     resource.AllNamespaces,
		FieldSelector: podSelector,
		Logger:        logger,
	})
	if err != nil {
		return nil, fmt.Errorf("agent: pod informer: %w", err)
	}
	if err := pods.AddIndexer(podsByNode, func(p *capstanv1.Pod) []string {
		return []string{p.GetSpec().GetNodeName()}
	}); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := pods.AddIndexer(podsByUID, func(p *capstanv1.Pod) []string {
		return []string{p.GetMetadata().GetUid()}
	}); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	nodes, err := informer.NewTyped[*capstanv1.Node](c, informer.Options{FieldSelector: nodeSelector, Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("agent: node informer: %w", err)
	}
	caches := &Caches{node: node, pods: pods, nodes: nodes, agents: map[string]*Agent{}}
	podChanged := func(p *capstanv1.Pod) {
		if a := caches.agent(p.GetSpec().GetNodeName()); a != nil {
			a.enqueuePod(p.GetMetadata().GetUid())
		}
	}
	pods.AddEventHandler(informer.TypedHandler[*capstanv1.Pod]{
		OnAdd:    podChanged,
		OnUpdate: func(_, p *capstanv1.Pod) { podChanged(p) },
		OnDelete: podChanged,
	})
	nodeChanged := func(n *capstanv1.Node) {
		if a := caches.agent(n.GetMetadata().GetName()); a != nil {
			a.pokeNodeStatus(false)
		}
	}
	nodes.AddEventHandler(informer.TypedHandler[*capstanv1.Node]{
		OnAdd:    nodeChanged,
		OnUpdate: func(_, n *capstanv1.Node) { nodeChanged(n) },
		OnDelete: nodeChanged,
	})
	return caches, nil
}

// Run fills the caches and keeps them current until ctx ends; it returns
// once the informers have stopped.
func (c *Caches) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { _ = c.nodes.Run(ctx) })
	err := c.pods.Run(ctx)
	wg.Wait()
	return err
}

// PodsSynced reports whether the pod informer has listed successfully at
// least once. Only then does a pod missing from it mean that the API does
// not have it.
func (c *Caches) PodsSynced() bool { return c.pods.HasSynced() }

func (c *Caches) agent(node string) *Agent {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.agents[node]
}

// attach routes the events of a's node to a, and queues the pods already
// cached for it.
func (c *Caches) attach(a *Agent) error {
	name := a.cfg.NodeName
	if c.node != "" && c.node != name {
		return fmt.Errorf("agent: the caches of node %s cannot serve node %s", c.node, name)
	}
	c.mu.Lock()
	if _, taken := c.agents[name]; taken {
		c.mu.Unlock()
		return fmt.Errorf("agent: node %s is already attached to these caches", name)
	}
	c.agents[name] = a
	c.mu.Unlock()
	for _, p := range c.podsOf(name) {
		a.enqueuePod(p.GetMetadata().GetUid())
	}
	return nil
}

func (c *Caches) detach(a *Agent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.agents[a.cfg.NodeName] == a {
		delete(c.agents, a.cfg.NodeName)
	}
}

// podsOf lists the cached pods bound to node. Shared: never modify one.
func (c *Caches) podsOf(node string) []*capstanv1.Pod {
	return c.pods.ByIndex(podsByNode, node)
}

// pod returns the cached pod with uid if it is bound to node. Shared.
func (c *Caches) pod(node, uid string) (*capstanv1.Pod, bool) {
	for _, p := range c.pods.ByIndex(podsByUID, uid) {
		if p.GetSpec().GetNodeName() == node {
			return p, true
		}
	}
	return nil, false
}

// nodeObject returns the cached Node named name. Shared.
func (c *Caches) nodeObject(name string) (*capstanv1.Node, bool) {
	return c.nodes.Get("", name)
}
