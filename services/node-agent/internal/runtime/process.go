package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/utils/clock"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Errors of the process runtime.
var (
	// ErrClosed: the runtime was closed.
	ErrClosed = errors.New("runtime: closed")
	// ErrPodStopping: SyncPod of a pod that KillPod is stopping.
	ErrPodStopping = errors.New("runtime: pod is being stopped")
)

// Defaults of ProcessOptions.
const (
	DefaultMaxLogBytes         = 10 << 20
	DefaultBackOffInitial      = time.Second
	DefaultBackOffMax          = 60 * time.Second
	DefaultBackOffReset        = 10 * time.Minute
	DefaultProcessPollInterval = 500 * time.Millisecond
	DefaultLogFollowInterval   = 250 * time.Millisecond
	DefaultLogRotateInterval   = time.Second
	// defaultGracePeriod applies when a pod does not set
	// termination_grace_period_seconds (liveness and spec-change restarts).
	defaultGracePeriod = 30 * time.Second
)

// ProcessOptions configure NewProcessRuntime. StateDir and NodeName are
// required; zero values of the rest mean their defaults.
type ProcessOptions struct {
	// StateDir holds checkpoints, logs and default working directories.
	// The next runtime on the same StateDir adopts the processes.
	StateDir string
	// NodeName is given to every container as CAPSTAN_NODE_NAME.
	NodeName string
	// Logger; slog.Default() if nil.
	Logger *slog.Logger
	// Clock times back-off, probes, grace periods and polling; the real
	// clock if nil.
	Clock clock.WithTicker
	// MaxLogBytes caps a container's log file: when it is larger, it is
	// copied to <container>.log.1 and truncated (checked every
	// LogRotateInterval, so it can overshoot by what is written meanwhile).
	MaxLogBytes int64
	// BackOffInitial is the wait before the first restart; each further
	// restart waits twice as long, up to BackOffMax. A run that lasted
	// BackOffReset or longer resets it to BackOffInitial.
	BackOffInitial time.Duration
	BackOffMax     time.Duration
	BackOffReset   time.Duration
	// ProcessPollInterval: how often adopted processes (which are not the
	// agent's children) are checked through /proc; children are also
	// checked on every SIGCHLD.
	ProcessPollInterval time.Duration
	// LogFollowInterval: how often a followed log is checked for output.
	LogFollowInterval time.Duration
	// LogRotateInterval: how often log sizes are checked.
	LogRotateInterval time.Duration
	// NodePortRange is where the node ports of declared container ports
	// come from (DefaultNodePortRange if zero). It should lie outside the
	// kernel's ephemeral port range (CheckNodePortRange); ports of it inside
	// that range are never allocated. Agents sharing a machine need
	// disjoint ranges.
	NodePortRange PortRange

	// startHook, if set, is called at each step of a container start
	// (tests kill the agent there).
	startHook func(startStep)
}

