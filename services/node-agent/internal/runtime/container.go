package runtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

type containerPhase int

const (
	phaseWaiting containerPhase = iota
	phaseRunning
	phaseTerminated
)

// container is one container of a pod and the goroutine that supervises
// it (supervise): the only one that starts, stops and restarts its process
// and writes its checkpoint. Fields marked "mu" are guarded by
// ProcessRuntime.mu; the log fields by logMu.
type container struct {
	rt   *ProcessRuntime
	pod  *pod
	name string

	// checkpointMu orders checkpoint writes (the supervisor's and the
	// readiness prober's); taken before ProcessRuntime.mu, never under it.
	checkpointMu sync.Mutex

	wake     chan struct{} // cap 1: the spec changed, look again
	stop     chan struct{} // closed by stopLocked
	regrace  chan struct{} // cap 1: stopGrace got shorter
	done     chan struct{} // closed when supervise returns
	stopOnce sync.Once

	// mu
	spec         *capstanv1.Container
	specHash     string // processSpecHash(spec)
	runHash      string // processSpecHash of the spec the current (or last) process ran
	stopGrace    time.Duration
	stopped      bool // supervise returned after the process was gone (not because of Close)
	restartCount int32
	phase        containerPhase
	waitReason   string
	waitMessage  string
	runningSince time.Time
	readinessOK  bool
	startError   string // the exec error of the latest attempt, "" once one succeeds
	proc         *osProcess
	// keepLog: the next start goes on in the current log file, because
	// the run it belongs to never ran (its agent died before releasing it).
	keepLog bool
	// lastTermination is how the latest run ended; priorTermination the
	// one before it (the last_state of a terminated container).
	lastTermination  *termination
	priorTermination *termination

	// Log files. Processes write without any lock; the lock orders the
	// runtime's own moves (rotation, a new run) against readers.
	logMu         sync.RWMutex
	logGeneration uint64 // new .log files (one per run)
	logRotations  uint64 // copy-truncates of the current .log into .log.1
}

func (rt *ProcessRuntime) newContainer(p *pod, name string) *container {
	return &container{
		rt:         rt,
		pod:        p,
		name:       name,
		wake:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		regrace:    make(chan struct{}, 1),
		done:       make(chan struct{}),
		phase:      phaseWaiting,
		waitReason: ReasonContainerCreating,
	}
}

func (c *container) setSpecLocked(spec *capstanv1.Container) {
	c.spec = spec
	c.specHash = processSpecHash(spec)
}

// poke tells the supervisor that the spec may have changed.
func (c *container) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// stopLocked asks the supervisor to stop the container for good, giving it
// grace between SIGTERM and SIGKILL. Asked again with a shorter grace, it
// shortens a stop in progress (never lengthens it).
func (c *container) stopLocked(grace time.Duration) {
	first := false
	c.stopOnce.Do(func() {
		first = true
		c.stopGrace = grace
		close(c.stop)
	})
	if !first && grace < c.stopGrace {
		c.stopGrace = grace
	}
	select {
	case c.regrace <- struct{}{}:
	default:
	}
}

func (c *container) basePath() string { return filepath.Join(c.pod.dir, c.name) }

func (c *container) logPath() string { return c.basePath() + ".log" }

func (c *container) podRef() string { return c.pod.namespace + "/" + c.pod.name }

func (c *container) statusLocked() *capstanv1.ContainerStatus {
	st := &capstanv1.ContainerStatus{
		Name:         c.name,
		RestartCount: c.restartCount,
		State:        &capstanv1.ContainerState{},
		LastState:    &capstanv1.ContainerState{},
	}
	switch c.phase {
	case phaseWaiting:
		st.State.Waiting = &capstanv1.ContainerStateWaiting{Reason: c.waitReason, Message: c.waitMessage}
		st.LastState.Terminated = c.lastTermination.proto()
	case phaseRunning:
		st.State.Running = &capstanv1.ContainerStateRunning{StartedAt: timestampOrNil(c.runningSince)}
		st.LastState.Terminated = c.lastTermination.proto()
		st.Started = true
		st.Ready = c.spec.GetReadinessProbe() == nil || c.readinessOK
	case phaseTerminated:
		st.State.Terminated = c.lastTermination.proto()
		st.LastState.Terminated = c.priorTermination.proto()
	}
	if st.LastState.Terminated == nil {
		st.LastState = nil
	}
	st.Ports = c.pod.ports.statuses(c.spec)
	return st
}

