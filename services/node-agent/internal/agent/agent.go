// Package agent is the node agent's logic: it registers its Node, holds the
// node lease (the heartbeat the NodeLifecycle controller reads), runs the
// pods bound to the node through a runtime.Runtime, reports their status,
// completes their graceful deletion, and serves their logs
// (NodeAgentService, see NewNodeAgentServer).
//
// # Pods outlive the control plane
//
// The agent works from its pod cache (an informer of the pods bound to its
// node), which keeps its last state when every API server is gone. Pods are
// never stopped because the API cannot be reached: a pod is stopped only
// when the API said so — it carries a delete_time, or the pod informer has
// completed a list (HasSynced) and does not hold it. Status that cannot be
// sent is not queued up: the runtime keeps the latest state, and a status
// write composes it afresh when it is tried again, so the last word reaches
// the API once it is back. Before the first list (an agent started while the
// API is away) the agent runs the pods of its own checkpoint: each pod it
// has seen is written to Config.CheckpointDir, so a restarted agent knows
// what the pods its runtime adopted should be running.
//
// Stopping the agent (cancelling Run) stops nothing else: the pods keep
// running, and the next agent adopts them through the runtime.
//
// # Writes
//
// The node lease is the heartbeat (renewed every LeaseDuration/3, a failed
// renewal retried after LeaseDuration/30), with a session on one API
// replica that releases it at once if the agent dies (runLease). The Node
// status is written when it differs from the cached Node (ignoring condition
// times), after every (re)acquisition of the lease — the controller may have
// marked the node Ready=Unknown meanwhile — and otherwise once per
// NodeStatusRefreshPeriod. Pod status is written only when it differs from
// the cached pod's status or from the last status written, whichever is
// newer.
//
// Every write to a Node or pod is conditional on the uid and
// resource_version of the version it was composed from, so a write that
// arrives late (a request that sat in a frozen API replica) or was composed
// from a cache that is behind never overwrites newer state: the API answers
// ABORTED, and the write is composed again over the newer version (read
// from the API for the Node status, from the cache once it has caught up
// for pods).
//
// # Concurrency
//
// Run starts: one goroutine for the lease, one for the Node status, one that
// turns runtime changes and the first list into work, two reconcile.Loops
// of pod uids — "pod-sync" with PodWorkers workers and a resync every
// PodResyncPeriod, "pod-status" with StatusWorkers workers for pods whose
// status may have changed (a loop never hands one uid to two workers) — and
// one goroutine per pod being stopped (KillPod waits out the grace period). The per-pod records are guarded by one mutex, never held
// across a call to the API or the runtime. An Agent runs once.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"sync"
	"sync/atomic"
	"time"

	k8sresource "k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/reconcile"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/validation"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/node-agent/internal/runtime"
)

// Defaults of Config.
const (
	DefaultLeaseDuration           = 6 * time.Second
	DefaultMaxPods                 = 110
	DefaultPodResyncPeriod         = 10 * time.Second
	DefaultNodeStatusCheckPeriod   = 10 * time.Second
	DefaultNodeStatusRefreshPeriod = time.Minute
	DefaultPodWorkers              = 2
	DefaultStatusWorkers           = 2
	// DefaultGracePeriod stops a pod that the API no longer has and whose
	// own grace period the agent never learned (the API server's default).
	DefaultGracePeriod = 30 * time.Second
)

// minLeaseDuration is the shortest TTL the API grants (etcd's minimum).
const minLeaseDuration = 2 * time.Second

// Back-off of work that failed (pod syncs, status writes, registration).
const (
	retryFirstDelay = 200 * time.Millisecond
	retryMaxDelay   = 5 * time.Second
)

// LabelHollow marks the Nodes of hollow (simulated) nodes.
const LabelHollow = "capstan.dev/hollow"

var (
	podKind  = resource.MustLookup("Pod")
	nodeKind = resource.MustLookup("Node")
)

