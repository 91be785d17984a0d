// Package localcluster runs a Capstan topology (API servers with embedded
// etcd members, controller-managers, schedulers and node agents) as plain
// local processes: for machines without a Docker engine (`make local-up`)
// and for integration tests that drive the real binaries. The pods the
// node agents run are processes too; they outlive their agents, and
// KillPods stops them.
//
// All state is on disk under the topology's state directory, so one runner
// starts the cluster and a later one finds, stops or restarts it. A process
// counts as running only when its pid file names a live process whose argv[0]
// is the expected binary (read from /proc, so this package is Linux-only): a
// stale pid file or a reused pid is never taken for it and never signalled,
// and a replica that was killed is simply started again by the next Up.
// Each process runs in its own session and process group (Setsid) with its
// stdout and stderr appended to its log file, so it outlives the runner and
// a Ctrl-C in the runner's terminal does not reach it.
//
// Tests get the real binaries from FindOrBuildBinaries: bin/ when `make
// test` names it in $CAPSTAN_BIN_DIR, else a fresh build. Package
// testcluster builds the harness of tests and benchmarks on this one.
//
// The topology can grow and shrink while the cluster runs (Add, Remove): a
// test adds a pool of hollow nodes and removes it when it ends.
//
// Concurrency: a Cluster is safe for concurrent use. Operations that start
// or stop processes are serialised, within one program by a mutex and
// across programs by an advisory lock on <state>/lock; status queries and
// readiness waits take no lock. The list of processes is copied on write,
// so a query sees the topology as it was when it began.
package localcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/capstan-dev/capstan/internal/grpcserver"
)

// DefaultReadyTimeout bounds Up's wait for the API servers when the Config
// sets none: a cold three-member etcd cluster elects a leader in well under
// a second, so a minute means something is wrong, and the error says which.
const DefaultReadyTimeout = 60 * time.Second

// pollInterval is how often waits look at processes and health again.
const pollInterval = 100 * time.Millisecond

// killWait bounds the wait for a SIGKILLed process to disappear.
const killWait = 10 * time.Second

var (
	// ErrNotRunning is returned for a process that is not running.
	ErrNotRunning = errors.New("localcluster: process not running")
	// ErrUnknownProcess is returned for a name the topology does not have.
	ErrUnknownProcess = errors.New("localcluster: unknown process")
)

// Config is the only way to make a Cluster.
type Config struct {
	// Topology is what to run; New validates it.
	Topology Topology
	// Logger reports what the runner does (started, already running,
	// ready, killed). nil discards it.
	Logger *slog.Logger
	// ReadyTimeout bounds Up's wait for readiness; 0 means
	// DefaultReadyTimeout.
	ReadyTimeout time.Duration
}

// Cluster starts, watches and stops the processes of one topology.
type Cluster struct {
	// paths is the topology without its processes: StateDir, and the paths
	// derived from it. It never changes.
	paths        Topology
	logger       *slog.Logger
	readyTimeout time.Duration

	// mu serialises starts and stops within this program; the file lock
	// does so across programs.
	mu sync.Mutex

	// procsMu guards procs, which is replaced, never changed in place (Add,
	// Remove): a reader may keep the slice it got.
	procsMu sync.RWMutex
	procs   []Process
}

// ProcessStatus is one line of Status.
type ProcessStatus struct {
	Name string
	// Pid is the pid in the pid file, 0 if there is none. When Running is
	// false it is stale.
	Pid     int
	Running bool
	// HealthAddr is the process's gRPC health address, if it has one.
	HealthAddr string
	// HealthURL is the process's HTTP health URL, if it has one.
	HealthURL string
	LogPath   string
}