// processSpecHash identifies what the process of a container is: a change
// restarts the container. Probes and resources are not part of it.
func processSpecHash(c *capstanv1.Container) string {
	var env [][2]string
	for _, e := range c.GetEnv() {
		env = append(env, [2]string{e.GetName(), e.GetValue()})
	}
	data, _ := json.Marshal(struct {
		Command    []string    `json:"command"`
		Args       []string    `json:"args"`
		Env        [][2]string `json:"env"`
		Port       int32       `json:"port"`
		WorkingDir string      `json:"workingDir"`
	}{c.GetCommand(), c.GetArgs(), env, firstPort(c), c.GetWorkingDir()})
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:12])
}

func firstPort(c *capstanv1.Container) int32 {
	if ps := c.GetPorts(); len(ps) > 0 {
		return ps[0].GetContainerPort()
	}
	return 0
}

// environment is the container's full environment, later entries of the
// same name replacing earlier ones.
func (c *container) environment(spec *capstanv1.Container) []string {
	vars := baseEnv()
	vars = append(vars, c.pod.ports.env(spec)...)
	vars = append(vars,
		[2]string{EnvPodName, c.pod.name},
		[2]string{EnvPodNamespace, c.pod.namespace},
		[2]string{EnvPodUID, c.pod.uid},
		[2]string{EnvNodeName, c.rt.opts.NodeName},
	)
	for _, e := range spec.GetEnv() {
		vars = append(vars, [2]string{e.GetName(), e.GetValue()})
	}
	index := map[string]int{}
	var out []string
	for _, kv := range vars {
		entry := kv[0] + "=" + kv[1]
		if i, ok := index[kv[0]]; ok {
			out[i] = entry
			continue
		}
		index[kv[0]] = len(out)
		out = append(out, entry)
	}
	return out
}

func (c *container) workingDir(spec *capstanv1.Container) string {
	work := filepath.Join(c.pod.dir, podWorkDir)
	switch d := spec.GetWorkingDir(); {
	case d == "":
		return work
	case filepath.IsAbs(d):
		return d
	default:
		return filepath.Join(work, d)
	}
}

func (rt *ProcessRuntime) startSupervisor(c *container, running *osProcess, ended *termination) {
	rt.wg.Add(1)
	go func() {
		defer rt.wg.Done()
		defer close(c.done)
		c.supervise(rt.ctx, running, ended)
	}()
}

// supervise runs the container until it is stopped or the runtime closes:
// start, watch, and restart with back-off as the policy says. running is an
// adopted process; ended is how the last run ended if none runs.
func (c *container) supervise(ctx context.Context, running *osProcess, ended *termination) {
	rt := c.rt
	backOff := rt.opts.BackOffInitial
	p := running
	// immediate: the next start skips the back-off (a spec change).
	immediate := false
	for {
		if p == nil {
			if ended != nil {
				switch c.waitForRestart(ctx, ended, immediate, &backOff) {
				case restartNow:
				case specChanged:
					immediate = true
				case stopRequested:
					c.markStopped()
					return
				case runtimeClosed:
					return
				}
			}
			if isClosed(c.stop) {
				// Stopped before it ever ran (or between runs).
				c.markStopped()
				return
			}
			var err error
			p, err = c.start(ended != nil)
			immediate = false
			if err != nil {
				ended = c.recordStartError(err)
				continue
			}
			ended = nil
		}
		outcome, message := c.watchRun(ctx, p)
		if outcome == runtimeClosed {
			return
		}
		ended = c.recordExit(p, message)
		p = nil
		switch outcome {
		case stopRequested:
			c.markStopped()
			return
		case specChanged:
			immediate = true
		}
	}
}

type outcome int

const (
	restartNow outcome = iota
	specChanged
	stopRequested
	runtimeClosed
	processExited
	livenessFailed
)