// Config is everything an Agent needs.
type Config struct {
	// NodeName names the Node, its lease, and the pods' spec.node_name.
	// Required.
	NodeName string
	// Client talks to the API servers. Required.
	Client *client.Client
	// Runtime runs the pods. Required. The agent never closes it.
	Runtime runtime.Runtime
	// RuntimeName is reported in node_info.runtime ("process", "hollow").
	// Required.
	RuntimeName string
	// Address is the node's InternalIP and the host_ip and pod_ip of its
	// pods (they share the node's network). Required.
	Address string
	// AgentEndpoint is where the NodeAgentService is reachable, host:port
	// (Node.status.agent_endpoint, which the API server calls for logs).
	// Empty: none published.
	AgentEndpoint string
	// Labels of the Node, besides capstan.dev/hostname=<NodeName>, which
	// is always set. Labels others put on the Node are kept.
	Labels map[string]string
	// CPU and Memory are the node's capacity and allocatable, as
	// quantities ("2", "500m"; "8Gi"). Required.
	CPU    string
	Memory string
	// MaxPods is the pods capacity; default DefaultMaxPods.
	MaxPods int
	// LeaseDuration is the node lease's TTL: whole seconds, at least 2 s;
	// default DefaultLeaseDuration. It is renewed every third of it.
	LeaseDuration time.Duration
	// PodResyncPeriod: every pod is synced (and its status checked) this
	// often even without a change; default DefaultPodResyncPeriod.
	PodResyncPeriod time.Duration
	// NodeStatusCheckPeriod: the Node status is compared with the cached
	// Node this often; default DefaultNodeStatusCheckPeriod.
	NodeStatusCheckPeriod time.Duration
	// NodeStatusRefreshPeriod: the Node status is written at least this
	// often (a heartbeat for people; the lease is the machines' one);
	// default DefaultNodeStatusRefreshPeriod.
	NodeStatusRefreshPeriod time.Duration
	// PodWorkers and StatusWorkers are the goroutines syncing pods and
	// writing pod status; defaults DefaultPodWorkers, DefaultStatusWorkers.
	PodWorkers    int
	StatusWorkers int
	// CheckpointDir, if set, keeps a copy of every pod the agent manages,
	// so that an agent restarted while the API is away can keep them
	// running. Empty: none (hollow nodes).
	CheckpointDir string
	// Caches, if set, are shared caches (NewCaches with no node) that the
	// caller runs; the agent attaches to them. Nil: the agent makes and
	// runs caches of its own node.
	Caches *Caches
	// Logger; it should carry the component and node. Default: discard.
	Logger *slog.Logger
	// Clock paces the periods above; default the real clock.
	Clock clock.WithTicker
}

// Agent is one node's agent. See the package doc.
type Agent struct {
	cfg       Config
	log       *slog.Logger
	client    *client.Client
	rt        runtime.Runtime
	clock     clock.WithTicker
	caches    *Caches
	ownCaches bool
	store     *checkpointStore // nil without a CheckpointDir

	started    atomic.Bool
	registered chan struct{} // closed once the Node is registered

	// podLoop syncs pods with the runtime; statusLoop writes their status.
	// Both are keyed by pod uid.
	podLoop    *reconcile.Loop
	statusLoop *reconcile.Loop

	// nodeStatusPoke asks the node status loop to look now; forceNodeStatus
	// makes that look write even an unchanged status.
	nodeStatusPoke  chan struct{}
	forceNodeStatus atomic.Bool

	kills sync.WaitGroup // KillPod goroutines

	// holder is the node lease's holder identity: the node name and this
	// process's nonce. Set and read by the lease goroutine only.
	holder string

	mu   sync.Mutex
	pods map[string]*podRecord // by uid
}

// New validates cfg, fills its defaults, and returns an Agent; nothing
// happens until Run.
func New(cfg Config) (*Agent, error) {
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:            cfg,
		log:            cfg.Logger,
		client:         cfg.Client,
		rt:             cfg.Runtime,
		clock:          cfg.Clock,
		caches:         cfg.Caches,
		registered:     make(chan struct{}),
		nodeStatusPoke: make(chan struct{}, 1),
		pods:           map[string]*podRecord{},
	}
	if a.caches == nil {
		caches, err := NewCaches(cfg.Client, cfg.NodeName, cfg.Logger.With("subsystem", "informer"))
		if err != nil {
			return nil, err
		}
		a.caches, a.ownCaches = caches, true
	}
	var err error
	a.podLoop, err = reconcile.New(reconcile.Config{
		Name:         "pod-sync",
		Sync:         a.syncPod,
		Resync:       func(context.Context) { a.enqueueAll() },
		ResyncPeriod: cfg.PodResyncPeriod,
		RateLimiter:  retryLimiter(),
		Options:      reconcile.Options{Workers: cfg.PodWorkers, Logger: cfg.Logger.With("loop", "pod-sync"), Clock: cfg.Clock},
	})
	if err != nil {
		return nil, err
	}
	a.statusLoop, err = reconcile.New(reconcile.Config{
		Name:        "pod-status",
		Sync:        a.writeStatus,
		RateLimiter: retryLimiter(),
		Options:     reconcile.Options{Workers: cfg.StatusWorkers, Logger: cfg.Logger.With("loop", "pod-status"), Clock: cfg.Clock},
	})
	if err != nil {
		return nil, err
	}
	if cfg.CheckpointDir != "" {
		store, err := newCheckpointStore(cfg.CheckpointDir)
		if err != nil {
			return nil, err
		}
		a.store = store
	}
	return a, nil
}

