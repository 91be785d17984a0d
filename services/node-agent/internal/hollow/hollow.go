// Package hollow simulates nodes for scale tests (scheduler throughput,
// the node lifecycle controller, API load): Runtime runs nothing and reports
// every pod Running and Ready at once, and Nodes runs many node agents,
// each with its own hollow Runtime, in one process.
//
// Each hollow node is a real agent (package agent): it registers its Node,
// holds and renews its node lease, reports pod status and completes
// graceful deletions exactly as a real node does; only the processes are
// missing. The nodes share one API client and one pair of informers (every
// bound pod, every Node), whose events are fanned out to the agents by node
// name: a hollow node costs a lease loop, a Node status loop, an event loop
// and one pod and one status worker, not a watch of its own, so a process
// can simulate a thousand nodes. Every node publishes the same
// NodeAgentService endpoint; LogSource finds the node that runs a pod.
//
// Nodes.Run blocks until its context ends. Nodes and Runtime are safe for
// concurrent use.
package hollow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/services/node-agent/internal/agent"
	"github.com/capstan-dev/capstan/services/node-agent/internal/runtime"
)

// Config is everything Nodes needs.
type Config struct {
	// Client is shared by every node. Required.
	Client *client.Client
	// NamePrefix names the nodes <NamePrefix>-0 ... <NamePrefix>-<Count-1>.
	// Required.
	NamePrefix string
	// Count of nodes, at least 1.
	Count int
	// Address is every node's InternalIP. Required.
	Address string
	// AgentEndpoint is the NodeAgentService every node publishes (the
	// caller serves LogSource there); empty for none.
	AgentEndpoint string
	// Labels of every Node, besides capstan.dev/hollow=true and the
	// hostname label.
	Labels map[string]string
	// CPU, Memory and MaxPods are each node's capacity (see agent.Config).
	CPU     string
	Memory  string
	MaxPods int
	// LeaseDuration of each node lease; default agent.DefaultLeaseDuration.
	LeaseDuration time.Duration
	// Logger; each node's lines carry node=<name>, those of the shared
	// informers node=<NamePrefix>. Default: discard.
	Logger *slog.Logger
}

// Nodes are hollow nodes run together. See the package doc.
type Nodes struct {
	caches   *agent.Caches
	agents   []*agent.Agent
	runtimes map[string]*Runtime // by node name
}

// New validates cfg and builds the nodes; nothing happens until Run.
func New(cfg Config) (*Nodes, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("hollow: Config.Client is nil")
	case cfg.NamePrefix == "":
		return nil, errors.New("hollow: Config.NamePrefix is empty")
	case cfg.Count < 1:
		return nil, fmt.Errorf("hollow: Config.Count is %d: at least one node is needed", cfg.Count)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	caches, err := agent.NewCaches(cfg.Client, "", cfg.Logger.With("node", cfg.NamePrefix, "subsystem", "informer"))
	if err != nil {
		return nil, err
	}
	labels := maps.Clone(cfg.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[agent.LabelHollow] = "true"
	n := &Nodes{caches: caches, runtimes: map[string]*Runtime{}}
	for i := range cfg.Count {
		name := fmt.Sprintf("%s-%d", cfg.NamePrefix, i)
		rt := NewRuntime(nil)
		a, err := agent.New(agent.Config{
			NodeName:      name,
			Client:        cfg.Client,
			Runtime:       rt,
			RuntimeName:   RuntimeName,
			Address:       cfg.Address,
			AgentEndpoint: cfg.AgentEndpoint,
			Labels:        labels,
			CPU:           cfg.CPU,
			Memory:        cfg.Memory,
			MaxPods:       cfg.MaxPods,
			LeaseDuration: cfg.LeaseDuration,
			PodWorkers:    1,
			StatusWorkers: 1,
			Caches:        caches,
			Logger:        cfg.Logger.With("node", name),
		})
		if err != nil {
			return nil, fmt.Errorf("hollow: node %s: %w", name, err)
		}
		n.agents = append(n.agents, a)
		n.runtimes[name] = rt
	}
	return n, nil
}

// Agents are the nodes' agents, in name order.
func (n *Nodes) Agents() []*agent.Agent { return n.agents }

// Run runs the shared caches and every node until ctx ends, and returns
// once all have stopped (each releases its node lease).
func (n *Nodes) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { _ = n.caches.Run(ctx) })
	errs := make([]error, len(n.agents))
	for i, a := range n.agents {
		wg.Go(func() { errs[i] = a.Run(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// LogSource serves the logs of every hollow node's pods (all empty).
func (n *Nodes) LogSource() agent.LogSource { return logSource{n} }

type logSource struct{ n *Nodes }

func (s logSource) runtimeOf(uid string) *Runtime {
	for _, rt := range s.n.runtimes {
		if rt.PodStatus(uid) != nil {
			return rt
		}
	}
	return nil
}

func (s logSource) PodStatus(uid string) *runtime.PodStatus {
	if rt := s.runtimeOf(uid); rt != nil {
		return rt.PodStatus(uid)
	}
	return nil
}

func (s logSource) Logs(ctx context.Context, uid, container string, opts runtime.LogOptions, w io.Writer) error {
	rt := s.runtimeOf(uid)
	if rt == nil {
		return fmt.Errorf("hollow: pod %s runs on no hollow node", uid)
	}
	return rt.Logs(ctx, uid, container, opts, w)
}