// waitForRestart decides, after a run ended, when the next one starts:
// now (spec change), after the back-off, or not until the spec or the
// policy changes.
func (c *container) waitForRestart(ctx context.Context, ended *termination, immediate bool, backOff *time.Duration) outcome {
	rt := c.rt
	for {
		rt.mu.Lock()
		changed := c.specHash != c.runHash
		restart := shouldRestart(restartPolicy(c.pod.spec), ended)
		rt.mu.Unlock()
		if immediate || changed {
			return specChanged
		}
		if restart {
			break
		}
		// Terminal for now: keep the terminated state until told otherwise.
		select {
		case <-ctx.Done():
			return runtimeClosed
		case <-c.stop:
			return stopRequested
		case <-c.wake:
		}
	}

	if !ended.FinishedAt.IsZero() && !ended.StartedAt.IsZero() && ended.FinishedAt.Sub(ended.StartedAt) >= rt.opts.BackOffReset {
		*backOff = rt.opts.BackOffInitial
	}
	wait := *backOff
	*backOff = min(2*wait, rt.opts.BackOffMax)
	// The timer runs before the waiting state is shown, so whoever sees the
	// state can count on the timer (tests step a fake clock on it).
	timer := rt.clock.NewTimer(wait)
	defer timer.Stop()
	rt.mu.Lock()
	c.phase = phaseWaiting
	if ended.StartError {
		c.waitReason = ReasonContainerCannotRun
		c.waitMessage = fmt.Sprintf("%s; back-off %v before retrying", ended.Message, wait)
	} else {
		c.waitReason = ReasonCrashLoopBackOff
		c.waitMessage = fmt.Sprintf("back-off %v restarting failed container=%s pod=%s", wait, c.name, c.podRef())
	}
	rt.mu.Unlock()
	rt.notify(c.pod.uid)
	rt.log.Info("container back-off", "pod-uid", c.pod.uid, "container", c.name, "back-off", wait)
	for {
		select {
		case <-ctx.Done():
			return runtimeClosed
		case <-c.stop:
			return stopRequested
		case <-timer.C():
			return restartNow
		case <-c.wake:
			rt.mu.Lock()
			changed := c.specHash != c.runHash
			rt.mu.Unlock()
			if changed {
				return specChanged
			}
		}
	}
}

func shouldRestart(policy string, ended *termination) bool {
	switch policy {
	case wellknown.RestartNever:
		return false
	case wellknown.RestartOnFailure:
		return ended.failed()
	default:
		return true
	}
}

func (c *container) markStopped() {
	c.rt.mu.Lock()
	c.stopped = true
	c.rt.mu.Unlock()
}

// start starts one run of the container. restart counts it in
// restart_count. The process is created held (see shim.go), checkpointed,
// and only then released to run the command, so that at no point can the
// agent die leaving a process that the next agent does not know about.
func (c *container) start(restart bool) (*osProcess, error) {
	rt := c.rt
	rt.mu.Lock()
	spec := c.spec
	hash := c.specHash
	// Recorded before trying: a failed start of this spec is retried with
	// back-off, not at once as if the spec had changed.
	c.runHash = hash
	if restart {
		c.restartCount++
	}
	// Between attempts: not the back-off any more, not running yet.
	c.phase = phaseWaiting
	c.waitReason = ReasonContainerCreating
	c.waitMessage = ""
	keepLog := c.keepLog
	c.keepLog = false
	// A port left without a node port when the range was full may find
	// one now.
	added, portErr := c.pod.ports.ensure(c.pod.spec)
	if added {
		rt.writePodCheckpointLocked(c.pod)
	}
	missing := c.pod.ports.unmapped(spec)
	rt.mu.Unlock()
	if len(missing) > 0 {
		if portErr == nil {
			portErr = ErrNodePortsExhausted
		}
		return nil, fmt.Errorf("no node port for container port %d: %w", missing[0], portErr)
	}

	dir := c.workingDir(spec)
	if spec.GetWorkingDir() == "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create working directory: %w", err)
		}
	}
	if !keepLog {
		c.newLogFile()
	}
	p, held, err := startProcess(launch{
		argv:    append(append([]string(nil), spec.GetCommand()...), spec.GetArgs()...),
		env:     c.environment(spec),
		dir:     dir,
		logPath: c.logPath(),
		marker:  releaseMarkerPath(c.pod.dir, c.name),
		runID:   newRunID(),
	}, rt.clock.Now())
	if err != nil {
		return nil, err
	}
	rt.startStep(stepHeld)
	// Checkpoint before the release: an agent killed from here on leaves
	// the next agent able to adopt the process, or to tell that it never
	// ran the command. Without a checkpoint, the command must not run.
	if err := c.writeCheckpointWith(p, true); err != nil {
		held.abandon()
		waitChild(p.pid)
		return nil, fmt.Errorf("the container's checkpoint could not be written: %w", err)
	}
	rt.startStep(stepCheckpointed)
	if err := held.releaseNow(rt.ctx); errors.Is(err, errReleaseUnconfirmed) {
		rt.log.Warn("container process released, execve not confirmed: watching it as running", "pod-uid", c.pod.uid, "container", c.name, "pid", p.pid, "err", err)
	} else if err != nil {
		waitChild(p.pid)
		return nil, err
	}
	rt.startStep(stepReleased)
	// Released: no longer held, whatever the marker says. Failing, the
	// held checkpoint and the marker still say the same.
	_ = c.writeCheckpointWith(p, false)
	rt.mu.Lock()
	c.proc = p
	c.phase = phaseRunning
	c.runningSince = p.startedAt
	c.readinessOK = false
	c.startError = ""
	rt.mu.Unlock()
	rt.procs.watch(p)
	rt.notify(c.pod.uid)
	rt.log.Info("container started", "pod-uid", c.pod.uid, "container", c.name, "pid", p.pid, "restart-count", c.restartCountForLog())
	return p, nil
}

