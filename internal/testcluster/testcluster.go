// Package testcluster is the one harness that builds a Capstan cluster of
// real processes for the end-to-end tests (e2e), the benchmarks
// (hack/bench*) and fault-injection runs: N masters — an API server
// embedding an etcd member, a controller-manager and a scheduler each —
// and M workers, real node agents running pods as processes, on free
// loopback ports (package localcluster does the processes), plus pools of
// hollow nodes: the real node agent in --hollow-nodes mode, whose nodes
// register, hold their leases and complete graceful deletions like real
// ones and report every pod Running and Ready at once. The workers of one
// cluster split a block of node ports that no other test cluster of the
// machine holds (nodeports.go), so pods of clusters side by side never get
// the same port.
//
// It gives the faults tests need, by name and always by pid, never by a
// process name: stop (SIGTERM with grace), kill (SIGKILL, and wait until
// gone), pause (SIGSTOP, and wait until every thread is stopped), resume,
// restart, and restore everything (thaw all, start what is dead, wait
// until ready); a worker's death (its node agent and its pods' processes
// at once); and runs of faults of API servers, one after the other, each
// restored before the next (faultruns.go). It reads what the lease-gated
// components say (their leases, their /healthz), waits for them to settle
// or to fail over, and records every change of their leases' holdings
// (holdings.go). A test can add a candidate of its own to a component,
// with other API endpoints — proxies it can freeze — or arguments
// (candidates.go).
// Close stops every process it started by pid, and the pods of its node
// agents, checks that nothing of the cluster still runs, and keeps the
// logs and data when asked to or when that fails, saying where.
//
// Every wait has a deadline (package poll). Timing is never asserted here:
// a timeout means that something is broken, not slow.
//
// Concurrency: a Cluster is safe for concurrent use — a test and the
// watchdog that stops the cluster before go test's own timeout may call it
// at once. Starts and stops of processes are serialised by localcluster;
// the waits and queries hold no lock and see the cluster as it is at each
// look. A Cluster starts no goroutine of its own beyond those of its API
// client, which Close stops. The processes run in their own sessions and
// outlive the program that started them unless it calls Close (or Down):
// whoever calls Start must call Close, also on failure. One rule is
// particular to Terminate: it collects the exit status of a process this
// program started, which any other look at that process between the
// signal and the collection would reap and drop.
package testcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/localcluster"
)

// Defaults of a Config.
const (
	DefaultMasters   = 3
	DefaultStopGrace = 10 * time.Second
)

// startAttempts is how often Start tries, each time on fresh ports: the
// ports are free when they are picked, but another program may take one
// before the cluster binds it.
const startAttempts = 2

// buildTimeout bounds building the binaries when neither Config.BinDir nor
// $CAPSTAN_BIN_DIR has them (a cold build of one takes ~40 s on 2 cores).
const buildTimeout = 4 * time.Minute

// freeLayoutPorts picks the ports of an attempt; the tests replace it to
// make an attempt fail.
var freeLayoutPorts = localcluster.FreeLayoutPorts

// Config is what Start builds. The zero Config is three masters, no
// workers, in a new temporary directory.
type Config struct {
	// Name names the temporary directory (capstan-<Name>-...) and is the
	// user agent of the cluster's clients. Default "testcluster".
	Name string
	// Dir holds everything of the cluster: state-<attempt>/ (each
	// process's data/, logs/ and pids/), bin/ if the binaries are built,
	// runner.log. Empty: a new temporary directory. The cluster owns it:
	// Close deletes it unless told to keep it.
	Dir string
	// BinDir holds the built binaries (make build's bin/). Empty:
	// $CAPSTAN_BIN_DIR when it has them, else they are built into
	// <Dir>/bin.
	BinDir string
	// Masters is the number of masters; 0 means DefaultMasters. Their
	// etcd members form one cluster, so an odd number keeps a quorum
	// through the loss of a minority.
	Masters int
	// APIServersOnly runs no controller-managers and schedulers: a cluster
	// of API servers (and their etcd members) only.
	APIServersOnly bool
	// Workers is the number of real node agents, node-agent-<i> running
	// the node node-<i>, whatever the number of masters. They split a
	// block of 1000 node ports in 20000-29999 that no other test cluster
	// of the machine holds while this one runs (--node-port-range).
	Workers int
	// Args are extra arguments of every master and worker process of a
	// binary, by the binary's name (localcluster.ControllerManagerBinary
	// ...): --lease-duration of the controller-managers, --labels of the
	// node agents. Hollow pools take theirs from HollowPool.
	Args map[string][]string
	// HollowPools are started with the cluster, after the workers.
	HollowPools []HollowPool
	// Logger receives what the runner does (started, ready, stopping,
	// killed). nil: <Dir>/runner.log.
	Logger *slog.Logger
	// ReadyTimeout bounds each wait for processes to be ready; 0 means
	// localcluster.DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// StopGrace is how long a process may take to exit after SIGTERM
	// before it is killed; 0 means DefaultStopGrace.
	StopGrace time.Duration
}

