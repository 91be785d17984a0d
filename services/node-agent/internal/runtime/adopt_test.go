package runtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// helperAgentEnv, set to a state directory, makes the test binary act as a
// node agent: it starts helperAgentPod, prints the container's pid and
// waits to be killed.
const helperAgentEnv = "CAPSTAN_RUNTIME_TEST_AGENT_STATE_DIR"

func helperAgentPod() *capstanv1.Pod {
	return testPod("u-agent", wellknown.RestartAlways, 5, shell("app", "echo started; exec sleep 300"))
}

func runHelperAgent() int {
	rt, err := NewProcessRuntime(ProcessOptions{
		StateDir:            os.Getenv(helperAgentEnv),
		NodeName:            testNode,
		Logger:              slog.New(slog.NewTextHandler(os.Stderr, nil)),
		ProcessPollInterval: 20 * time.Millisecond,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := rt.SyncPod(context.Background(), helperAgentPod()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var pid int
	if err := poll.Until(context.Background(), waitTimeout, "the container to start", func(context.Context) error {
		if pid = pidOf(rt, "u-agent", "app"); pid == 0 {
			return errors.New("no process yet")
		}
		return nil
	}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println(pid)
	// Until the test kills this process (or closes stdin).
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 3
}

// TestProcessesSurviveAgentSIGKILL: an agent process is SIGKILLed; its
// container keeps running, and a new runtime on its state directory adopts
// it, leaves it alone on SyncPod, serves its log and stops it.
func TestProcessesSurviveAgentSIGKILL(t *testing.T) {
	stateDir := t.TempDir()
	agent := exec.Command(os.Args[0], "-test.run=^$")
	agent.Env = append(os.Environ(), helperAgentEnv+"="+stateDir)
	agent.Stderr = t.Output()
	stdin, err := agent.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := agent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		agent.Process.Kill()
		agent.Wait()
		t.Fatalf("helper agent: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("helper agent printed %q", line)
	}
	killGroupAtCleanup(t, pid)

	if err := agent.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	agent.Wait()
	if !processAlive(pid) {
		t.Fatalf("container %d died with its agent", pid)
	}

	opts := fastOptions(t)
	opts.StateDir = stateDir
	rt := newRuntime(t, opts)
	if pods := rt.Pods(); len(pods) != 1 || pods[0] != "u-agent" {
		t.Fatalf("adopted pods %v", pods)
	}
	cs := containerStatus(rt, "u-agent", "app")
	if !isRunning(cs) || cs.GetRestartCount() != 0 || pidOf(rt, "u-agent", "app") != pid {
		t.Fatalf("adopted container: %s, pid %d; want running pid %d", describe(cs), pidOf(rt, "u-agent", "app"), pid)
	}
	syncPod(t, rt, helperAgentPod())
	if got := pidOf(rt, "u-agent", "app"); got != pid || !processAlive(pid) {
		t.Fatalf("SyncPod after adoption: pid %d (alive %v), want %d untouched", got, processAlive(pid), pid)
	}
	poll.For(t, waitTimeout, "the adopted process's log", func(context.Context) error {
		if out := logsOf(t, rt, "u-agent", "app", LogOptions{TailLines: -1}); out != "started\n" {
			return fmt.Errorf("log %q, want %q", out, "started\n")
		}
		return nil
	})
	if err := rt.KillPod(context.Background(), "u-agent", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if processAlive(pid) {
		t.Errorf("adopted process %d alive after KillPod", pid)
	}
}

// TestAdoptAfterClose: runtime A starts a pod and closes; runtime B on the
// same state directory adopts the running container (same pid, still
// ready), keeps the finished one finished, restarts nothing on SyncPod,
// and restarts a container whose command changed.
func TestAdoptAfterClose(t *testing.T) {
	opts := fastOptions(t)
	a, err := NewProcessRuntime(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	app := shell("app", "echo started; exec sleep 300")
	app.ReadinessProbe = &capstanv1.Probe{Exec: &capstanv1.ExecAction{Command: []string{"true"}}, PeriodSeconds: 1}
	pod := testPod("u-adopt", wellknown.RestartOnFailure, 5, app, shell("once", "echo done"))
	syncPod(t, a, pod)
	aApp := waitContainer(t, a, "u-adopt", "app", "ready", func(cs *capstanv1.ContainerStatus) bool { return cs.GetReady() })
	waitContainer(t, a, "u-adopt", "once", "completed", func(cs *capstanv1.ContainerStatus) bool {
		return cs.GetState().GetTerminated().GetReason() == ReasonCompleted
	})
	pid := pidOf(a, "u-adopt", "app")
	killGroupAtCleanup(t, pid)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if !processAlive(pid) {
		t.Fatal("Close stopped the process")
	}

	b := newRuntime(t, opts)
	cs := containerStatus(b, "u-adopt", "app")
	if !isRunning(cs) || pidOf(b, "u-adopt", "app") != pid || cs.GetRestartCount() != 0 ||
		!cs.GetState().GetRunning().GetStartedAt().AsTime().Equal(aApp.GetState().GetRunning().GetStartedAt().AsTime()) {
		t.Fatalf("adopted: %s pid %d; want running pid %d started %v", describe(cs), pidOf(b, "u-adopt", "app"), pid, aApp.GetState().GetRunning().GetStartedAt().AsTime())
	}
	if !cs.GetReady() {
		t.Errorf("adopted container lost its readiness: %s", describe(cs))
	}
	if once := containerStatus(b, "u-adopt", "once"); once.GetState().GetTerminated().GetReason() != ReasonCompleted || once.GetRestartCount() != 0 {
		t.Errorf("finished container after adoption: %s", describe(once))
	}
	syncPod(t, b, proto.CloneOf(pod))
	if got := pidOf(b, "u-adopt", "app"); got != pid {
		t.Fatalf("SyncPod with the same spec restarted the adopted container: pid %d, was %d", got, pid)
	}
	if once := containerStatus(b, "u-adopt", "once"); once.GetRestartCount() != 0 {
		t.Errorf("SyncPod reran the finished container: %s", describe(once))
	}

	changed := proto.CloneOf(pod)
	changed.Spec.Containers[0].Command = []string{"/bin/sh", "-c", "echo v2; exec sleep 300"}
	syncPod(t, b, changed)
	waitContainer(t, b, "u-adopt", "app", "restarted with the new command", func(cs *capstanv1.ContainerStatus) bool {
		return isRunning(cs) && cs.GetRestartCount() == 1
	})
	poll.For(t, waitTimeout, "the old process to be gone", func(context.Context) error {
		if processAlive(pid) {
			return fmt.Errorf("process %d is alive", pid)
		}
		return nil
	})
	if prev := logsOf(t, b, "u-adopt", "app", LogOptions{Previous: true, TailLines: -1}); prev != "started\n" {
		t.Errorf("previous log %q", prev)
	}
}

// TestAdoptionOfGoneProcesses: a checkpointed process that is no longer
// there, or whose pid now names another process (its start time differs),
// is never adopted; its end is reported with an unknown exit status.
func TestAdoptionOfGoneProcesses(t *testing.T) {
	tests := []struct {
		name string
		// gone makes the checkpointed process unadoptable.
		gone        func(t *testing.T, stateDir string, pid int)
		policy      string
		wantRestart bool
	}{
		{
			name: "process exited, Always restarts it",
			gone: func(t *testing.T, _ string, pid int) {
				syscall.Kill(-pid, syscall.SIGKILL)
				var ws syscall.WaitStatus
				if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
					t.Fatal(err)
				}
			},
			policy:      wellknown.RestartAlways,
			wantRestart: true,
		},
		{
			name: "pid reused, Never leaves it terminated",
			gone: func(t *testing.T, stateDir string, pid int) {
				path := containerCheckpointPath(stateDir+"/pods/u-gone", "app")
				cp, err := readContainerCheckpoint(path)
				if err != nil || cp == nil {
					t.Fatalf("checkpoint: %v", err)
				}
				cp.StartTicks++
				if err := writeContainerCheckpoint(path, cp); err != nil {
					t.Fatal(err)
				}
			},
			policy: wellknown.RestartNever,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := fastOptions(t)
			a, err := NewProcessRuntime(opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a.Close() })
			syncPod(t, a, testPod("u-gone", tt.policy, 1, shell("app", "exec sleep 300")))
			waitContainer(t, a, "u-gone", "app", "running", isRunning)
			pid := pidOf(a, "u-gone", "app")
			killGroupAtCleanup(t, pid)
			a.Close()
			tt.gone(t, opts.StateDir, pid)

			b := newRuntime(t, opts)
			if got := pidOf(b, "u-gone", "app"); got == pid {
				t.Fatalf("adopted pid %d", pid)
			}
			var cs *capstanv1.ContainerStatus
			if tt.wantRestart {
				cs = waitContainer(t, b, "u-gone", "app", "restarted", func(cs *capstanv1.ContainerStatus) bool {
					return isRunning(cs) && cs.GetRestartCount() == 1
				})
			} else {
				cs = waitContainer(t, b, "u-gone", "app", "terminated", func(cs *capstanv1.ContainerStatus) bool {
					return cs.GetState().GetTerminated() != nil
				})
				if !processAlive(pid) {
					t.Error("the process behind a reused pid was touched")
				}
			}
			term := cs.GetState().GetTerminated()
			if term == nil {
				term = cs.GetLastState().GetTerminated()
			}
			if term.GetExitCode() != -1 || term.GetReason() != ReasonUnknown {
				t.Errorf("termination %v, want exit -1 reason Unknown", term)
			}
		})
	}
}