func (c *container) restartCountForLog() int32 {
	c.rt.mu.Lock()
	defer c.rt.mu.Unlock()
	return c.restartCount
}

func (c *container) recordStartError(err error) *termination {
	rt := c.rt
	now := rt.clock.Now()
	t := &termination{
		ExitCode:   128,
		Reason:     ReasonStartError,
		Message:    err.Error(),
		StartedAt:  now,
		FinishedAt: now,
		StartError: true,
	}
	rt.mu.Lock()
	c.priorTermination, c.lastTermination = c.lastTermination, t
	c.phase = phaseTerminated
	c.startError = err.Error()
	rt.mu.Unlock()
	c.writeCheckpoint()
	rt.notify(c.pod.uid)
	rt.log.Warn("container could not start", "pod-uid", c.pod.uid, "container", c.name, "err", err)
	return t
}

// recordExit turns the exit of p into the container's terminated state.
func (c *container) recordExit(p *osProcess, message string) *termination {
	rt := c.rt
	e := p.exit
	t := &termination{StartedAt: p.startedAt, FinishedAt: e.at}
	switch {
	case !e.known:
		t.ExitCode = -1
		t.Reason = ReasonUnknown
		t.Message = "the process was started by an earlier node agent, so its exit status is unknown"
	case e.signal != 0:
		t.ExitCode = e.code
		t.Signal = int32(e.signal)
		t.Reason = ReasonError
		t.Message = fmt.Sprintf("killed by signal %d (%v)", int(e.signal), e.signal)
	case e.code == 0:
		t.Reason = ReasonCompleted
	default:
		t.ExitCode = e.code
		t.Reason = ReasonError
	}
	if message != "" {
		if t.Message != "" {
			message += "; " + t.Message
		}
		t.Message = message
	}
	rt.mu.Lock()
	if c.proc == p {
		c.proc = nil
	}
	c.priorTermination, c.lastTermination = c.lastTermination, t
	c.phase = phaseTerminated
	c.readinessOK = false
	rt.mu.Unlock()
	c.writeCheckpoint()
	rt.notify(c.pod.uid)
	rt.log.Info("container exited", "pod-uid", c.pod.uid, "container", c.name, "pid", p.pid,
		"exit-code", t.ExitCode, "signal", t.Signal, "reason", t.Reason, "message", t.Message)
	return t
}

