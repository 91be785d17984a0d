// Package nodelifecycle is the NodeLifecycle controller: it notices node
// agents that stopped renewing their node lease, marks their Nodes
// Ready=Unknown with the NoExecute taint node.capstan.dev/unreachable, and
// after an eviction timeout deletes their pods so the pods' owners replace
// them on healthy nodes.
//
// # When a node is dead
//
// Each node agent holds the Lease capstan-node-lease/<node name> with a short
// TTL. etcd, not any clock, decides when a lease that is not renewed expires,
// and an expired lease is deleted: so a missing lease means the agent has
// been silent for at least its TTL. A node is dead when
//
//   - its lease is missing, and
//   - the controller has been running (leading) for at least StartupGrace,
//     and
//   - either this controller saw the lease and then saw it go, or it has
//     known the node for StartupGrace without ever seeing a lease.
//
// The startup grace exists because the informers of a new leader are fresh
// and the failover that made it leader may itself have cut agents off for a
// moment: each node gets StartupGrace to renew before anything is judged.
//
// A dead node gets Ready=Unknown (reason NodeStatusUnknown) and the taint.
// When its lease is back the taint is removed; Ready is left to the agent,
// which reports it itself.
//
// # Eviction
//
// A pod on a tainted dead node is deleted once the taint is older than
// PodEvictionTimeout, or, if the pod tolerates the taint with
// toleration_seconds, older than that many seconds; a pod tolerating it
// without toleration_seconds stays. If more than half of the nodes are dead
// at once (with one node: that node), nothing is evicted: that is a network
// or control-plane problem, and evicting would only move every pod onto the
// few nodes that happen to look alive. It is logged, and an event recorded on
// each dead node, once per episode.
//
// # Concurrency
//
// The controller is a reconcile.Loop of node names. Informer handlers
// enqueue names; the loop's resync, on the injected clock, takes stock and
// enqueues every node each MonitorPeriod, so time-driven steps (end of the
// grace, eviction deadlines) happen without any event. The queue hands a
// name to one worker at a time. What the controller remembers about nodes
// (when it first saw each node, whether it saw its lease) lives in a state
// guarded by a mutex; a Controller runs once (every leadership builds a new
// one), and its startup grace counts from when its caches have synced.
// Every Node write is conditional on the uid and resource_version it was
// decided on, every pod deletion on the uid and resource_version of the pod
// as listed (a replacement of the same name stays, a pod changed since is
// judged again), and all are made with Run's (fenced) context.
package nodelifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/utils/clock"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/events"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/reconcile"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Defaults of Options.
const (
	DefaultPodEvictionTimeout = 5 * time.Second
	DefaultStartupGrace       = 20 * time.Second
	DefaultMonitorPeriod      = time.Second
)

// Options are what the NodeLifecycle controller needs besides the client
// and the event recorder.
type Options struct {
	// Nodes is the shared Node informer.
	Nodes *informer.Typed[*capstanv1.Node]
	// Leases is the shared Lease informer; it must cache the namespace
	// capstan-node-lease (that namespace or resource.AllNamespaces). Leases
	// in other namespaces are ignored.
	Leases *informer.Typed[*capstanv1.Lease]
	// PodEvictionTimeout is how long a dead node's pods that do not
	// tolerate the unreachable taint stay after it was added. Default 10 s.
	PodEvictionTimeout time.Duration
	// StartupGrace is how long after Run starts nothing is marked or
	// evicted, and how long a node known without a lease may stay so.
	// Default 20 s.
	StartupGrace time.Duration
	// MonitorPeriod is how often every node is re-examined. Default 1 s.
	MonitorPeriod time.Duration
	// Loop: workers, logger, metrics, and the clock that measures every
	// wait above, stamps conditions and taints, and paces back-off.
	Loop reconcile.Options
}

// Controller is the NodeLifecycle controller. See the package doc.
type Controller struct {
	client   *client.Client
	recorder *events.Recorder
	nodes    *informer.Typed[*capstanv1.Node]
	leases   *informer.Typed[*capstanv1.Lease]
	opts     Options
	log      *slog.Logger
	clock    clock.WithTicker
	loop     *reconcile.Loop
	state    *state

	// syncing, if set (by tests, before Run), is called as a sync of node
	// starts; the function it returns is called with the sync's result.
	syncing func(node string) (done func(error))
}