func (cfg *Config) complete() error {
	switch {
	case cfg.Client == nil:
		return errors.New("agent: Config.Client is nil")
	case cfg.Runtime == nil:
		return errors.New("agent: Config.Runtime is nil")
	case cfg.RuntimeName == "":
		return errors.New("agent: Config.RuntimeName is empty")
	case cfg.Address == "":
		return errors.New("agent: Config.Address is empty")
	}
	if err := validation.Name(nodeKind, "node name", cfg.NodeName); err != nil {
		return fmt.Errorf("agent: node name %q: %w", cfg.NodeName, err)
	}
	if cfg.AgentEndpoint != "" {
		if _, _, err := net.SplitHostPort(cfg.AgentEndpoint); err != nil {
			return fmt.Errorf("agent: Config.AgentEndpoint %q: must be host:port", cfg.AgentEndpoint)
		}
	}
	for what, q := range map[string]string{"CPU": cfg.CPU, "Memory": cfg.Memory} {
		parsed, err := k8sresource.ParseQuantity(q)
		if err != nil || parsed.Sign() <= 0 {
			return fmt.Errorf("agent: Config.%s %q: must be a positive quantity", what, q)
		}
	}
	if cfg.MaxPods == 0 {
		cfg.MaxPods = DefaultMaxPods
	}
	if cfg.MaxPods < 0 {
		return fmt.Errorf("agent: Config.MaxPods is %d: it must be positive", cfg.MaxPods)
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = DefaultLeaseDuration
	}
	if cfg.LeaseDuration < minLeaseDuration || cfg.LeaseDuration%time.Second != 0 {
		return fmt.Errorf("agent: Config.LeaseDuration must be whole seconds and at least %v, not %v", minLeaseDuration, cfg.LeaseDuration)
	}
	for _, d := range []struct {
		p    *time.Duration
		def  time.Duration
		name string
	}{
		{&cfg.PodResyncPeriod, DefaultPodResyncPeriod, "PodResyncPeriod"},
		{&cfg.NodeStatusCheckPeriod, DefaultNodeStatusCheckPeriod, "NodeStatusCheckPeriod"},
		{&cfg.NodeStatusRefreshPeriod, DefaultNodeStatusRefreshPeriod, "NodeStatusRefreshPeriod"},
	} {
		if *d.p == 0 {
			*d.p = d.def
		}
		if *d.p < 0 {
			return fmt.Errorf("agent: Config.%s is %v: it must be positive", d.name, *d.p)
		}
	}
	if cfg.PodWorkers == 0 {
		cfg.PodWorkers = DefaultPodWorkers
	}
	if cfg.StatusWorkers == 0 {
		cfg.StatusWorkers = DefaultStatusWorkers
	}
	if cfg.PodWorkers < 0 || cfg.StatusWorkers < 0 {
		return errors.New("agent: Config.PodWorkers and StatusWorkers must be positive")
	}
	labels := maps.Clone(cfg.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[wellknown.LabelHostname] = cfg.NodeName
	cfg.Labels = labels
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return nil
}

// NodeName is the name of the agent's node.
func (a *Agent) NodeName() string { return a.cfg.NodeName }

// Registered is closed once the agent has registered its Node (created or
// updated it and written its status) for the first time.
func (a *Agent) Registered() <-chan struct{} { return a.registered }

// Run runs the agent until ctx ends: registration, node lease, pod sync and
// status. When ctx ends it stops syncing, releases the node lease, and
// returns nil once its goroutines have ended. It leaves the pods running and
// the runtime open. It returns an error only if it cannot start.
func (a *Agent) Run(ctx context.Context) error {
	if !a.started.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}
	if a.store != nil {
		a.loadCheckpoints()
	}
	if err := a.caches.attach(a); err != nil {
		return err
	}
	a.log.Info("starting", "runtime", a.cfg.RuntimeName, "address", a.cfg.Address,
		"agent-endpoint", a.cfg.AgentEndpoint, "lease-duration", a.cfg.LeaseDuration, "adopted-pods", len(a.rt.Pods()))
	a.enqueueAll()

	workCtx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	var work sync.WaitGroup
	if a.ownCaches {
		work.Go(func() { _ = a.caches.Run(workCtx) })
	}
	work.Go(func() { a.runNodeStatus(workCtx) })
	work.Go(func() { a.runEvents(workCtx) })
	work.Go(func() { _ = a.podLoop.Run(workCtx) })    // nil, or a second Run (refused above)
	work.Go(func() { _ = a.statusLoop.Run(workCtx) }) // likewise
	// The lease outlives the pod work by a moment, so that it is released
	// last, by a node that has stopped acting.
	leaseCtx, stopLease := context.WithCancel(context.WithoutCancel(ctx))
	leaseDone := make(chan struct{})
	go func() {
		defer close(leaseDone)
		a.runLease(leaseCtx)
	}()

	<-ctx.Done()
	a.log.Info("stopping: the pods keep running")
	a.caches.detach(a)
	stopWork() // the loops drain their queues without acting
	work.Wait()
	a.kills.Wait()
	stopLease()
	<-leaseDone
	a.log.Info("stopped")
	return nil
}

