package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/utils/clock"

	"github.com/capstan-dev/capstan/services/node-agent/internal/containershim"
)

// osProcess is one container process and the process group it leads
// (started with Setsid, so its pid is its process group and session id).
type osProcess struct {
	pid        int
	startTicks uint64 // /proc/<pid>/stat field 22: tells this process from a later one with the same pid
	startedAt  time.Time
	runID      string // names this run in its checkpoint and its shim's release marker
	// adopted: started by an earlier node agent, so not our child. It is
	// watched through /proc and its exit status is unknown.
	adopted bool

	mu sync.Mutex
	// gone: reaped or vanished. Its pid (and process group id) may belong to
	// another process now, so nothing may be signalled any more.
	gone bool

	exited chan struct{} // closed once the process is gone
	exit   processExit   // written before exited is closed
}

// processExit is how a process ended.
type processExit struct {
	known  bool // false for adopted processes: only their parent learns the status
	code   int32
	signal syscall.Signal
	at     time.Time
}

// signalGroup sends sig to every process of p's group. It does nothing once
// p is gone, because the group id may have been reused.
func (p *osProcess) signalGroup(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gone {
		return nil
	}
	if p.adopted {
		// Not our child: the pid can be reused as soon as the process dies,
		// so check that it is still the process we adopted.
		st, err := readProcStat(p.pid)
		if err != nil || st.startTicks != p.startTicks || st.dead() {
			return nil
		}
	}
	if err := syscall.Kill(-p.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to process group %d: %w", sig, p.pid, err)
	}
	return nil
}

// procStat is what the runtime reads from /proc/<pid>/stat.
type procStat struct {
	state      byte
	startTicks uint64
}

// dead: a zombie (exited, not yet reaped) or being torn down.
func (s procStat) dead() bool { return s.state == 'Z' || s.state == 'X' || s.state == 'x' }

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// The command name (field 2) is in parentheses and may itself contain
	// spaces and parentheses: the fields that follow start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state), so field 22 (starttime) is fields[19].
	if len(fields) < 20 || len(fields[0]) != 1 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields after the command name", pid, len(fields))
	}
	ticks, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: start time: %w", pid, err)
	}
	return procStat{state: fields[0][0], startTicks: ticks}, nil
}

// readBootID names the current boot: start times in /proc count from boot,
// so a checkpoint from an earlier boot must never match a process.
func readBootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// launch is everything needed to start one container process.
type launch struct {
	argv    []string // argv[0] as the spec gives it
	env     []string
	dir     string
	logPath string
	// marker is where the shim records its release, writing runID.
	marker string
	runID  string
}

// startProcess starts l held in the shim (see shim.go), in its own session
// with stdin from /dev/null and stdout and stderr appended to the log
// file: no pipe ties the command to the agent, and no parent-death signal
// is set, so it outlives the agent. The command runs once the returned
// heldProcess is released; the osProcess's pid and start time are the
// command's already.
func startProcess(l launch, now time.Time) (*osProcess, *heldProcess, error) {
	if len(l.argv) == 0 || l.argv[0] == "" {
		return nil, nil, errors.New("container has no command")
	}
	path, err := lookPath(l.argv[0], l.dir, l.env)
	if err != nil {
		return nil, nil, err
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, nil, err
	}
	defer devNull.Close()
	logFile, err := os.OpenFile(l.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("open container log: %w", err)
	}
	defer logFile.Close()
	// The shim's ends are closed here once it has them; ours are
	// close-on-exec, so no other child inherits them and the shim sees EOF
	// when this process dies.
	releaseR, releaseW, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("release pipe: %w", err)
	}
	defer releaseR.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		releaseW.Close()
		return nil, nil, fmt.Errorf("status pipe: %w", err)
	}
	defer statusW.Close()
	files := make([]*os.File, max(containershim.ReleaseFD, containershim.StatusFD)+1)
	files[0], files[1], files[2] = devNull, logFile, logFile
	files[containershim.ReleaseFD], files[containershim.StatusFD] = releaseR, statusW
	proc, err := os.StartProcess(shimBinary, containershim.Args(l.marker, l.runID, path, l.argv), &os.ProcAttr{
		Dir:   l.dir,
		Env:   l.env,
		Files: files,
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		releaseW.Close()
		statusR.Close()
		// Name the command, not the shim: the error is the container's.
		var pe *os.PathError
		if errors.As(err, &pe) && pe.Path == shimBinary {
			pe.Path = path
		}
		return nil, nil, err
	}
	pid := proc.Pid
	// The runtime reaps by pid (processWatcher), not through os.Process.
	_ = proc.Release()
	held := &heldProcess{path: path, release: releaseW, status: statusR}
	// The child is not reaped yet, so its /proc entry exists even if it
	// already exited.
	st, err := readProcStat(pid)
	if err != nil {
		held.abandon()
		waitChild(pid)
		return nil, nil, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	return &osProcess{pid: pid, startTicks: st.startTicks, startedAt: now, runID: l.runID, exited: make(chan struct{})}, held, nil
}

// waitChild reaps child pid, which has ended or is about to (a shim that
// was abandoned or failed to execve). The processWatcher does not know it.
func waitChild(pid int) {
	var ws syscall.WaitStatus
	for {
		_, err := syscall.Wait4(pid, &ws, 0, nil)
		if !errors.Is(err, syscall.EINTR) {
			return
		}
	}
}

// lookPath resolves a command the way a shell would, but with the
// container's PATH and working directory rather than the agent's.
func lookPath(name, dir string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		if !filepath.IsAbs(name) {
			name = filepath.Join(dir, name)
		}
		return name, nil
	}
	pathVar := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathVar = v
		}
	}
	for _, d := range filepath.SplitList(pathVar) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		candidate := filepath.Join(d, name)
		if fi, err := os.Stat(candidate); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return candidate, nil
		}
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH (%s)", name, pathVar)
}

