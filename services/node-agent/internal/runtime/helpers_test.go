package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/poll"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperAgentEnv) != "" {
		// The "agent" that TestProcessesSurviveAgentSIGKILL kills.
		os.Exit(runHelperAgent())
	}
	code := m.Run()
	if echoPath != "" {
		os.RemoveAll(filepath.Dir(echoPath))
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

const testNode = "node-1"

// fastOptions: back-off and polling in milliseconds.
func fastOptions(t *testing.T) ProcessOptions {
	return ProcessOptions{
		StateDir:            t.TempDir(),
		NodeName:            testNode,
		Logger:              slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		BackOffInitial:      10 * time.Millisecond,
		BackOffMax:          40 * time.Millisecond,
		ProcessPollInterval: 20 * time.Millisecond,
		LogFollowInterval:   10 * time.Millisecond,
	}
}

// newRuntime starts a runtime whose pods are killed (grace 0) and which is
// closed when the test ends.
func newRuntime(t *testing.T, opts ProcessOptions) *ProcessRuntime {
	t.Helper()
	rt, err := NewProcessRuntime(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, rt) })
	return rt
}

func shutdown(t *testing.T, rt *ProcessRuntime) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, uid := range rt.Pods() {
		if err := rt.KillPod(ctx, uid, 0); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("cleanup: KillPod %s: %v", uid, err)
		}
	}
	rt.Close()
}

// killGroupAtCleanup SIGKILLs pid's process group when the test ends, for
// processes no runtime owns any more.
func killGroupAtCleanup(t *testing.T, pid int) {
	t.Cleanup(func() {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		// Reap it if it is this process's child; ECHILD otherwise. The
		// test's context has ended by now, so the wait has its own.
		_ = poll.Until(context.Background(), 10*time.Second, fmt.Sprintf("process %d to be reaped", pid), func(context.Context) error {
			var ws syscall.WaitStatus
			got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
			if err != nil || got == pid {
				return nil
			}
			return errors.New("it has not exited")
		})
	})
}

func testPod(uid, policy string, grace int64, containers ...*capstanv1.Container) *capstanv1.Pod {
	return &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Uid: uid, Name: "pod-" + uid, Namespace: "default"},
		Spec: &capstanv1.PodSpec{
			Containers:                    containers,
			RestartPolicy:                 policy,
			TerminationGracePeriodSeconds: proto.Int64(grace),
		},
	}
}

func shell(name, script string) *capstanv1.Container {
	return &capstanv1.Container{Name: name, Command: []string{"/bin/sh", "-c", script}}
}

func syncPod(t *testing.T, rt *ProcessRuntime, pod *capstanv1.Pod) {
	t.Helper()
	if err := rt.SyncPod(context.Background(), pod); err != nil {
		t.Fatalf("SyncPod: %v", err)
	}
}

// waitTimeout bounds every wait for a state of the runtime or its
// processes.
const waitTimeout = 20 * time.Second

// containerStatus returns the status of one container, nil if unknown.
func containerStatus(rt *ProcessRuntime, uid, name string) *capstanv1.ContainerStatus {
	st := rt.PodStatus(uid)
	if st == nil {
		return nil
	}
	for _, c := range st.Containers {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

func describe(cs *capstanv1.ContainerStatus) string {
	if cs == nil {
		return "<no status>"
	}
	return fmt.Sprintf("restarts=%d ready=%v state=%v last=%v", cs.GetRestartCount(), cs.GetReady(), cs.GetState(), cs.GetLastState())
}

// waitContainer waits until the container's status satisfies cond and
// returns that status.
func waitContainer(t *testing.T, rt *ProcessRuntime, uid, name, what string, cond func(*capstanv1.ContainerStatus) bool) *capstanv1.ContainerStatus {
	t.Helper()
	var got *capstanv1.ContainerStatus
	poll.For(t, waitTimeout, name+" "+what, func(context.Context) error {
		if got = containerStatus(rt, uid, name); got == nil || !cond(got) {
			return errors.New(describe(got))
		}
		return nil
	})
	return got
}

func isRunning(cs *capstanv1.ContainerStatus) bool { return cs.GetState().GetRunning() != nil }

// pidOf is the pid of the container's current process, 0 if none.
func pidOf(rt *ProcessRuntime, uid, name string) int {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	p := rt.pods[uid]
	if p == nil {
		return 0
	}
	for _, c := range p.containers {
		if c.name == name && c.proc != nil {
			return c.proc.pid
		}
	}
	return 0
}

func containerOf(t *testing.T, rt *ProcessRuntime, uid, name string) *container {
	t.Helper()
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if p := rt.pods[uid]; p != nil {
		for _, c := range p.containers {
			if c.name == name {
				return c
			}
		}
	}
	t.Fatalf("no container %s in pod %s", name, uid)
	return nil
}

func processAlive(pid int) bool {
	st, err := readProcStat(pid)
	return err == nil && !st.dead()
}

func workDir(rt *ProcessRuntime, uid string) string {
	return filepath.Join(rt.opts.StateDir, "pods", uid, podWorkDir)
}

func touch(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

func logsOf(t *testing.T, rt *ProcessRuntime, uid, name string, opts LogOptions) string {
	t.Helper()
	var buf bytes.Buffer
	if err := rt.Logs(context.Background(), uid, name, opts, &buf); err != nil {
		t.Fatalf("Logs(%s, %+v): %v", name, opts, err)
	}
	return buf.String()
}

// syncBuffer collects a follower's output for the test goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var (
	echoOnce sync.Once
	echoPath string
	echoErr  error
)

// echoBinary is deploy/workloads/echo: from $CAPSTAN_BIN_DIR (make
// test-unit builds it there) or built once per test run.
func echoBinary(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("CAPSTAN_BIN_DIR"); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "echo")); err == nil {
			return filepath.Join(dir, "echo")
		}
	}
	echoOnce.Do(func() {
		dir, err := os.MkdirTemp("", "capstan-echo-")
		if err != nil {
			echoErr = err
			return
		}
		echoPath = filepath.Join(dir, "echo")
		out, err := exec.Command("go", "build", "-o", echoPath, "github.com/capstan-dev/capstan/deploy/workloads/echo").CombinedOutput()
		if err != nil {
			echoErr = fmt.Errorf("build echo: %v\n%s", err, out)
		}
	})
	if echoErr != nil {
		t.Fatal(echoErr)
	}
	return echoPath
}

func hasLine(s, line string) bool {
	for _, l := range strings.Split(s, "\n") {
		if l == line {
			return true
		}
	}
	return false
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}