// complete validates cfg and fills its defaults.
func (cfg Config) complete() (Config, error) {
	if cfg.Name == "" {
		cfg.Name = "testcluster"
	}
	if cfg.Masters == 0 {
		cfg.Masters = DefaultMasters
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = localcluster.DefaultReadyTimeout
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = DefaultStopGrace
	}
	switch {
	case strings.ContainsAny(cfg.Name, `/\ `):
		return cfg, fmt.Errorf("testcluster: Config.Name %q: must be usable in a file name", cfg.Name)
	case cfg.Masters < 1:
		return cfg, fmt.Errorf("testcluster: Config.Masters is %d: at least one master is needed", cfg.Masters)
	case cfg.Workers < 0:
		return cfg, fmt.Errorf("testcluster: Config.Workers is %d, not a number of workers", cfg.Workers)
	case cfg.ReadyTimeout < 0 || cfg.StopGrace < 0:
		return cfg, fmt.Errorf("testcluster: Config.ReadyTimeout %v and StopGrace %v must not be negative", cfg.ReadyTimeout, cfg.StopGrace)
	}
	seen := map[string]bool{}
	for _, pool := range cfg.HollowPools {
		if err := pool.validate(); err != nil {
			return cfg, err
		}
		if seen[pool.Name] {
			return cfg, fmt.Errorf("testcluster: hollow pool %q appears twice", pool.Name)
		}
		seen[pool.Name] = true
	}
	return cfg, nil
}

// binaries are the binaries the cluster runs.
func (cfg Config) binaries() []string {
	names := []string{localcluster.APIServerBinary}
	if !cfg.APIServersOnly {
		names = append(names, localcluster.ControllerManagerBinary, localcluster.SchedulerBinary)
	}
	if !cfg.APIServersOnly || cfg.Workers > 0 || len(cfg.HollowPools) > 0 {
		names = append(names, localcluster.NodeAgentBinary)
	}
	return names
}

// Cluster is a running cluster; see the package doc.
type Cluster struct {
	cfg     Config
	dir     string
	binDir  string
	lc      *localcluster.Cluster
	logFile *os.File // runner.log, when Config.Logger is nil
	client  *client.Client
	// nodePorts is the block of node ports the workers split; Close gives
	// it back.
	nodePorts *nodePortClaim

	// What the layout made, in order; fixed after Start.
	apiServers []string
	addrs      []string
	etcdURLs   []string
	nodeAgents []NodeAgent

	// buildMu serialises Binary's builds.
	buildMu sync.Mutex

	mu sync.Mutex
	// candidates are the candidates of each lease-gated component's lease,
	// by lease (= binary) name: the layout's, then those StartCandidate
	// added; healthURLs their /healthz, by process name.
	candidates map[string][]string
	healthURLs map[string]string
	// extraCandidates are the lease of each candidate StartCandidate
	// added, by name.
	extraCandidates map[string]string
	pools           map[string]*Pool
	// ports are every port given to a process of the cluster, so that a
	// pool started later never takes the port of one that is down.
	ports map[int]bool
}

// NodeAgent is one worker: a real node agent process and its node.
type NodeAgent struct {
	Process string
	Node    string
}

// Start builds (or finds) the binaries, starts the cluster and waits until
// every process is ready. A failed start — a port taken in between, say —
// is tried once more on fresh ports. When Start fails it has stopped what
// it started, and its error says where the logs are. ctx bounds the start
// only: if it ends first, Start stops what it started and fails; once
// Start has returned, the cluster runs until Close or Down.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	cfg, err := cfg.complete()
	if err != nil {
		return nil, err
	}
	dir := cfg.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "capstan-"+cfg.Name+"-"); err != nil {
			return nil, fmt.Errorf("testcluster: %w", err)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("testcluster: %w", err)
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, fmt.Errorf("testcluster: %w", err)
	}
	logger, logFile := cfg.Logger, (*os.File)(nil)
	if logger == nil {
		if logFile, err = os.Create(filepath.Join(dir, "runner.log")); err != nil {
			return nil, fmt.Errorf("testcluster: %w", err)
		}
		logger = slog.New(slog.NewTextHandler(logFile, nil))
	}
	binDir := cfg.BinDir
	if binDir == "" {
		buildCtx, cancel := context.WithTimeout(ctx, buildTimeout)
		binDir, err = localcluster.FindOrBuildBinaries(buildCtx, filepath.Join(dir, "bin"), cfg.binaries()...)
		cancel()
	} else {
		binDir, err = filepath.Abs(binDir)
	}
	var claim *nodePortClaim
	if err == nil && cfg.Workers > 0 {
		claim, err = claimNodePorts()
	}
	var errs []error
	for attempt := 1; err == nil && attempt <= startAttempts; attempt++ {
		var c *Cluster
		if c, err = start(ctx, cfg, dir, binDir, attempt, logger, claim); err == nil {
			c.logFile = logFile
			c.nodePorts = claim
			return c, nil
		}
		errs = append(errs, fmt.Errorf("attempt %d: %w", attempt, err))
		err = ctx.Err()
	}
	claim.release()
	if logFile != nil {
		logFile.Close()
	}
	return nil, fmt.Errorf("testcluster: start (logs and data kept in %s): %w", dir, errors.Join(append(errs, err)...))
}