// watchRun runs the probes of p and waits for p to end, for a liveness
// failure or a spec change (which stop p with the pod's grace period), for
// a stop request, or for the runtime to close (which leaves p running).
func (c *container) watchRun(ctx context.Context, p *osProcess) (outcome, string) {
	rt := c.rt
	livenessFailures := make(chan string, 1)
	var probes *probeRunner
	startProbes := func(ready bool) {
		rt.mu.Lock()
		spec := c.spec
		rt.mu.Unlock()
		probes = c.startProbes(ctx, spec, ready, livenessFailures)
	}
	// An adopted process keeps the readiness it had (from its checkpoint)
	// until its probe says otherwise.
	rt.mu.Lock()
	ready := p.adopted && c.readinessOK
	rt.mu.Unlock()
	startProbes(ready)
	defer func() { probes.stop() }()

	for {
		select {
		case <-p.exited:
			return processExited, ""
		case <-ctx.Done():
			return runtimeClosed, ""
		case <-c.stop:
			rt.mu.Lock()
			grace := c.stopGrace
			rt.mu.Unlock()
			if !c.terminate(ctx, p, grace) {
				return runtimeClosed, ""
			}
			return stopRequested, "stopped with its pod"
		case why := <-livenessFailures:
			rt.log.Info("liveness probe failed: restarting container", "pod-uid", c.pod.uid, "container", c.name, "probe-result", why)
			if !c.terminate(ctx, p, c.podGrace()) {
				return runtimeClosed, ""
			}
			return livenessFailed, "liveness probe failed: " + why
		case <-c.wake:
			rt.mu.Lock()
			changed := c.specHash != c.runHash
			spec := c.spec
			rt.mu.Unlock()
			if changed {
				rt.log.Info("container spec changed: restarting it", "pod-uid", c.pod.uid, "container", c.name)
				if !c.terminate(ctx, p, c.podGrace()) {
					return runtimeClosed, ""
				}
				return specChanged, "stopped for a spec change"
			}
			if probeHash(spec) != probes.hash {
				probes.stop()
				startProbes(false)
			}
		}
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (c *container) podGrace() time.Duration {
	c.rt.mu.Lock()
	defer c.rt.mu.Unlock()
	return gracePeriod(c.pod.spec)
}

// terminate sends SIGTERM to p's process group and SIGKILL after grace,
// and waits for p to end. False if the runtime closed first.
func (c *container) terminate(ctx context.Context, p *osProcess, grace time.Duration) bool {
	rt := c.rt
	if err := p.signalGroup(syscall.SIGTERM); err != nil {
		rt.log.Warn("SIGTERM failed", "pod-uid", c.pod.uid, "container", c.name, "err", err)
	}
	termAt := rt.clock.Now()
	for graceOver := false; !graceOver; {
		timer := rt.clock.NewTimer(grace - rt.clock.Since(termAt))
		select {
		case <-p.exited:
			timer.Stop()
			return true
		case <-ctx.Done():
			timer.Stop()
			return false
		case <-timer.C():
			graceOver = true
		case <-c.regrace:
			// KillPod during the stop: its grace counts if shorter.
			timer.Stop()
			rt.mu.Lock()
			if c.stopGrace < grace && isClosed(c.stop) {
				grace = c.stopGrace
			}
			rt.mu.Unlock()
		}
	}
	rt.log.Info("grace period over: killing container", "pod-uid", c.pod.uid, "container", c.name, "grace", grace)
	if err := p.signalGroup(syscall.SIGKILL); err != nil {
		rt.log.Warn("SIGKILL failed", "pod-uid", c.pod.uid, "container", c.name, "err", err)
	}
	select {
	case <-p.exited:
		return true
	case <-ctx.Done():
		return false
	}
}

func (c *container) writeCheckpoint() { _ = c.writeCheckpointWith(nil, false) }

// writeCheckpointWith writes the container's checkpoint, and logs a
// failure; starting, if not nil, is a process just started that c does not
// show yet, held in its shim if held.
func (c *container) writeCheckpointWith(starting *osProcess, held bool) error {
	rt := c.rt
	c.checkpointMu.Lock()
	defer c.checkpointMu.Unlock()
	rt.mu.Lock()
	cp := &containerCheckpoint{
		Container:        c.name,
		SpecHash:         c.runHash,
		RestartCount:     c.restartCount,
		LastTermination:  c.lastTermination,
		PriorTermination: c.priorTermination,
	}
	p, ready := c.proc, c.readinessOK
	if starting != nil {
		p, ready = starting, false
	}
	if p != nil {
		cp.Running = true
		cp.BootID = rt.bootID
		cp.PID = p.pid
		cp.StartTicks = p.startTicks
		cp.StartedAt = p.startedAt
		cp.Ready = ready
		cp.RunID = p.runID
		cp.Held = starting != nil && held
		cp.Command = append(append([]string(nil), c.spec.GetCommand()...), c.spec.GetArgs()...)
	}
	rt.mu.Unlock()
	if err := writeContainerCheckpoint(containerCheckpointPath(c.pod.dir, c.name), cp); err != nil {
		rt.log.Error("container checkpoint not written: a restarted agent may not adopt it", "pod-uid", c.pod.uid, "container", c.name, "err", err)
		return err
	}
	return nil
}

func probeHash(spec *capstanv1.Container) string {
	data, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&capstanv1.Container{
		LivenessProbe:  spec.GetLivenessProbe(),
		ReadinessProbe: spec.GetReadinessProbe(),
	})
	return string(data)
}