// New returns a NodeLifecycle controller and registers its handlers on the
// informers. recorder may be nil (no events).
func New(c *client.Client, recorder *events.Recorder, opts Options) (*Controller, error) {
	switch {
	case c == nil:
		return nil, errors.New("nodelifecycle: client is nil")
	case opts.Nodes == nil:
		return nil, errors.New("nodelifecycle: Options.Nodes is nil")
	case opts.Leases == nil:
		return nil, errors.New("nodelifecycle: Options.Leases is nil")
	case opts.PodEvictionTimeout < 0:
		return nil, fmt.Errorf("nodelifecycle: Options.PodEvictionTimeout is %v: it must not be negative", opts.PodEvictionTimeout)
	case opts.StartupGrace < 0:
		return nil, fmt.Errorf("nodelifecycle: Options.StartupGrace is %v: it must not be negative", opts.StartupGrace)
	case opts.MonitorPeriod < 0:
		return nil, fmt.Errorf("nodelifecycle: Options.MonitorPeriod is %v: it must not be negative", opts.MonitorPeriod)
	}
	if opts.PodEvictionTimeout == 0 {
		opts.PodEvictionTimeout = DefaultPodEvictionTimeout
	}
	if opts.StartupGrace == 0 {
		opts.StartupGrace = DefaultStartupGrace
	}
	if opts.MonitorPeriod == 0 {
		opts.MonitorPeriod = DefaultMonitorPeriod
	}
	opts.Loop = opts.Loop.Complete()
	opts.Loop.Logger = opts.Loop.Logger.With("controller", loopName)
	ctrl := &Controller{
		client:   c,
		recorder: recorder,
		nodes:    opts.Nodes,
		leases:   opts.Leases,
		opts:     opts,
		log:      opts.Loop.Logger,
		clock:    opts.Loop.Clock,
		state:    newState(),
	}
	loop, err := reconcile.New(reconcile.Config{
		Name:         loopName,
		Sync:         ctrl.syncNode,
		WaitFor:      []*informer.Informer{opts.Nodes.Informer, opts.Leases.Informer},
		Prepare:      ctrl.begin,
		Resync:       ctrl.monitor,
		ResyncPeriod: opts.MonitorPeriod,
		Options:      opts.Loop,
	})
	if err != nil {
		return nil, err
	}
	ctrl.loop = loop
	ctrl.nodes.AddEventHandler(informer.TypedHandler[*capstanv1.Node]{
		OnAdd:    func(n *capstanv1.Node) { ctrl.enqueue(n.GetMetadata().GetName()) },
		OnUpdate: func(_, n *capstanv1.Node) { ctrl.enqueue(n.GetMetadata().GetName()) },
		OnDelete: func(n *capstanv1.Node) { ctrl.enqueue(n.GetMetadata().GetName()) },
	})
	ctrl.leases.AddEventHandler(informer.TypedHandler[*capstanv1.Lease]{
		OnAdd:    ctrl.leaseChanged,
		OnUpdate: func(_, l *capstanv1.Lease) { ctrl.leaseChanged(l) },
		OnDelete: func(l *capstanv1.Lease) {
			if isNodeLease(l) {
				ctrl.enqueue(l.GetMetadata().GetName())
			}
		},
	})
	return ctrl, nil
}

func isNodeLease(l *capstanv1.Lease) bool {
	return l.GetMetadata().GetNamespace() == wellknown.NodeLeaseNamespace
}

func (c *Controller) leaseChanged(l *capstanv1.Lease) {
	if !isNodeLease(l) {
		return
	}
	c.state.sawLease(l.GetMetadata().GetName(), c.clock.Now())
	c.loop.Add(l.GetMetadata().GetName())
}

func (c *Controller) enqueue(node string) { c.loop.Add(node) }

// loopName names the controller in logs and metrics.
const loopName = "node-lifecycle"

// Run watches over the nodes until ctx ends (or a write finds the lease
// lost), then returns nil once its workers have stopped. Every API call is
// made with ctx. The startup grace counts from when the caches have synced.
// It returns an error only for a second Run.
func (c *Controller) Run(ctx context.Context) error {
	c.log.Info("starting", "pod-eviction-timeout", c.opts.PodEvictionTimeout,
		"startup-grace", c.opts.StartupGrace, "monitor-period", c.opts.MonitorPeriod)
	return c.loop.Run(ctx)
}

// begin starts judging: the startup grace counts from now, and every node
// gets a first look.
func (c *Controller) begin(ctx context.Context) error {
	c.state.begin(c.clock.Now())
	c.monitor(ctx)
	return nil
}

// monitor takes stock of the whole cluster (logging when mass-eviction
// protection starts or ends) and queues every node for a look.
func (c *Controller) monitor(ctx context.Context) {
	now := c.clock.Now()
	dead, total := c.census(c.state, now)
	suppress := evictionSuppressed(dead, total)
	if c.state.setSuppressed(suppress) {
		if suppress {
			c.log.Warn("more than half of the nodes look dead at once: evicting nothing (a network or control-plane problem, not node failures)",
				"dead-nodes", len(dead), "nodes", total)
			for _, node := range dead {
				c.recorder.Eventf(ctx, node, wellknown.EventWarning, reasonEvictionSuppressed,
					"%d of %d nodes look dead at once: no pod is evicted until at least half are healthy", len(dead), total)
			}
		} else {
			c.log.Info("at most half of the nodes look dead: eviction resumes", "dead-nodes", len(dead), "nodes", total)
		}
	}
	for _, n := range c.nodes.List() {
		c.loop.Add(n.GetMetadata().GetName())
	}
}

// syncNode judges one node at the clock's current time.
func (c *Controller) syncNode(ctx context.Context, name string) error {
	var done func(error)
	if c.syncing != nil {
		done = c.syncing(name)
	}
	err := c.sync(ctx, c.state, name, c.clock.Now())
	if done != nil {
		done(err)
	}
	return err
}