// New validates cfg and returns a Cluster for it. Paths are made absolute,
// so the Cluster does not depend on the working directory later.
func New(cfg Config) (*Cluster, error) {
	topo := cfg.Topology
	if topo.StateDir == "" {
		return nil, errors.New("localcluster: Topology.StateDir is empty")
	}
	stateDir, err := filepath.Abs(topo.StateDir)
	if err != nil {
		return nil, fmt.Errorf("localcluster: state dir: %w", err)
	}
	procs := make([]Process, 0, len(topo.Processes))
	for i, p := range topo.Processes {
		if p, err = validProcess(p, procs); err != nil {
			return nil, fmt.Errorf("localcluster: process %d: %w", i, err)
		}
		procs = append(procs, p)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	readyTimeout := cfg.ReadyTimeout
	if readyTimeout <= 0 {
		readyTimeout = DefaultReadyTimeout
	}
	return &Cluster{paths: Topology{StateDir: stateDir}, procs: procs, logger: logger, readyTimeout: readyTimeout}, nil
}

// validProcess checks p against the rules of a topology and the processes
// before it, and returns it with absolute paths and its own copies of its
// slices.
func validProcess(p Process, before []Process) (Process, error) {
	if p.Name == "" || p.Name == "." || p.Name == ".." || strings.ContainsAny(p.Name, `/\`) {
		return p, fmt.Errorf("name %q is not a valid file name", p.Name)
	}
	if slices.ContainsFunc(before, func(q Process) bool { return q.Name == p.Name }) {
		return p, fmt.Errorf("process name %q appears twice", p.Name)
	}
	if p.Binary == "" {
		return p, fmt.Errorf("process %s: Binary is empty", p.Name)
	}
	var err error
	if p.Binary, err = filepath.Abs(p.Binary); err != nil {
		return p, fmt.Errorf("process %s: binary: %w", p.Name, err)
	}
	if p.RestartArgs != nil && p.RestartMarker == "" {
		return p, fmt.Errorf("process %s: RestartArgs without RestartMarker", p.Name)
	}
	p.Args = slices.Clone(p.Args)
	p.RestartArgs = slices.Clone(p.RestartArgs)
	p.Env = slices.Clone(p.Env)
	return p, nil
}

// Topology is the validated topology, with absolute paths, as it is now.
func (c *Cluster) Topology() Topology {
	topo := c.paths
	topo.Processes = slices.Clone(c.processes())
	return topo
}

// processes is the current list of processes; the caller must not change
// it.
func (c *Cluster) processes() []Process {
	c.procsMu.RLock()
	defer c.procsMu.RUnlock()
	return c.procs
}

// Add adds p to the topology, checked as New checks a topology's
// processes: from now on Start, Up, Down, Status and the waits know it.
// It does not start it.
func (c *Cluster) Add(p Process) error {
	c.procsMu.Lock()
	defer c.procsMu.Unlock()
	p, err := validProcess(p, c.procs)
	if err != nil {
		return fmt.Errorf("localcluster: add: %w", err)
	}
	c.procs = append(slices.Clone(c.procs), p)
	return nil
}

// Remove stops the named process as Stop does and then removes it from the
// topology, so that Up no longer starts it. Its data and log stay on disk;
// KillPods no longer looks at its pods.
func (c *Cluster) Remove(ctx context.Context, name string, grace time.Duration) error {
	p, err := c.process(name)
	if err != nil {
		return err
	}
	return c.withLock(ctx, func() error {
		if err := c.stop(ctx, []*Process{p}, grace); err != nil {
			return err
		}
		c.procsMu.Lock()
		defer c.procsMu.Unlock()
		c.procs = slices.DeleteFunc(slices.Clone(c.procs), func(q Process) bool { return q.Name == name })
		return nil
	})
}

// Up starts every process that is not running, in topology order, then
// waits until every process is ready (see CheckReady), for at most the
// ready timeout. Processes already running are left alone. If ctx ends, Up
// stops waiting and returns ctx's error; the processes it started keep
// running (Down stops them).
func (c *Cluster) Up(ctx context.Context) error {
	err := c.withLock(ctx, func() error {
		procs := c.processes()
		for i := range procs {
			if _, err := c.start(&procs[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.readyTimeout)
	defer cancel()
	return c.WaitReady(ctx)
}

// Start starts the named process unless it is running, and returns its pid
// either way. It does not wait for readiness (WaitReady does). ctx bounds
// only the wait for the state lock.
func (c *Cluster) Start(ctx context.Context, name string) (int, error) {
	p, err := c.process(name)
	if err != nil {
		return 0, err
	}
	var pid int
	err = c.withLock(ctx, func() error {
		pid, err = c.start(p)
		return err
	})
	return pid, err
}

// Down stops every running process: processes of the last binary in the
// topology first, all processes of one binary at once. Each gets SIGTERM
// (and SIGCONT, so a stopped one can act on it) and up to grace to exit,
// then SIGKILL. Pid files are removed. If ctx ends, Down kills what is left
// at once instead of waiting out the grace.
func (c *Cluster) Down(ctx context.Context, grace time.Duration) error {
	return c.withLock(ctx, func() error {
		var errs []error
		for _, group := range c.stopGroups() {
			errs = append(errs, c.stop(ctx, group, grace))
		}
		return errors.Join(errs...)
	})
}

// Stop stops the named process the way Down does.
func (c *Cluster) Stop(ctx context.Context, name string, grace time.Duration) error {
	p, err := c.process(name)
	if err != nil {
		return err
	}
	return c.withLock(ctx, func() error { return c.stop(ctx, []*Process{p}, grace) })
}

// Signal sends sig to the named process by its pid: SIGKILL to crash it,
// SIGSTOP and SIGCONT to freeze and thaw it. It returns ErrNotRunning
// (wrapped) if the process is not running.
func (c *Cluster) Signal(name string, sig syscall.Signal) error {
	pid, err := c.Pid(name)
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return fmt.Errorf("localcluster: signal %s (pid %d) with %v: %w", name, pid, sig, err)
	}
	return nil
}

// Pid is the pid of the named process, or ErrNotRunning (wrapped).
func (c *Cluster) Pid(name string) (int, error) {
	p, err := c.process(name)
	if err != nil {
		return 0, err
	}
	pid, ok := c.running(p)
	if !ok {
		return 0, fmt.Errorf("%w: %s", ErrNotRunning, name)
	}
	return pid, nil
}

// Status lists every process of the topology, in order, with its pid and
// whether it runs.
func (c *Cluster) Status() []ProcessStatus {
	procs := c.processes()
	statuses := make([]ProcessStatus, 0, len(procs))
	for i := range procs {
		p := &procs[i]
		pid, _ := readPidFile(c.paths.PidPath(p.Name))
		statuses = append(statuses, ProcessStatus{
			Name:       p.Name,
			Pid:        pid,
			Running:    pid != 0 && isOurs(pid, p.Binary),
			HealthAddr: p.HealthAddr,
			HealthURL:  p.HealthURL,
			LogPath:    c.paths.LogPath(p.Name),
		})
	}
	return statuses
}

// CheckReady asks the named process once whether it is ready; nil means
// it is: SERVING on its gRPC health address (HealthAddr), else 200 from its
// health URL (HealthURL), else — for a process with neither — running.
// ctx bounds the check.
func (c *Cluster) CheckReady(ctx context.Context, name string) error {
	p, err := c.process(name)
	if err != nil {
		return err
	}
	return c.checkReady(ctx, p)
}

func (c *Cluster) checkReady(ctx context.Context, p *Process) error {
	switch {
	case p.HealthAddr != "":
		return grpcserver.Probe(ctx, p.HealthAddr)
	case p.HealthURL != "":
		return probeHTTP(ctx, p.HealthURL)
	}
	if _, ok := c.running(p); !ok {
		return fmt.Errorf("%w: %s", ErrNotRunning, p.Name)
	}
	return nil
}

// probeHTTP GETs url: nil only on 200.
func probeHTTP(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("localcluster: health %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("localcluster: health: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("localcluster: health %s: %s", url, resp.Status)
	}
	return nil
}

// healthTarget says what readiness of p is checked on, for log lines.
func healthTarget(p *Process) string {
	switch {
	case p.HealthAddr != "":
		return p.HealthAddr
	case p.HealthURL != "":
		return p.HealthURL
	}
	return "process alive"
}

// WaitReady waits until the named processes (every process when no name is
// given) are ready (see CheckReady), and logs each as it becomes ready. It
// fails at once if one of them is not running, with the end of its log. If
// ctx ends first it returns an error naming the processes still not ready
// and wrapping ctx's error.
func (c *Cluster) WaitReady(ctx context.Context, names ...string) error {
	pending := map[string]*Process{}
	if len(names) == 0 {
		procs := c.processes()
		for i := range procs {
			pending[procs[i].Name] = &procs[i]
		}
	}
	for _, name := range names {
		p, err := c.process(name)
		if err != nil {
			return err
		}
		pending[name] = p
	}
	lastErr := map[string]error{}
	for {
		for _, name := range slices.Sorted(maps.Keys(pending)) {
			p := pending[name]
			pid, ok := c.running(p)
			if !ok {
				return fmt.Errorf("%w: %s exited before it was ready; end of %s:\n%s",
					ErrNotRunning, name, c.paths.LogPath(name), LogTail(c.paths.LogPath(name), 20))
			}
			probeCtx, cancel := context.WithTimeout(ctx, time.Second)
			err := c.checkReady(probeCtx, p)
			cancel()
			if err != nil {
				lastErr[name] = err
				continue
			}
			c.logger.Info("ready", "process", name, "pid", pid, "health", healthTarget(p))
			delete(pending, name)
		}
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			var waiting []string
			for _, name := range slices.Sorted(maps.Keys(pending)) {
				waiting = append(waiting, fmt.Sprintf("%s (%v; log %s)", name, lastErr[name], c.paths.LogPath(name)))
			}
			return fmt.Errorf("localcluster: not ready: %s: %w", strings.Join(waiting, ", "), ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// WaitExited waits until the named process is no longer running. If ctx
// ends first it returns ctx's error, wrapped.
func (c *Cluster) WaitExited(ctx context.Context, name string) error {
	p, err := c.process(name)
	if err != nil {
		return err
	}
	for {
		if _, ok := c.running(p); !ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("localcluster: %s still running: %w", name, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

func (c *Cluster) process(name string) (*Process, error) {
	procs := c.processes()
	for i := range procs {
		if procs[i].Name == name {
			return &procs[i], nil
		}
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownProcess, name)
}

// running reports the pid of p if p is running.
func (c *Cluster) running(p *Process) (int, bool) {
	pid, err := readPidFile(c.paths.PidPath(p.Name))
	if err != nil || pid == 0 {
		return 0, false
	}
	return pid, isOurs(pid, p.Binary)
}

// start starts p unless it runs; the caller holds the lock.
func (c *Cluster) start(p *Process) (int, error) {
	if pid, ok := c.running(p); ok {
		c.logger.Info("already running", "process", p.Name, "pid", pid)
		return pid, nil
	}
	if _, err := os.Stat(p.Binary); err != nil {
		return 0, fmt.Errorf("localcluster: start %s: %w (build the binaries first: make build)", p.Name, err)
	}
	dataDir := c.paths.DataDir(p.Name)
	for _, dir := range []string{dataDir, filepath.Dir(c.paths.LogPath(p.Name)), filepath.Dir(c.paths.PidPath(p.Name))} {
		// 0700: the data directories hold etcd's data, which is the cluster's.
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return 0, fmt.Errorf("localcluster: start %s: %w", p.Name, err)
		}
	}
	args := p.Args
	if p.RestartArgs != nil {
		if _, err := os.Stat(filepath.Join(dataDir, p.RestartMarker)); err == nil {
			args = p.RestartArgs
		}
	}
	logPath := c.paths.LogPath(p.Name)
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("localcluster: start %s: %w", p.Name, err)
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "--- %s localcluster: starting %s %s\n",
		time.Now().Format(time.RFC3339), p.Binary, strings.Join(args, " "))
	cmd := &exec.Cmd{
		Path:   p.Binary,
		Args:   append([]string{p.Binary}, args...),
		Dir:    dataDir,
		Env:    append(os.Environ(), p.Env...),
		Stdout: logFile,
		Stderr: logFile,
		// A new session makes the process its own process-group leader,
		// detached from the runner's terminal and signals.
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("localcluster: start %s: %w", p.Name, err)
	}
	pid := cmd.Process.Pid
	// Nobody Waits on the child: a runner that lives on reaps it when it
	// next looks at it (isOurs), a runner that exits leaves it to init.
	if err := cmd.Process.Release(); err != nil {
		c.logger.Warn("release process handle", "process", p.Name, "pid", pid, "err", err)
	}
	waitExec(pid, p.Binary)
	if err := writePidFile(c.paths.PidPath(p.Name), pid); err != nil {
		// Without its pid file the process could never be found again.
		_ = syscall.Kill(pid, syscall.SIGKILL)
		return 0, fmt.Errorf("localcluster: start %s: %w", p.Name, err)
	}
	c.logger.Info("started", "process", p.Name, "pid", pid, "log", logPath)
	return pid, nil
}

// stopGroups groups the processes by binary, in reverse order of each
// binary's first appearance.
func (c *Cluster) stopGroups() [][]*Process {
	var binaries []string
	groups := map[string][]*Process{}
	procs := c.processes()
	for i := range procs {
		p := &procs[i]
		if _, ok := groups[p.Binary]; !ok {
			binaries = append(binaries, p.Binary)
		}
		groups[p.Binary] = append(groups[p.Binary], p)
	}
	slices.Reverse(binaries)
	ordered := make([][]*Process, 0, len(binaries))
	for _, b := range binaries {
		ordered = append(ordered, groups[b])
	}
	return ordered
}

// stop stops the processes together; the caller holds the lock.
func (c *Cluster) stop(ctx context.Context, procs []*Process, grace time.Duration) error {
	pids := map[*Process]int{}
	for _, p := range procs {
		pid, ok := c.running(p)
		if !ok {
			continue
		}
		pids[p] = pid
		c.logger.Info("stopping", "process", p.Name, "pid", pid)
		_ = syscall.Kill(pid, syscall.SIGTERM)
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
	graceCtx, cancel := context.WithTimeout(ctx, grace)
	waitGone(graceCtx, pids)
	cancel()
	for p, pid := range pids {
		c.logger.Warn("did not exit within the grace period: killing", "process", p.Name, "pid", pid, "grace", grace)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// Deliberately not ctx: a killed process goes away within this bound,
	// and returning earlier would leave a pid file for a live process.
	killCtx, cancel := context.WithTimeout(context.Background(), killWait)
	waitGone(killCtx, pids)
	cancel()
	var errs []error
	for _, p := range procs {
		if pid, ok := pids[p]; ok {
			errs = append(errs, fmt.Errorf("localcluster: %s (pid %d) survived SIGKILL", p.Name, pid))
			continue
		}
		if err := os.Remove(c.paths.PidPath(p.Name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("localcluster: stop %s: %w", p.Name, err))
		}
	}
	return errors.Join(errs...)
}

// waitGone removes from pids each process that exits, until none is left
// or ctx ends.
func waitGone(ctx context.Context, pids map[*Process]int) {
	for {
		for p, pid := range pids {
			if !isOurs(pid, p.Binary) {
				delete(pids, p)
			}
		}
		if len(pids) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pollInterval / 5):
		}
	}
}

// withLock runs fn holding the mutex and the state directory's file lock.
// ctx bounds the wait for the file lock.
func (c *Cluster) withLock(ctx context.Context, fn func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := os.MkdirAll(c.paths.StateDir, 0o700); err != nil {
		return fmt.Errorf("localcluster: state dir: %w", err)
	}
	lockFile, err := os.OpenFile(filepath.Join(c.paths.StateDir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("localcluster: lock: %w", err)
	}
	defer lockFile.Close() // closing releases the flock
	for {
		err := syscall.Flock(int(lockFile.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("localcluster: lock %s: %w", lockFile.Name(), err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("localcluster: another runner holds %s: %w", lockFile.Name(), ctx.Err())
		case <-time.After(pollInterval):
		}
	}
	return fn()
}

// execTimeout bounds waitExec: an exec completes in microseconds.
const execTimeout = 2 * time.Second

// waitExec waits until the process just started as pid shows binary as its
// argv[0], or has ended. cmd.Start returns once the kernel has switched
// the child to the new program, but a moment before it has laid out the
// new program's arguments: in between, /proc/<pid>/cmdline is empty, and
// isOurs would take a process that runs for one that has exited.
func waitExec(pid int, binary string) {
	deadline := time.Now().Add(execTimeout)
	for !isOurs(pid, binary) && time.Now().Before(deadline) {
		st, err := readProcStat("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || st.dead() {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// isOurs reports whether pid is a live process running binary. A zombie is
// not live; if it is our child it is reaped on the way.
func isOurs(pid int, binary string) bool {
	st, err := readProcStat("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	if st.dead() {
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	argv0, _, _ := bytes.Cut(cmdline, []byte{0})
	return string(argv0) == binary
}

func readPidFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("localcluster: pid file %s: bad content %q", path, b)
	}
	return pid, nil
}

// writePidFile replaces the pid file atomically, so a concurrent reader sees
// the old pid or the new one, never a partial write.
func writePidFile(path string, pid int) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// LogTail is the last lines lines of the log file at path (read from its
// last 256 KiB at most), for a failure report: what a process said last.
func LogTail(path string, lines int) string {
	const maxBytes = 256 << 10
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	if info, err := f.Stat(); err == nil && info.Size() > maxBytes {
		_, _ = f.Seek(-maxBytes, io.SeekEnd)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}