// start is one attempt of Start, in <dir>/state-<attempt>, its workers
// splitting the node ports of claim. On failure it stops what it started.
func start(ctx context.Context, cfg Config, dir, binDir string, attempt int, logger *slog.Logger, claim *nodePortClaim) (*Cluster, error) {
	masterPorts, workerPorts, err := freeLayoutPorts(cfg.Masters, cfg.Workers+len(cfg.HollowPools))
	if err != nil {
		return nil, err
	}
	layout := localcluster.Layout{
		BinDir:         binDir,
		StateDir:       filepath.Join(dir, fmt.Sprintf("state-%d", attempt)),
		Masters:        masterPorts,
		APIServersOnly: cfg.APIServersOnly,
		Workers:        workerPorts[:cfg.Workers],
		Args:           cfg.Args,
	}
	if claim != nil {
		layout.NodePorts = claim.ports
	}
	lc, err := localcluster.New(localcluster.Config{Topology: layout.Topology(), Logger: logger, ReadyTimeout: cfg.ReadyTimeout})
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		cfg: cfg, dir: dir, binDir: binDir, lc: lc,
		candidates: map[string][]string{}, healthURLs: map[string]string{}, extraCandidates: map[string]string{},
		pools: map[string]*Pool{}, ports: map[int]bool{},
	}
	for _, p := range layout.Masters {
		c.etcdURLs = append(c.etcdURLs, fmt.Sprintf("http://127.0.0.1:%d", p.EtcdClient))
		for _, port := range []int{p.GRPC, p.EtcdClient, p.EtcdPeer, p.ControllerManagerHTTP, p.SchedulerHTTP} {
			c.ports[port] = true
		}
	}
	for _, port := range workerPorts {
		c.ports[port] = true
	}
	for _, p := range lc.Topology().Processes {
		switch binary := filepath.Base(p.Binary); binary {
		case localcluster.APIServerBinary:
			c.apiServers = append(c.apiServers, p.Name)
			c.addrs = append(c.addrs, p.HealthAddr)
		case localcluster.ControllerManagerBinary, localcluster.SchedulerBinary:
			// Each lease-gated binary's lease is named after it, and its
			// processes' identities are their names.
			c.candidates[binary] = append(c.candidates[binary], p.Name)
			c.healthURLs[p.Name] = p.HealthURL
		case localcluster.NodeAgentBinary:
			// The layout's workers, in order: worker i runs node NodeName(i).
			c.nodeAgents = append(c.nodeAgents, NodeAgent{Process: p.Name, Node: localcluster.NodeName(len(c.nodeAgents))})
		}
	}
	for i, spec := range cfg.HollowPools {
		if _, err := c.addPool(spec, workerPorts[cfg.Workers+i]); err != nil {
			return nil, err
		}
	}
	if err := lc.Up(ctx); err != nil {
		return nil, errors.Join(err, c.Down(context.WithoutCancel(ctx)))
	}
	c.client, err = c.NewClient(client.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, errors.Join(err, c.Down(context.WithoutCancel(ctx)))
	}
	return c, nil
}

// Dir is the directory that holds the cluster's state, logs and runner log.
func (c *Cluster) Dir() string { return c.dir }

// BinDir is the directory of the binaries the cluster runs.
func (c *Cluster) BinDir() string { return c.binDir }

// APIServers are the API servers' process names, apiserver-1...
func (c *Cluster) APIServers() []string { return slices.Clone(c.apiServers) }

// APIAddresses are the API servers' gRPC addresses, in the order of
// APIServers: what a client of the cluster dials.
func (c *Cluster) APIAddresses() []string { return slices.Clone(c.addrs) }

// EtcdURLs are the client URLs of the API servers' embedded etcd members,
// in the order of APIServers.
func (c *Cluster) EtcdURLs() []string { return slices.Clone(c.etcdURLs) }