// processWatcher notices when container processes end. Children are
// checked on every SIGCHLD (and on a slow tick, in case one is missed);
// adopted processes, which send the agent no SIGCHLD, are polled.
type processWatcher struct {
	clock    clock.WithTicker
	interval time.Duration
	log      *slog.Logger
	sigchld  chan os.Signal
	poke     chan struct{}

	mu       sync.Mutex
	children map[int]*osProcess
	adopted  map[int]*osProcess
}

func newProcessWatcher(clk clock.WithTicker, interval time.Duration, log *slog.Logger) *processWatcher {
	w := &processWatcher{
		clock:    clk,
		interval: interval,
		log:      log,
		sigchld:  make(chan os.Signal, 1),
		poke:     make(chan struct{}, 1),
		children: map[int]*osProcess{},
		adopted:  map[int]*osProcess{},
	}
	// Registered before any child starts, so no exit goes unsignalled.
	signal.Notify(w.sigchld, syscall.SIGCHLD)
	return w
}

// watch registers p; its exited channel closes when it ends.
func (w *processWatcher) watch(p *osProcess) {
	w.mu.Lock()
	if p.adopted {
		w.adopted[p.pid] = p
	} else {
		w.children[p.pid] = p
	}
	w.mu.Unlock()
	// The child may have exited before it was registered: its SIGCHLD
	// found nothing to check.
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

// run checks processes until ctx ends. It leaves every process alone: what
// is still running when the agent stops is adopted by the next one.
func (w *processWatcher) run(ctx context.Context) {
	defer signal.Stop(w.sigchld)
	ticker := w.clock.NewTicker(w.interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.sigchld:
			w.checkChildren()
		case <-w.poke:
			w.checkChildren()
			w.checkAdopted()
		case <-ticker.C():
			w.checkChildren()
			w.checkAdopted()
		}
	}
}

func (w *processWatcher) snapshot(m map[int]*osProcess) []*osProcess {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]*osProcess, 0, len(m))
	for _, p := range m {
		out = append(out, p)
	}
	return out
}

func (w *processWatcher) forget(p *osProcess) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.children, p.pid)
	delete(w.adopted, p.pid)
}

func (w *processWatcher) checkChildren() {
	for _, p := range w.snapshot(w.children) {
		var info unix.Siginfo
		// WNOWAIT: look without reaping, so the pid (and the group id) stay
		// ours while the group's leftovers are killed below.
		err := unix.Waitid(unix.P_PID, p.pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		if err == nil && info.Signo == 0 {
			continue // still running
		}
		p.mu.Lock()
		exit := processExit{at: w.clock.Now()}
		if err == nil {
			// A container is its whole process group: whatever the leader
			// leaves behind (background jobs of a shell) goes with it.
			if err := syscall.Kill(-p.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				w.log.Warn("kill leftovers of exited container process", "pid", p.pid, "err", err)
			}
			exit = reap(p.pid, exit)
		} else {
			w.log.Warn("container process vanished: exit status unknown", "pid", p.pid, "err", err)
		}
		p.gone = true
		p.exit = exit
		p.mu.Unlock()
		w.forget(p)
		close(p.exited)
	}
}

func (w *processWatcher) checkAdopted() {
	for _, p := range w.snapshot(w.adopted) {
		st, err := readProcStat(p.pid)
		if err == nil && st.startTicks == p.startTicks && !st.dead() {
			continue
		}
		p.mu.Lock()
		exit := processExit{at: w.clock.Now()}
		if err == nil && st.startTicks == p.startTicks {
			// A zombie. It is ours to reap only when this agent process is
			// its parent after all (a runtime that adopts from another in
			// the same process); otherwise wait4 fails and the status stays
			// unknown.
			exit = reap(p.pid, exit)
		}
		p.gone = true
		p.exit = exit
		p.mu.Unlock()
		w.forget(p)
		close(p.exited)
	}
}

// reap collects the exit status of an exited child, leaving exit as it is
// (status unknown) if pid is not an exited child of this process.
func reap(pid int, exit processExit) processExit {
	var ws syscall.WaitStatus
	for {
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || got != pid {
			return exit
		}
		break
	}
	exit.known = true
	switch {
	case ws.Signaled():
		exit.signal = ws.Signal()
		exit.code = 128 + int32(exit.signal)
	default:
		exit.code = int32(ws.ExitStatus())
	}
	return exit
}
