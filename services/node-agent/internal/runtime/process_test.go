package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	testclock "k8s.io/utils/clock/testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

func TestNewProcessRuntimeRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		opts ProcessOptions
		want string
	}{
		{"no state dir", ProcessOptions{NodeName: "n"}, "StateDir is required"},
		{"no node name", ProcessOptions{StateDir: t.TempDir()}, "NodeName is required"},
		{"negative back-off", ProcessOptions{StateDir: t.TempDir(), NodeName: "n", BackOffInitial: -time.Second}, "BackOffInitial is negative"},
		{"max below initial", ProcessOptions{StateDir: t.TempDir(), NodeName: "n", BackOffInitial: time.Minute, BackOffMax: time.Second}, "BackOffMax (1s) is less than BackOffInitial (1m0s)"},
		{"negative log size", ProcessOptions{StateDir: t.TempDir(), NodeName: "n", MaxLogBytes: -1}, "MaxLogBytes is negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, err := NewProcessRuntime(tt.opts)
			if err == nil {
				rt.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestSyncPodRejectsUnrunnablePods(t *testing.T) {
	rt := newRuntime(t, fastOptions(t))
	tests := []struct {
		name string
		pod  *capstanv1.Pod
	}{
		{"no uid", &capstanv1.Pod{Metadata: &capstanv1.ObjectMeta{Name: "x"}, Spec: &capstanv1.PodSpec{Containers: []*capstanv1.Container{shell("a", "true")}}}},
		{"uid with a slash", testPod("../x", "", 1, shell("a", "true"))},
		{"no containers", testPod("u1", "", 1)},
		{"duplicate names", testPod("u2", "", 1, shell("a", "true"), shell("a", "true"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := rt.SyncPod(context.Background(), tt.pod); err == nil {
				t.Error("accepted")
			}
		})
	}
	if pods := rt.Pods(); len(pods) != 0 {
		t.Errorf("Pods() = %v after rejected pods", pods)
	}
}

// TestStartRunning: a container runs as its own process group with the
// environment, working directory and log the runtime promises; SyncPod
// again changes nothing; KillPod stops it and forgets the pod.
func TestStartRunning(t *testing.T) {
	rt := newRuntime(t, fastOptions(t))
	app := shell("app", `echo "env $PORT $CAPSTAN_POD_NAME $CAPSTAN_POD_NAMESPACE $CAPSTAN_NODE_NAME $GREETING"; echo "cwd $(pwd)"; echo oops >&2; exec sleep 300`)
	app.Env = []*capstanv1.EnvVar{{Name: "GREETING", Value: "hello"}}
	app.Ports = []*capstanv1.ContainerPort{{ContainerPort: 8081}, {ContainerPort: 9090}}
	pod := testPod("u-start", "", 1, app)
	syncPod(t, rt, pod)

	select {
	case uid := <-rt.Changes():
		if uid != "u-start" {
			t.Errorf("Changes() delivered %q", uid)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no change notification")
	}
	cs := waitContainer(t, rt, "u-start", "app", "running", isRunning)
	if !cs.GetReady() || !cs.GetStarted() || cs.GetRestartCount() != 0 {
		t.Errorf("running container without a readiness probe: %s; want ready, started, no restarts", describe(cs))
	}
	pid := pidOf(rt, "u-start", "app")
	if pgid, err := syscall.Getpgid(pid); err != nil || pgid != pid {
		t.Errorf("process group of %d = %d (%v), want its own", pid, pgid, err)
	}
	if sid, err := unix.Getsid(pid); err != nil || sid != pid {
		t.Errorf("session of %d = %d (%v), want its own", pid, sid, err)
	}
	poll.For(t, waitTimeout, `"oops" in the log`, func(context.Context) error {
		if out := logsOf(t, rt, "u-start", "app", LogOptions{TailLines: -1}); !strings.Contains(out, "oops") {
			return fmt.Errorf("log %q", out)
		}
		return nil
	})
	out := logsOf(t, rt, "u-start", "app", LogOptions{TailLines: -1})
	// PORT is the node port the runtime gave declared port 8081.
	if len(cs.GetPorts()) == 0 || cs.GetPorts()[0].GetContainerPort() != 8081 || cs.GetPorts()[0].GetHostPort() <= 0 {
		t.Fatalf("container ports %v, want 8081 mapped to a node port", cs.GetPorts())
	}
	nodePort := strconv.Itoa(int(cs.GetPorts()[0].GetHostPort()))
	for _, want := range []string{
		"env " + nodePort + " pod-u-start default " + testNode + " hello",
		"cwd " + workDir(rt, "u-start"),
		"oops",
	} {
		if !hasLine(out, want) {
			t.Errorf("log lacks line %q:\n%s", want, out)
		}
	}
	if st := rt.PodStatus("u-start"); st.StartTime.IsZero() || st.Message != "" {
		t.Errorf("PodStatus = %+v", st)
	}

	syncPod(t, rt, proto.CloneOf(pod))
	if got := pidOf(rt, "u-start", "app"); got != pid {
		t.Errorf("SyncPod with the same spec changed the process: pid %d, was %d", got, pid)
	}

	if err := rt.KillPod(context.Background(), "u-start", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if processAlive(pid) {
		t.Errorf("pid %d alive after KillPod", pid)
	}
	if st := rt.PodStatus("u-start"); st != nil || len(rt.Pods()) != 0 {
		t.Errorf("pod still known after KillPod: %v %v", st, rt.Pods())
	}
	if _, err := os.Stat(filepath.Join(rt.opts.StateDir, "pods", "u-start")); !os.IsNotExist(err) {
		t.Errorf("pod directory after KillPod: %v", err)
	}
	if err := rt.KillPod(context.Background(), "u-start", time.Second); err != nil {
		t.Errorf("second KillPod: %v", err)
	}
}

// TestRestartPolicies: which exits restart under which policy, with the
// restart count and the last termination.
func TestRestartPolicies(t *testing.T) {
	tests := []struct {
		policy      string
		exit        int
		wantRestart bool
		wantReason  string
	}{
		{wellknown.RestartAlways, 0, true, ReasonCompleted},
		{wellknown.RestartAlways, 3, true, ReasonError},
		{"", 3, true, ReasonError}, // the default is Always
		{wellknown.RestartOnFailure, 3, true, ReasonError},
		{wellknown.RestartOnFailure, 0, false, ReasonCompleted},
		{wellknown.RestartNever, 3, false, ReasonError},
		{wellknown.RestartNever, 0, false, ReasonCompleted},
	}
	for _, tt := range tests {
		t.Run(tt.policy+"/exit-"+strconv.Itoa(tt.exit), func(t *testing.T) {
			t.Parallel()
			rt := newRuntime(t, fastOptions(t))
			syncPod(t, rt, testPod("u", tt.policy, 1, shell("app", "exit "+strconv.Itoa(tt.exit))))
			checkTermination := func(term *capstanv1.ContainerStateTerminated) {
				t.Helper()
				if term.GetExitCode() != int32(tt.exit) || term.GetReason() != tt.wantReason || term.GetSignal() != 0 {
					t.Errorf("termination %v, want exit %d reason %s", term, tt.exit, tt.wantReason)
				}
				if term.GetStartedAt() == nil || term.GetFinishedAt() == nil {
					t.Errorf("termination without times: %v", term)
				}
			}
			if tt.wantRestart {
				cs := waitContainer(t, rt, "u", "app", "3 restarts", func(cs *capstanv1.ContainerStatus) bool {
					return cs.GetRestartCount() >= 3 && cs.GetLastState().GetTerminated() != nil
				})
				checkTermination(cs.GetLastState().GetTerminated())
				return
			}
			cs := waitContainer(t, rt, "u", "app", "terminated", func(cs *capstanv1.ContainerStatus) bool {
				return cs.GetState().GetTerminated() != nil
			})
			checkTermination(cs.GetState().GetTerminated())
			// Many back-off periods later it is still the same run.
			deadline := time.Now().Add(20 * rt.opts.BackOffMax)
			for time.Now().Before(deadline) {
				if cs := containerStatus(rt, "u", "app"); cs.GetRestartCount() != 0 || cs.GetState().GetTerminated() == nil || cs.GetReady() {
					t.Fatalf("restarted under %s: %s", tt.policy, describe(cs))
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestCrashLoopBackOff steps a fake clock through the back-off: 1s, 2s,
// 4s, then 4s again (the maximum), each shown as CrashLoopBackOff.
func TestCrashLoopBackOff(t *testing.T) {
	fake := testclock.NewFakeClock(time.Now())
	opts := fastOptions(t)
	opts.Clock = fake
	opts.BackOffInitial = time.Second
	opts.BackOffMax = 4 * time.Second
	rt := newRuntime(t, opts)
	syncPod(t, rt, testPod("u-crash", wellknown.RestartAlways, 1, shell("app", "exit 1")))

	for i, wait := range []string{"1s", "2s", "4s", "4s"} {
		want := "back-off " + wait + " restarting failed container=app pod=default/pod-u-crash"
		cs := waitContainer(t, rt, "u-crash", "app", "waiting "+want, func(cs *capstanv1.ContainerStatus) bool {
			w := cs.GetState().GetWaiting()
			return w.GetReason() == ReasonCrashLoopBackOff && w.GetMessage() == want && cs.GetRestartCount() == int32(i)
		})
		if term := cs.GetLastState().GetTerminated(); term.GetExitCode() != 1 || term.GetReason() != ReasonError {
			t.Errorf("last state %v, want exit 1", term)
		}
		if cs.GetReady() || cs.GetStarted() {
			t.Errorf("waiting container is ready or started: %s", describe(cs))
		}
		d, _ := time.ParseDuration(wait)
		fake.Step(d)
	}
}

// TestStartError: a command that cannot be executed is reported with the
// exec error, retried only after a back-off, and the runtime carries on.
func TestStartError(t *testing.T) {
	t.Run("retried with back-off", func(t *testing.T) {
		fake := testclock.NewFakeClock(time.Now())
		opts := fastOptions(t)
		opts.Clock = fake
		opts.BackOffInitial = time.Second
		opts.BackOffMax = time.Minute
		rt := newRuntime(t, opts)
		syncPod(t, rt, testPod("u-missing", wellknown.RestartAlways, 1,
			&capstanv1.Container{Name: "app", Command: []string{"/nonexistent/bin/app"}},
			shell("ok", "exec sleep 300")))
		for i, wait := range []string{"1s", "2s"} {
			cs := waitContainer(t, rt, "u-missing", "app", "cannot run, back-off "+wait, func(cs *capstanv1.ContainerStatus) bool {
				w := cs.GetState().GetWaiting()
				return w.GetReason() == ReasonContainerCannotRun && strings.HasSuffix(w.GetMessage(), "back-off "+wait+" before retrying") &&
					cs.GetRestartCount() == int32(i)
			})
			msg := cs.GetState().GetWaiting().GetMessage()
			if !strings.Contains(msg, "/nonexistent/bin/app") || !strings.Contains(msg, "no such file or directory") || !strings.Contains(msg, "back-off "+wait) {
				t.Errorf("waiting message %q", msg)
			}
			if term := cs.GetLastState().GetTerminated(); term.GetReason() != ReasonStartError || term.GetExitCode() != 128 || !strings.Contains(term.GetMessage(), "no such file") {
				t.Errorf("last state %v", term)
			}
			st := rt.PodStatus("u-missing")
			if st.Reason != ReasonStartError || !strings.Contains(st.Message, "container app: ") || !strings.Contains(st.Message, "no such file or directory") {
				t.Errorf("PodStatus reason %q message %q", st.Reason, st.Message)
			}
			d, _ := time.ParseDuration(wait)
			fake.Step(d)
		}
		// The other container is unaffected.
		waitContainer(t, rt, "u-missing", "ok", "running", isRunning)
	})
	t.Run("not in PATH, never restarted", func(t *testing.T) {
		rt := newRuntime(t, fastOptions(t))
		syncPod(t, rt, testPod("u-nopath", wellknown.RestartNever, 1,
			&capstanv1.Container{Name: "app", Command: []string{"capstan-no-such-command"}}))
		cs := waitContainer(t, rt, "u-nopath", "app", "start error", func(cs *capstanv1.ContainerStatus) bool {
			return cs.GetState().GetTerminated().GetReason() == ReasonStartError
		})
		want := `exec: "capstan-no-such-command": executable file not found in $PATH`
		if msg := cs.GetState().GetTerminated().GetMessage(); !strings.Contains(msg, want) {
			t.Errorf("message %q, want it to contain %q", msg, want)
		}
		if cs.GetRestartCount() != 0 {
			t.Errorf("restart count %d under Never", cs.GetRestartCount())
		}
	})
}

// TestLivenessProbeRestarts: an exec probe that fails (its file removed)
// gets the container stopped and restarted; the restart passes again.
func TestLivenessProbeRestarts(t *testing.T) {
	rt := newRuntime(t, fastOptions(t))
	healthy := filepath.Join(t.TempDir(), "healthy")
	touch(t, healthy)
	app := shell("app", "exec sleep 300")
	app.LivenessProbe = &capstanv1.Probe{
		Exec:             &capstanv1.ExecAction{Command: []string{"test", "-f", healthy}},
		PeriodSeconds:    1,
		FailureThreshold: 1,
	}
	syncPod(t, rt, testPod("u-live", wellknown.RestartAlways, 5, app))
	waitContainer(t, rt, "u-live", "app", "running", isRunning)
	pid := pidOf(rt, "u-live", "app")
	if err := os.Remove(healthy); err != nil {
		t.Fatal(err)
	}
	// At least once: each new run fails the probe at once and is restarted
	// after a back-off shorter than the poll interval, so a wait for
	// exactly one restart would race the next.
	waitContainer(t, rt, "u-live", "app", "stopped for failing its probe", func(cs *capstanv1.ContainerStatus) bool {
		return cs.GetRestartCount() >= 1
	})
	// The new run is killed in turn until the probe passes again.
	touch(t, healthy)
	cs := waitContainer(t, rt, "u-live", "app", "running again", func(cs *capstanv1.ContainerStatus) bool {
		return isRunning(cs) && cs.GetLastState().GetTerminated() != nil
	})
	term := cs.GetLastState().GetTerminated()
	if term.GetSignal() != int32(syscall.SIGTERM) || !strings.Contains(term.GetMessage(), "liveness probe failed") {
		t.Errorf("last state %v, want SIGTERM and the liveness failure", term)
	}
	if processAlive(pid) {
		t.Errorf("old process %d still alive", pid)
	}
}

// TestReadinessGatesReady: ready follows an exec readiness probe; without
// a probe a running container is ready at once.
func TestReadinessGatesReady(t *testing.T) {
	rt := newRuntime(t, fastOptions(t))
	gated := shell("gated", "exec sleep 300")
	gated.ReadinessProbe = &capstanv1.Probe{
		Exec:             &capstanv1.ExecAction{Command: []string{"/bin/sh", "-c", "test -f ready"}},
		PeriodSeconds:    1,
		FailureThreshold: 1,
	}
	syncPod(t, rt, testPod("u-ready", "", 1, gated, shell("plain", "exec sleep 300")))
	waitContainer(t, rt, "u-ready", "plain", "ready", func(cs *capstanv1.ContainerStatus) bool { return cs.GetReady() })
	cs := waitContainer(t, rt, "u-ready", "gated", "running", isRunning)
	if cs.GetReady() {
		t.Fatalf("ready before its probe passed: %s", describe(cs))
	}
	ready := filepath.Join(workDir(rt, "u-ready"), "ready")
	touch(t, ready)
	waitContainer(t, rt, "u-ready", "gated", "ready", func(cs *capstanv1.ContainerStatus) bool { return cs.GetReady() })
	if err := os.Remove(ready); err != nil {
		t.Fatal(err)
	}
	cs = waitContainer(t, rt, "u-ready", "gated", "not ready", func(cs *capstanv1.ContainerStatus) bool { return !cs.GetReady() })
	if !isRunning(cs) || cs.GetRestartCount() != 0 {
		t.Errorf("a readiness failure changed the process: %s", describe(cs))
	}
}

// TestGracefulKillPod: a container that handles SIGTERM gets to finish
// within the grace period; one that ignores it is SIGKILLed after it.
func TestGracefulKillPod(t *testing.T) {
	rt := newRuntime(t, fastOptions(t))
	syncPod(t, rt, testPod("u-grace", "", 30,
		shell("polite", `trap 'echo got-term; sleep 1; echo bye; exit 0' TERM; echo up; while :; do sleep 0.05; done`),
		shell("stubborn", `trap '' TERM; echo up; while :; do sleep 0.05; done`),
	))
	for _, name := range []string{"polite", "stubborn"} {
		poll.For(t, waitTimeout, name+` to log "up"`, func(context.Context) error {
			if out := logsOf(t, rt, "u-grace", name, LogOptions{TailLines: -1}); !hasLine(out, "up") {
				return fmt.Errorf("log %q", out)
			}
			return nil
		})
	}
	polite, stubborn := containerOf(t, rt, "u-grace", "polite"), containerOf(t, rt, "u-grace", "stubborn")
	var follow syncBuffer
	followDone := make(chan error, 1)
	go func() {
		followDone <- rt.Logs(context.Background(), "u-grace", "polite", LogOptions{Follow: true, TailLines: -1}, &follow)
	}()

	if err := rt.KillPod(context.Background(), "u-grace", 3*time.Second); err != nil {
		t.Fatal(err)
	}
	rt.mu.Lock()
	politeEnd, stubbornEnd := polite.lastTermination, stubborn.lastTermination
	rt.mu.Unlock()
	if politeEnd.ExitCode != 0 || politeEnd.Signal != 0 || politeEnd.Reason != ReasonCompleted {
		t.Errorf("polite container ended %+v, want exit 0 within its grace", politeEnd)
	}
	if stubbornEnd.Signal != int32(syscall.SIGKILL) || stubbornEnd.ExitCode != 128+int32(syscall.SIGKILL) {
		t.Errorf("stubborn container ended %+v, want SIGKILL", stubbornEnd)
	}
	// Following ends once the pod is gone, with its last words.
	select {
	case err := <-followDone:
		if err != nil {
			t.Errorf("follow: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("follow did not end with the pod")
	}
	if out := follow.String(); !hasLine(out, "got-term") || !hasLine(out, "bye") {
		t.Errorf("followed log %q lacks the shutdown lines", out)
	}
}

// TestKillPodContextEnds: KillPod returns when its ctx ends; the stop goes
// on and a later KillPod, with a shorter grace, finishes it.
func TestKillPodContextEnds(t *testing.T) {
	rt := newRuntime(t, fastOptions(t))
	syncPod(t, rt, testPod("u-ctx", "", 30, shell("stubborn", `trap '' TERM; echo up; while :; do sleep 0.05; done`)))
	poll.For(t, waitTimeout, `stubborn to log "up"`, func(context.Context) error {
		if out := logsOf(t, rt, "u-ctx", "stubborn", LogOptions{TailLines: -1}); !hasLine(out, "up") {
			return fmt.Errorf("log %q", out)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := rt.KillPod(ctx, "u-ctx", time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("KillPod with an ended ctx: %v", err)
	}
	if rt.PodStatus("u-ctx") == nil {
		t.Fatal("pod forgotten although KillPod did not finish")
	}
	if err := rt.SyncPod(context.Background(), testPod("u-ctx", "", 30, shell("stubborn", "true"))); !errors.Is(err, ErrPodStopping) {
		t.Errorf("SyncPod of a pod being stopped: %v", err)
	}
	// A second KillPod with a shorter grace cuts the hour short.
	stubborn := containerOf(t, rt, "u-ctx", "stubborn")
	if err := rt.KillPod(context.Background(), "u-ctx", 0); err != nil {
		t.Fatal(err)
	}
	rt.mu.Lock()
	end := stubborn.lastTermination
	rt.mu.Unlock()
	if end.Signal != int32(syscall.SIGKILL) || rt.PodStatus("u-ctx") != nil {
		t.Errorf("after the second KillPod: %+v, pod known %v", end, rt.PodStatus("u-ctx") != nil)
	}
}

// TestSpecChangeRestartsContainer: a new command restarts that container
// at once; an unchanged sibling keeps its process.
func TestSpecChangeRestartsContainer(t *testing.T) {
	rt := newRuntime(t, fastOptions(t))
	pod := testPod("u-spec", wellknown.RestartNever, 1, shell("a", "echo v1; exec sleep 300"), shell("b", "exec sleep 300"))
	syncPod(t, rt, pod)
	waitContainer(t, rt, "u-spec", "a", "running", isRunning)
	waitContainer(t, rt, "u-spec", "b", "running", isRunning)
	pidA, pidB := pidOf(rt, "u-spec", "a"), pidOf(rt, "u-spec", "b")

	changed := proto.CloneOf(pod)
	changed.Spec.Containers[0] = shell("a", "echo v2; exec sleep 300")
	// A probe change alone does not restart.
	changed.Spec.Containers[1].ReadinessProbe = &capstanv1.Probe{TcpSocket: &capstanv1.TcpSocketAction{Port: 1}, PeriodSeconds: 1}
	syncPod(t, rt, changed)
	cs := waitContainer(t, rt, "u-spec", "a", "restarted", func(cs *capstanv1.ContainerStatus) bool {
		return isRunning(cs) && cs.GetRestartCount() == 1
	})
	if pidOf(rt, "u-spec", "a") == pidA {
		t.Error("same process after a command change")
	}
	if term := cs.GetLastState().GetTerminated(); term.GetSignal() != int32(syscall.SIGTERM) {
		t.Errorf("last state %v", term)
	}
	if got := pidOf(rt, "u-spec", "b"); got != pidB {
		t.Errorf("unchanged container restarted: pid %d, was %d", got, pidB)
	}
	waitContainer(t, rt, "u-spec", "b", "not ready (probe on a closed port)", func(cs *capstanv1.ContainerStatus) bool {
		return isRunning(cs) && !cs.GetReady()
	})
	poll.For(t, waitTimeout, "v2 output", func(context.Context) error {
		if out := logsOf(t, rt, "u-spec", "a", LogOptions{TailLines: -1}); out != "v2\n" {
			return fmt.Errorf("log %q, want %q", out, "v2\n")
		}
		return nil
	})
	if prev := logsOf(t, rt, "u-spec", "a", LogOptions{Previous: true, TailLines: -1}); prev != "v1\n" {
		t.Errorf("previous log %q", prev)
	}

	// Dropping a container from the spec stops it.
	dropped := proto.CloneOf(changed)
	dropped.Spec.Containers = dropped.Spec.Containers[:1]
	syncPod(t, rt, dropped)
	poll.For(t, waitTimeout, "b stopped", func(context.Context) error {
		if processAlive(pidB) {
			return fmt.Errorf("process %d is alive", pidB)
		}
		return nil
	})
	if containerStatus(rt, "u-spec", "b") != nil {
		t.Error("dropped container still in the status")
	}
}

// TestEchoWorkload runs the demo workload: PORT and the pod's names reach
// it, the HTTP readiness and TCP liveness probes pass, and a SIGTERM (here
// from a spec change) ends it with exit 0.
func TestEchoWorkload(t *testing.T) {
	echo := echoBinary(t)
	rt := newRuntime(t, fastOptions(t))
	port := freePort(t)
	c := &capstanv1.Container{
		Name:           "echo",
		Command:        []string{echo},
		Env:            []*capstanv1.EnvVar{{Name: "HOST", Value: "127.0.0.1"}},
		Ports:          []*capstanv1.ContainerPort{{ContainerPort: int32(port)}},
		ReadinessProbe: &capstanv1.Probe{HttpGet: &capstanv1.HttpGetAction{Path: "/healthz", Port: int32(port)}, PeriodSeconds: 1},
		LivenessProbe:  &capstanv1.Probe{TcpSocket: &capstanv1.TcpSocketAction{Port: int32(port)}, PeriodSeconds: 1},
	}
	pod := testPod("u-echo", "", 10, c)
	syncPod(t, rt, pod)
	cs := waitContainer(t, rt, "u-echo", "echo", "ready", func(cs *capstanv1.ContainerStatus) bool { return cs.GetReady() })
	// The probes reached the node port the declared port was mapped to.
	nodePort := strconv.Itoa(int(cs.GetPorts()[0].GetHostPort()))
	if body := httpGet(t, "http://127.0.0.1:"+nodePort+"/"); body != "pod-u-echo on "+testNode+"\n" {
		t.Errorf("echo answered %q", body)
	}

	changed := proto.CloneOf(pod)
	changed.Spec.Containers[0].Env = append(changed.Spec.Containers[0].Env, &capstanv1.EnvVar{Name: "VERSION", Value: "2"})
	syncPod(t, rt, changed)
	cs = waitContainer(t, rt, "u-echo", "echo", "restarted and ready", func(cs *capstanv1.ContainerStatus) bool {
		return cs.GetRestartCount() == 1 && cs.GetReady()
	})
	if term := cs.GetLastState().GetTerminated(); term.GetExitCode() != 0 || term.GetReason() != ReasonCompleted {
		t.Errorf("echo after SIGTERM: %v, want exit 0", term)
	}
	if prev := logsOf(t, rt, "u-echo", "echo", LogOptions{Previous: true, TailLines: -1}); !strings.Contains(prev, "path=/healthz") || !strings.Contains(prev, "msg=stopped") {
		t.Errorf("previous log:\n%s", prev)
	}
}