func (o *ProcessOptions) validate() error {
	if o.StateDir == "" {
		return errors.New("runtime: ProcessOptions.StateDir is required")
	}
	if o.NodeName == "" {
		return errors.New("runtime: ProcessOptions.NodeName is required")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"BackOffInitial", o.BackOffInitial}, {"BackOffMax", o.BackOffMax}, {"BackOffReset", o.BackOffReset},
		{"ProcessPollInterval", o.ProcessPollInterval}, {"LogFollowInterval", o.LogFollowInterval},
		{"LogRotateInterval", o.LogRotateInterval},
	} {
		if d.v < 0 {
			return fmt.Errorf("runtime: ProcessOptions.%s is negative (%v)", d.name, d.v)
		}
	}
	if o.MaxLogBytes < 0 {
		return fmt.Errorf("runtime: ProcessOptions.MaxLogBytes is negative (%d)", o.MaxLogBytes)
	}
	if o.NodePortRange == (PortRange{}) {
		o.NodePortRange = DefaultNodePortRange
	}
	if err := o.NodePortRange.validate(); err != nil {
		return fmt.Errorf("runtime: ProcessOptions.NodePortRange: %w", err)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	setDefault(&o.MaxLogBytes, DefaultMaxLogBytes)
	setDefault(&o.BackOffInitial, DefaultBackOffInitial)
	setDefault(&o.BackOffMax, DefaultBackOffMax)
	setDefault(&o.BackOffReset, DefaultBackOffReset)
	setDefault(&o.ProcessPollInterval, DefaultProcessPollInterval)
	setDefault(&o.LogFollowInterval, DefaultLogFollowInterval)
	setDefault(&o.LogRotateInterval, DefaultLogRotateInterval)
	if o.BackOffMax < o.BackOffInitial {
		return fmt.Errorf("runtime: ProcessOptions.BackOffMax (%v) is less than BackOffInitial (%v)", o.BackOffMax, o.BackOffInitial)
	}
	abs, err := filepath.Abs(o.StateDir)
	if err != nil {
		return fmt.Errorf("runtime: StateDir: %w", err)
	}
	o.StateDir = abs
	return nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// ProcessRuntime runs each container as a local process; see
// NewProcessRuntime for what it does.
//
// Concurrency: every method is safe for concurrent use. One supervisor
// goroutine per container starts, watches and restarts its process (and
// runs up to two probe goroutines while it runs); one goroutine notices
// process exits (processWatcher), one rotates logs, one feeds Changes. All
// pod and container state is guarded by mu; no file or process work is
// done under it except creating a pod's directory, allocating node ports
// (bind probes) and writing the pod checkpoint, and killing never-released
// holding shims on adoption. Close stops every goroutine and leaves the
// processes alone.
type ProcessRuntime struct {
	opts      ProcessOptions
	log       *slog.Logger
	clock     clock.WithTicker
	bootID    string
	procs     *processWatcher
	changes   *changeQueue
	probes    *http.Client
	nodePorts *nodePorts

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	pods   map[string]*pod // by uid
}

var _ Runtime = (*ProcessRuntime)(nil)

// pod is one pod the runtime runs. Its fields after the identity are
// guarded by ProcessRuntime.mu.
type pod struct {
	uid, namespace, name string
	dir                  string
	startTime            time.Time

	spec       *capstanv1.PodSpec
	ports      *portMap     // declared container ports → node ports
	containers []*container // spec order
	stopping   []*container // dropped from the spec, being stopped
	killing    bool         // KillPod has begun: no more SyncPod
}

// writePodCheckpointLocked writes the pod checkpoint: its identity, spec and
// node ports. Failing, it is logged: without it a restarted agent cannot
// adopt the pod, but the pod itself can run.
func (rt *ProcessRuntime) writePodCheckpointLocked(p *pod) {
	saved := &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Uid: p.uid, Name: p.name, Namespace: p.namespace},
		Spec:     p.spec,
	}
	if err := writePodCheckpoint(p.dir, p.startTime, saved, p.ports.snapshot()); err != nil {
		rt.log.Error("pod checkpoint not written", "pod-uid", p.uid, "err", err)
	}
}