// Candidates are the processes of a lease-gated component, by the name of
// its lease (wellknown.ControllerManagerLease, wellknown.SchedulerLease):
// controller-manager-1... Each one's identity is its process name.
func (c *Cluster) Candidates(lease string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.candidates[lease])
}

// healthURL is the /healthz of the named candidate, "" if it has none.
func (c *Cluster) healthURL(name string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.healthURLs[name]
}

// NodeAgents are the workers, in order.
func (c *Cluster) NodeAgents() []NodeAgent { return slices.Clone(c.nodeAgents) }

// Processes are the names of the cluster's processes of the given binaries
// (every process if none is given), in the order Restore starts them.
func (c *Cluster) Processes(binaries ...string) []string {
	var names []string
	for _, p := range c.lc.Topology().Processes {
		if len(binaries) == 0 || slices.Contains(binaries, filepath.Base(p.Binary)) {
			names = append(names, p.Name)
		}
	}
	return names
}

// Client is the cluster's own API client, of every API server; Close
// closes it. Callers must not close it.
func (c *Cluster) Client() *client.Client { return c.client }

// NewClient dials a client of the cluster with cfg, whose Endpoints default
// to every API server and UserAgent to the Config's Name. The caller closes
// it.
func (c *Cluster) NewClient(cfg client.Config) (*client.Client, error) {
	if len(cfg.Endpoints) == 0 {
		cfg.Endpoints = c.APIAddresses()
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = c.cfg.Name
	}
	cl, err := client.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("testcluster: client of %v: %w", cfg.Endpoints, err)
	}
	return cl, nil
}

// Binary is the path of a binary the cluster does not run itself — a
// workload such as echo, capctl: from BinDir when it is there, else built
// (once) into <Dir>/bin. Cancelling ctx stops a build.
func (c *Cluster) Binary(ctx context.Context, name string) (string, error) {
	c.buildMu.Lock()
	defer c.buildMu.Unlock()
	built := filepath.Join(c.dir, "bin")
	for _, dir := range []string{c.binDir, built} {
		path := filepath.Join(dir, name)
		if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() {
			return path, nil
		}
	}
	if err := localcluster.BuildBinaries(ctx, built, name); err != nil {
		return "", fmt.Errorf("testcluster: %w", err)
	}
	return filepath.Join(built, name), nil
}

// LogPath is the file the named process logs to.
func (c *Cluster) LogPath(name string) string { return c.lc.Topology().LogPath(name) }

// LogTails is the end of every process's log, at most lines lines each,
// one section per process headed by its name and log file: what a failed
// test reports.
func (c *Cluster) LogTails(lines int) string {
	var b strings.Builder
	for _, name := range c.Processes() {
		path := c.LogPath(name)
		fmt.Fprintf(&b, "--- last %d lines of %s (%s):\n%s\n", lines, name, path, localcluster.LogTail(path, lines))
	}
	return b.String()
}

// Down stops the cluster for good: its client is closed, every process is
// stopped by its pid (SIGTERM, and SIGKILL after the stop grace; clients
// before the API servers), then the pods' processes its node agents left
// running are killed, and it checks that no process of the cluster runs
// any more. The logs and data stay. If ctx ends, what is left is killed
// at once.
func (c *Cluster) Down(ctx context.Context) error {
	if c.client != nil {
		// Closing twice only reports that it is closed.
		_ = c.client.Close()
	}
	err := c.lc.Down(ctx, c.cfg.StopGrace)
	// Pods outlive their node agents by design: stop them too, so that
	// nothing of the cluster is left behind.
	if _, killErr := c.lc.KillPods(); killErr != nil {
		err = errors.Join(err, killErr)
	}
	for _, st := range c.lc.Status() {
		if st.Running {
			err = errors.Join(err, fmt.Errorf("%s (pid %d) still runs after Down", st.Name, st.Pid))
		}
	}
	if err != nil {
		return fmt.Errorf("testcluster: stop the cluster: %w", err)
	}
	return nil
}

// Close is Down, and then deletes the cluster's directory — unless keep is
// set or Down failed: then the directory stays (a failed Close's error
// says where) for the logs and data of every process.
func (c *Cluster) Close(ctx context.Context, keep bool) error {
	err := c.Down(ctx)
	if c.logFile != nil {
		c.logFile.Close()
	}
	// Only once its workers are down: their pods' ports are free again.
	c.nodePorts.release()
	switch {
	case err != nil:
		return fmt.Errorf("%w (logs and data kept in %s)", err, c.dir)
	case keep:
		return nil
	}
	if err := os.RemoveAll(c.dir); err != nil {
		return fmt.Errorf("testcluster: %w", err)
	}
	return nil
}