// enqueuePod asks a pod worker to sync the pod with uid.
func (a *Agent) enqueuePod(uid string) {
	if uid != "" {
		a.podLoop.Add(uid)
	}
}

// enqueueAll queues every pod the agent knows of: cached, remembered and
// run by the runtime.
func (a *Agent) enqueueAll() {
	for _, p := range a.caches.podsOf(a.cfg.NodeName) {
		a.enqueuePod(p.GetMetadata().GetUid())
	}
	for _, uid := range a.rt.Pods() {
		a.enqueuePod(uid)
	}
	a.mu.Lock()
	uids := make([]string, 0, len(a.pods))
	for uid := range a.pods {
		uids = append(uids, uid)
	}
	a.mu.Unlock()
	for _, uid := range uids {
		a.enqueuePod(uid)
	}
}

// runEvents turns the runtime's changes and the first successful list into
// work.
func (a *Agent) runEvents(ctx context.Context) {
	synced := make(chan struct{})
	var waiter sync.WaitGroup
	defer waiter.Wait()
	waiter.Go(func() {
		if a.caches.pods.WaitForSync(ctx) {
			close(synced)
		}
	})
	changes := a.rt.Changes()
	for {
		select {
		case <-ctx.Done():
			return
		case <-synced:
			// Now an absent pod means a deleted one: look at every pod the
			// runtime runs.
			synced = nil
			a.enqueueAll()
		case uid, ok := <-changes:
			if !ok {
				changes = nil // the runtime was closed under the agent: resync only
				continue
			}
			a.enqueuePod(uid)
		}
	}
}

// sleepCtx waits d on the agent's clock; false if ctx ended first.
func (a *Agent) sleepCtx(ctx context.Context, d time.Duration) bool {
	t := a.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return true
	case <-ctx.Done():
		return false
	}
}

// retryLimiter is the back-off of a pod sync or status write that failed:
// short, so that status reaches the API soon after it comes back.
func retryLimiter() workqueue.TypedRateLimiter[string] {
	return workqueue.NewTypedItemExponentialFailureRateLimiter[string](retryFirstDelay, retryMaxDelay)
}

// nextDelay doubles a retry delay up to retryMaxDelay.
func nextDelay(d time.Duration) time.Duration { return min(2*d, retryMaxDelay) }

// podRef names a pod in log lines.
func podRef(p *capstanv1.Pod) string {
	return p.GetMetadata().GetNamespace() + "/" + p.GetMetadata().GetName()
}
