package runtime

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// helperAgentEnv, set to a state directory, makes the test binary act as a
// node agent: it starts helperAgentPod, prints the container's pid and
// waits to be killed. With helperAgentKillAtEnv set to a startStep, it
// SIGKILLs itself at that step of the container's first start instead;
// helperAgentPodEnv names the pod's uid (default u-agent).
const (
	helperAgentEnv       = "CAPSTAN_RUNTIME_TEST_AGENT_STATE_DIR"
	helperAgentKillAtEnv = "CAPSTAN_RUNTIME_TEST_AGENT_KILL_AT"
	helperAgentPodEnv    = "CAPSTAN_RUNTIME_TEST_AGENT_POD_UID"
)

// helperAgentNoKill is the helper's exit status when it was told to kill
// itself at a step that never came.
const helperAgentNoKill = 4

func helperAgentPod(uid string) *capstanv1.Pod {
	return testPod(uid, wellknown.RestartAlways, 5, shell("app", "echo started; exec sleep 300"))
}

func runHelperAgent() int {
	opts := ProcessOptions{
		StateDir:            os.Getenv(helperAgentEnv),
		NodeName:            testNode,
		Logger:              slog.New(slog.NewTextHandler(os.Stderr, nil)),
		ProcessPollInterval: 20 * time.Millisecond,
	}
	killAt := os.Getenv(helperAgentKillAtEnv)
	if killAt != "" {
		opts.startHook = func(s startStep) {
			if strconv.Itoa(int(s)) == killAt {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // until the signal lands
			}
		}
	}
	uid := cmp.Or(os.Getenv(helperAgentPodEnv), "u-agent")
	rt, err := NewProcessRuntime(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := rt.SyncPod(context.Background(), helperAgentPod(uid)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var pid int
	if err := poll.Until(context.Background(), waitTimeout, "the container to start", func(context.Context) error {
		if pid = pidOf(rt, uid, "app"); pid == 0 {
			return errors.New("no process yet")
		}
		return nil
	}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println(pid)
	if killAt != "" {
		return helperAgentNoKill
	}
	// Until the test kills this process (or closes stdin).
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 3
}

// startHelperAgent starts the test binary as a helper agent on stateDir
// with the extra environment; it is SIGKILLed when the test ends if it
// still runs then. The caller reads its stdout.
func startHelperAgent(t *testing.T, stateDir string, env ...string) (*exec.Cmd, io.Reader) {
	t.Helper()
	agent := exec.Command(os.Args[0], "-test.run=^$")
	agent.Env = append(append(os.Environ(), helperAgentEnv+"="+stateDir), env...)
	agent.Stderr = t.Output()
	stdin, err := agent.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := agent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		if agent.ProcessState == nil {
			_ = agent.Process.Kill()
			_ = agent.Wait()
		}
	})
	return agent, stdout
}

// TestProcessesSurviveAgentSIGKILL: an agent process is SIGKILLed; its
// container keeps running, and a new runtime on its state directory adopts
// it, leaves it alone on SyncPod, serves its log and stops it.
func TestProcessesSurviveAgentSIGKILL(t *testing.T) {
	stateDir := t.TempDir()
	agent, stdout := startHelperAgent(t, stateDir)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
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
	syncPod(t, rt, helperAgentPod("u-agent"))
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

// killStepTrials is how often an agent is killed at each step of a
// container start.
const killStepTrials = 20

// TestAgentKilledDuringStart: an agent process SIGKILLs itself at each
// step of a container's first start — its process held but not
// checkpointed, checkpointed but not released, released — and a new
// runtime on its state directory ends up with exactly one process of the
// container: a new one that ran the command once if the old one was never
// released, the old one (adopted, same pid) if it was. No step leaves an
// orphan or a second copy, and the command never runs twice.
func TestAgentKilledDuringStart(t *testing.T) {
	for _, step := range []startStep{stepHeld, stepCheckpointed, stepReleased} {
		t.Run(step.String(), func(t *testing.T) {
			for trial := range killStepTrials {
				t.Run(strconv.Itoa(trial), func(t *testing.T) {
					uid := fmt.Sprintf("u-kill-%s-%d", step, trial)
					podProcesses := func() []localcluster.PodProcess {
						return localcluster.PodProcesses(func(p localcluster.PodProcess) bool { return p.PodUID == uid })
					}
					// Whatever happens, no process of the pod outlives the test.
					t.Cleanup(func() {
						for _, p := range podProcesses() {
							_ = syscall.Kill(p.Pid, syscall.SIGKILL)
						}
					})
					stateDir := t.TempDir()
					agent, _ := startHelperAgent(t, stateDir, helperAgentKillAtEnv+"="+strconv.Itoa(int(step)), helperAgentPodEnv+"="+uid)
					timer := time.AfterFunc(waitTimeout, func() { _ = agent.Process.Kill() })
					err := agent.Wait()
					timer.Stop()
					if ws, ok := agent.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
						t.Fatalf("helper agent ended with %v, want killed by itself at step %s", err, step)
					}
					cp, err := readContainerCheckpoint(containerCheckpointPath(filepath.Join(stateDir, "pods", uid), "app"))
					if err != nil {
						t.Fatal(err)
					}
					switch {
					case step == stepHeld && cp != nil:
						t.Fatalf("checkpoint %+v written before the kill at %s", cp, step)
					case step != stepHeld && (cp == nil || !cp.Running || !cp.Held):
						t.Fatalf("checkpoint %+v at %s, want a running, held process", cp, step)
					}

					opts := fastOptions(t)
					opts.StateDir = stateDir
					rt := newRuntime(t, opts)
					cs := waitContainer(t, rt, uid, "app", "running", isRunning)
					pid := pidOf(rt, uid, "app")
					poll.For(t, waitTimeout, "exactly one process of the container, the runtime's", func(context.Context) error {
						if procs := podProcesses(); len(procs) != 1 || procs[0].Pid != pid {
							return fmt.Errorf("processes of the pod %v, want only pid %d", procs, pid)
						}
						return nil
					})
					if cs.GetRestartCount() != 0 {
						t.Errorf("restart count %d: a start that never ran the command counted as a run", cs.GetRestartCount())
					}
					if step == stepReleased && pid != cp.PID {
						t.Errorf("released process %d not adopted: runs %d", cp.PID, pid)
					}
					if step == stepCheckpointed && pid == cp.PID {
						t.Errorf("the unreleased process %d was adopted", pid)
					}
					// The command ran once in all: one line, and no earlier run.
					poll.For(t, waitTimeout, "the command's output", func(context.Context) error {
						if out := logsOf(t, rt, uid, "app", LogOptions{TailLines: -1}); out != "started\n" {
							return fmt.Errorf("log %q, want %q", out, "started\n")
						}
						return nil
					})
					if err := rt.Logs(context.Background(), uid, "app", LogOptions{Previous: true, TailLines: -1}, io.Discard); err == nil {
						t.Error("a previous run's log exists: the command ran before")
					}
				})
			}
		})
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