// NewProcessRuntime returns a runtime that runs containers as processes
// and keeps its state under opts.StateDir. It adopts every process that a
// previous runtime on the same StateDir started and that still runs (same
// pid, same start time, same boot), and resumes supervising it: probes,
// restarts and logs continue as before, and SyncPod with an unchanged spec
// leaves it alone.
//
// Behaviour choices:
//   - Each container is a process in its own session (so its own process
//     group), with stdin /dev/null and stdout and stderr appended to its log
//     file; nothing ties it to the agent, so it survives the agent's death.
//     When the process exits, whatever is left in its group is SIGKILLed.
//   - Environment: PATH, HOME, TMPDIR, LANG and TZ of the agent (PATH
//     defaults to /usr/local/sbin:...:/bin), then PORT (the first declared
//     container_port, if any), CAPSTAN_POD_NAME, CAPSTAN_POD_NAMESPACE,
//     CAPSTAN_POD_UID, CAPSTAN_NODE_NAME, then the spec's env, which wins.
//     A command without a slash is looked up in that PATH.
//   - Restarts follow the pod's restart policy (Always, the default;
//     OnFailure: non-zero, signalled, unknown exits and start errors; Never).
//     Every restart waits a back-off (see ProcessOptions), shown as
//     Waiting{CrashLoopBackOff, "back-off 4s restarting failed
//     container=NAME pod=NAMESPACE/NAME"}. A container whose spec changed
//     (command, args, env, PORT or working dir) is stopped and started
//     again at once, whatever the policy; a probe change does not restart.
//   - A command that cannot be started ends the attempt as
//     Terminated{exit_code 128, reason StartError, message: the exec
//     error}; while waiting to retry, the container is
//     Waiting{ContainerCannotRun, "<exec error>; back-off 2s before
//     retrying"} and PodStatus has Reason "StartError" and the message.
//   - The exit status of an adopted process is unknown (only the parent
//     can learn it): it is reported as exit_code -1, reason "Unknown", and
//     counts as a failure for OnFailure.
//   - restart_count counts starts after the first, failed starts included.
//   - Probes start with the container: readiness is false until it passes
//     (true at once without a probe); liveness failing failure_threshold
//     times stops the container with the pod's grace period and the policy
//     decides about the restart.
//   - KillPod removes the pod's directory (logs included) once every
//     container is gone, and releases the pod's node ports.
//   - Node ports: every declared container port gets a port of
//     opts.NodePortRange that no pod of the node holds, that the kernel
//     does not hand to outgoing connections (its ephemeral range) and that
//     no other program holds (a bind probe); a declared host_port is used
//     as is. Each is held in a node-wide set from the pod's acceptance (or
//     its adoption, from its checkpoint) until KillPod removes the pod. A
//     container whose port finds no free node port does not start:
//     Waiting{ContainerCannotRun, "no node port for container port 8080:
//     ...; back-off 2s before retrying"}, retried as a start error.
//   - Start without a window: a container's process is created as a
//     holding shim (this program, re-executed, see shim.go) in its own
//     session, its checkpoint (pid, start time, boot id) is written, and
//     only then is it released to execve() the command, keeping pid and
//     start time. An agent that dies before the release leaves a shim that
//     exits without running anything, and the next agent starts the
//     container once; one that dies after it leaves a process the next
//     agent adopts.
func NewProcessRuntime(opts ProcessOptions) (*ProcessRuntime, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	log := opts.Logger.With("subsystem", "process-runtime")
	kernel, err := readKernelPorts()
	if err != nil {
		log.Warn("the kernel's ephemeral port range is unknown: node ports are not kept out of it", "err", err)
	}
	if err := kernel.inRange(opts.NodePortRange); err != nil {
		return nil, fmt.Errorf("runtime: ProcessOptions.NodePortRange: %w", err)
	}
	if usable := kernel.usable(opts.NodePortRange); usable < opts.NodePortRange.Size() {
		log.Warn("the node port range overlaps the kernel's ephemeral port range: the ports they share are not used",
			"node-port-range", opts.NodePortRange.String(), "ephemeral-port-range", kernel.ephemeral.String(), "usable-node-ports", usable)
	}
	if err := os.MkdirAll(filepath.Join(opts.StateDir, "pods"), 0o755); err != nil {
		return nil, fmt.Errorf("runtime: create state directory: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rt := &ProcessRuntime{
		opts:   opts,
		log:    log,
		clock:  opts.Clock,
		bootID: readBootID(),
		procs:  newProcessWatcher(opts.Clock, opts.ProcessPollInterval, log),
		probes: &http.Client{
			// No idle connections: probes are rare and nothing lingers
			// after Close.
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
			// A redirect is an answer (3xx counts as success); following
			// it could leave the pod.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		nodePorts: newNodePorts(opts.NodePortRange, kernel, log),
		ctx:       ctx,
		cancel:    cancel,
		pods:      map[string]*pod{},
	}
	rt.changes = newChangeQueue()
	rt.goRun(rt.procs.run)
	rt.goRun(rt.changes.run)
	rt.goRun(rt.rotateLogsLoop)
	rt.adoptAll()
	return rt, nil
}

func (rt *ProcessRuntime) goRun(f func(ctx context.Context)) {
	rt.wg.Add(1)
	go func() {
		defer rt.wg.Done()
		f(rt.ctx)
	}()
}

func (rt *ProcessRuntime) podsDir() string { return filepath.Join(rt.opts.StateDir, "pods") }

// notify tells Changes readers that the pod changed.
func (rt *ProcessRuntime) notify(uid string) { rt.changes.add(uid) }

// Changes implements Runtime. The channel is closed by Close.
func (rt *ProcessRuntime) Changes() <-chan string { return rt.changes.out }

// Close implements Runtime: the runtime's goroutines stop, processes keep
// running, and a runtime created later on the same StateDir adopts them.
func (rt *ProcessRuntime) Close() error {
	rt.mu.Lock()
	if rt.closed {
		rt.mu.Unlock()
		return nil
	}
	rt.closed = true
	rt.mu.Unlock()
	rt.cancel()
	rt.wg.Wait()
	close(rt.changes.out)
	return nil
}

// Pods implements Runtime; the uids are sorted.
func (rt *ProcessRuntime) Pods() []string {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	uids := make([]string, 0, len(rt.pods))
	for uid := range rt.pods {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	return uids
}

// PodStatus implements Runtime.
func (rt *ProcessRuntime) PodStatus(uid string) *PodStatus {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	p := rt.pods[uid]
	if p == nil {
		return nil
	}
	st := &PodStatus{StartTime: p.startTime}
	for _, c := range p.containers {
		st.Containers = append(st.Containers, c.statusLocked())
		if c.startError != "" && st.Message == "" {
			st.Reason = ReasonStartError
			st.Message = fmt.Sprintf("container %s: %s", c.name, c.startError)
		}
	}
	return st
}

// validatePod checks what the runtime relies on; the API server has
// validated the rest.
func validatePod(pod *capstanv1.Pod) error {
	uid := pod.GetMetadata().GetUid()
	if uid == "" {
		return errors.New("runtime: pod has no metadata.uid")
	}
	if !safePathElement(uid) {
		return fmt.Errorf("runtime: pod uid %q is not usable as a directory name", uid)
	}
	if len(pod.GetSpec().GetContainers()) == 0 {
		return fmt.Errorf("runtime: pod %s has no containers", uid)
	}
	seen := map[string]bool{}
	for i, c := range pod.GetSpec().GetContainers() {
		if !safePathElement(c.GetName()) {
			return fmt.Errorf("runtime: pod %s: spec.containers[%d].name %q is not usable as a file name", uid, i, c.GetName())
		}
		if seen[c.GetName()] {
			return fmt.Errorf("runtime: pod %s: container name %q is used twice", uid, c.GetName())
		}
		seen[c.GetName()] = true
	}
	return nil
}

func safePathElement(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, `/\`+"\x00")
}

// SyncPod implements Runtime. It returns an error only for a pod it cannot
// run at all (no uid, no containers, duplicate container names), for a pod
// being stopped (ErrPodStopping) or after Close (ErrClosed); failures to
// start a container are reported in PodStatus.
func (rt *ProcessRuntime) SyncPod(ctx context.Context, want *capstanv1.Pod) error {
	if err := validatePod(want); err != nil {
		return err
	}
	uid := want.GetMetadata().GetUid()
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.closed {
		return ErrClosed
	}
	p := rt.pods[uid]
	if p == nil {
		p = &pod{
			uid:       uid,
			namespace: want.GetMetadata().GetNamespace(),
			name:      want.GetMetadata().GetName(),
			dir:       filepath.Join(rt.podsDir(), uid),
			startTime: rt.clock.Now(),
			ports:     newPortMap(rt.nodePorts, uid, nil),
		}
		if err := os.MkdirAll(p.dir, 0o755); err != nil {
			return fmt.Errorf("runtime: create pod directory: %w", err)
		}
		rt.pods[uid] = p
		rt.log.Info("pod accepted", "pod", p.namespace+"/"+p.name, "pod-uid", uid)
	}
	if p.killing {
		return fmt.Errorf("%w: %s", ErrPodStopping, uid)
	}
	if proto.Equal(p.spec, want.GetSpec()) {
		return nil
	}
	spec := proto.CloneOf(want.GetSpec())
	if _, err := p.ports.ensure(spec); err != nil {
		// The containers of the ports left without one report it when they
		// try to start, and try again then.
		rt.log.Warn("pod accepted without all its node ports", "pod-uid", uid, "err", err)
	}
	p.spec = spec
	rt.writePodCheckpointLocked(p)
	rt.applySpecLocked(p, spec)
	rt.notify(uid)
	return nil
}

// applySpecLocked makes p's containers follow spec: new ones start,
// dropped ones stop, changed ones are told so.
func (rt *ProcessRuntime) applySpecLocked(p *pod, spec *capstanv1.PodSpec) {
	p.spec = spec
	existing := map[string]*container{}
	for _, c := range p.containers {
		existing[c.name] = c
	}
	next := make([]*container, 0, len(spec.GetContainers()))
	for _, cs := range spec.GetContainers() {
		c := existing[cs.GetName()]
		delete(existing, cs.GetName())
		if c == nil {
			c = rt.newContainer(p, cs.GetName())
			c.setSpecLocked(cs)
			rt.startSupervisor(c, nil, nil)
		} else {
			c.setSpecLocked(cs)
			c.poke()
		}
		next = append(next, c)
	}
	p.containers = next
	for _, c := range existing {
		c.stopLocked(gracePeriod(spec))
		p.stopping = append(p.stopping, c)
		rt.wg.Add(1)
		go func() {
			defer rt.wg.Done()
			select {
			case <-c.done:
			case <-rt.ctx.Done():
				return
			}
			for _, path := range []string{containerCheckpointPath(p.dir, c.name), releaseMarkerPath(p.dir, c.name)} {
				if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
					rt.log.Warn("checkpoint of removed container not deleted", "pod-uid", p.uid, "container", c.name, "path", path, "err", err)
				}
			}
			rt.mu.Lock()
			p.stopping = slices.DeleteFunc(p.stopping, func(s *container) bool { return s == c })
			rt.mu.Unlock()
		}()
	}
}

func gracePeriod(spec *capstanv1.PodSpec) time.Duration {
	if spec != nil && spec.TerminationGracePeriodSeconds != nil {
		return max(0, time.Duration(spec.GetTerminationGracePeriodSeconds())*time.Second)
	}
	return defaultGracePeriod
}

// KillPod implements Runtime. A second KillPod while the first is still
// stopping the pod waits for the same stop; a shorter grace shortens it. If
// ctx ends first, the stop goes on and the pod stays known, so KillPod can
// be called again. Once every container is gone the pod's directory
// (checkpoints and logs) is removed.
func (rt *ProcessRuntime) KillPod(ctx context.Context, uid string, grace time.Duration) error {
	rt.mu.Lock()
	if rt.closed {
		rt.mu.Unlock()
		return ErrClosed
	}
	p := rt.pods[uid]
	if p == nil {
		rt.mu.Unlock()
		return nil
	}
	if !p.killing {
		p.killing = true
		rt.log.Info("stopping pod", "pod", p.namespace+"/"+p.name, "pod-uid", uid, "grace", grace)
	}
	for _, c := range slices.Concat(p.containers, p.stopping) {
		c.stopLocked(grace)
	}
	all := slices.Concat(p.containers, p.stopping)
	rt.mu.Unlock()
	rt.notify(uid)

	for _, c := range all {
		select {
		case <-c.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	rt.mu.Lock()
	for _, c := range all {
		if !c.stopped {
			// The supervisor returned because the runtime closed, not
			// because the process is gone.
			rt.mu.Unlock()
			return ErrClosed
		}
	}
	if rt.pods[uid] == p {
		delete(rt.pods, uid)
		rt.nodePorts.release(uid)
	}
	rt.mu.Unlock()
	if err := os.RemoveAll(p.dir); err != nil {
		rt.log.Warn("pod directory not removed", "pod-uid", uid, "err", err)
	}
	rt.log.Info("pod stopped", "pod", p.namespace+"/"+p.name, "pod-uid", uid)
	rt.notify(uid)
	return nil
}

// adoptAll resumes every pod checkpointed under StateDir.
func (rt *ProcessRuntime) adoptAll() {
	entries, err := os.ReadDir(rt.podsDir())
	if err != nil {
		rt.log.Error("state directory not readable: no pods adopted", "err", err)
		return
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(rt.podsDir(), e.Name())
		startTime, spec, ports, err := readPodCheckpoint(dir)
		if err == nil {
			err = validatePod(spec)
		}
		if err == nil && spec.GetMetadata().GetUid() != e.Name() {
			err = fmt.Errorf("checkpoint is of pod %s", spec.GetMetadata().GetUid())
		}
		if err != nil {
			rt.log.Warn("pod directory without a usable checkpoint: skipped", "dir", dir, "err", err)
			continue
		}
		rt.adoptPod(dir, startTime, spec, ports)
	}
}

func (rt *ProcessRuntime) adoptPod(dir string, startTime time.Time, saved *capstanv1.Pod, ports map[int32]int32) {
	p := &pod{
		uid:       saved.GetMetadata().GetUid(),
		namespace: saved.GetMetadata().GetNamespace(),
		name:      saved.GetMetadata().GetName(),
		dir:       dir,
		startTime: startTime,
		spec:      saved.GetSpec(),
		ports:     newPortMap(rt.nodePorts, saved.GetMetadata().GetUid(), ports),
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.pods[p.uid] = p
	inSpec := map[string]bool{}
	adopted := 0
	for _, cs := range p.spec.GetContainers() {
		inSpec[cs.GetName()] = true
		c := rt.newContainer(p, cs.GetName())
		c.setSpecLocked(cs)
		p.containers = append(p.containers, c)
		cp, err := readContainerCheckpoint(containerCheckpointPath(dir, c.name))
		if err != nil {
			rt.log.Warn("container checkpoint unreadable: starting it afresh", "pod-uid", p.uid, "container", c.name, "err", err)
		}
		if cp == nil {
			// No run was recorded: a log there is of a start cut short
			// before its checkpoint, which ran nothing.
			c.keepLog = true
			rt.startSupervisor(c, nil, nil)
			continue
		}
		c.restartCount = cp.RestartCount
		c.lastTermination = cp.LastTermination
		c.priorTermination = cp.PriorTermination
		c.runHash = cp.SpecHash
		var proc *osProcess
		var ended *termination
		switch {
		case cp.Running && cp.Held && !shimReleased(releaseMarkerPath(dir, c.name), cp.RunID):
			// The previous agent died between creating the process and
			// releasing it: the command never ran. A shim still there reads
			// EOF and exits by itself; it is killed so that it is gone for
			// sure (it ran nothing, and one released just now has run the
			// command for an instant at most), and the attempt is made
			// again as if it had not begun.
			if rt.stillRunning(cp) {
				if err := syscall.Kill(-cp.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
					rt.log.Warn("kill of an unreleased container process failed", "pod-uid", p.uid, "container", c.name, "pid", cp.PID, "err", err)
				}
			}
			c.keepLog = true
			rt.log.Info("container start was cut short before its release: starting it again", "pod-uid", p.uid, "container", c.name, "pid", cp.PID)
		case cp.Running && rt.stillRunning(cp):
			proc = &osProcess{pid: cp.PID, startTicks: cp.StartTicks, startedAt: cp.StartedAt, runID: cp.RunID, adopted: true, exited: make(chan struct{})}
			rt.procs.watch(proc)
			c.proc = proc
			c.phase = phaseRunning
			c.runningSince = cp.StartedAt
			c.readinessOK = cp.Ready
			adopted++
		case cp.Running:
			ended = &termination{
				ExitCode:   -1,
				Reason:     ReasonUnknown,
				Message:    "the process ended while no node agent watched it: exit status unknown",
				StartedAt:  cp.StartedAt,
				FinishedAt: rt.clock.Now(),
			}
			c.priorTermination, c.lastTermination = c.lastTermination, ended
			c.phase = phaseTerminated
		case cp.LastTermination != nil:
			ended = cp.LastTermination
			c.phase = phaseTerminated
		}
		rt.startSupervisor(c, proc, ended)
		// The spec may have changed after the process started (the agent
		// died in between): let the supervisor compare.
		c.poke()
	}
	rt.log.Info("pod adopted", "pod", p.namespace+"/"+p.name, "pod-uid", p.uid, "running-processes", adopted)
	// A container dropped from the spec while the previous agent was
	// stopping it: finish the job.
	matches, _ := filepath.Glob(filepath.Join(dir, "*"+containerCheckpointExt))
	for _, path := range matches {
		name := strings.TrimSuffix(filepath.Base(path), containerCheckpointExt)
		if inSpec[name] {
			continue
		}
		if cp, err := readContainerCheckpoint(path); err == nil && cp != nil && cp.Running && rt.stillRunning(cp) {
			rt.log.Warn("killing the process of a container no longer in its pod", "pod-uid", p.uid, "container", name, "pid", cp.PID)
			if err := syscall.Kill(-cp.PID, syscall.SIGKILL); err != nil {
				rt.log.Warn("kill failed", "pid", cp.PID, "err", err)
			}
		}
		for _, path := range []string{path, releaseMarkerPath(dir, name)} {
			if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
				rt.log.Warn("checkpoint of removed container not deleted", "path", path, "err", err)
			}
		}
	}
	rt.notify(p.uid)
}

// stillRunning: the checkpointed process is alive and is the same process
// (not another one that got its pid).
func (rt *ProcessRuntime) stillRunning(cp *containerCheckpoint) bool {
	if cp.PID <= 0 || (cp.BootID != "" && rt.bootID != "" && cp.BootID != rt.bootID) {
		return false
	}
	st, err := readProcStat(cp.PID)
	return err == nil && st.startTicks == cp.StartTicks && !st.dead()
}

func timestampOrNil(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// baseEnv is what a container inherits from the agent's environment.
func baseEnv() [][2]string {
	var env [][2]string
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	env = append(env, [2]string{"PATH", path})
	for _, k := range []string{"HOME", "TMPDIR", "LANG", "TZ"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, [2]string{k, v})
		}
	}
	return env
}

// Environment variables the runtime gives every container.
const (
	EnvPort         = "PORT"
	EnvPodName      = "CAPSTAN_POD_NAME"
	EnvPodNamespace = "CAPSTAN_POD_NAMESPACE"
	EnvPodUID       = "CAPSTAN_POD_UID"
	EnvNodeName     = "CAPSTAN_NODE_NAME"
)

// Reasons the runtime reports.
const (
	ReasonContainerCreating  = "ContainerCreating"
	ReasonCrashLoopBackOff   = "CrashLoopBackOff"
	ReasonContainerCannotRun = "ContainerCannotRun"
	ReasonStartError         = "StartError"
	ReasonCompleted          = "Completed"
	ReasonError              = "Error"
	ReasonUnknown            = "Unknown"
)

// restartPolicy returns the pod's policy with the default applied.
func restartPolicy(spec *capstanv1.PodSpec) string {
	if p := spec.GetRestartPolicy(); p != "" {
		return p
	}
	return wellknown.RestartAlways
}
