package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/grpcserver"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/node-agent/internal/agent"
	"github.com/capstan-dev/capstan/services/node-agent/internal/runtime"
)

// processNode is a node whose pods are real processes: a process runtime
// on a state directory, an agent, and the agent's NodeAgentService.
type processNode struct {
	e        *env
	name     string
	stateDir string
	endpoint string
	rt       *runtime.ProcessRuntime
	agent    *runningAgent
	// configure, if set, changes the agent's config before each start.
	configure func(*agent.Config)
}

// newProcessNode starts a node; every process its pods start is killed
// when the test ends, whatever happened to the agent.
func (e *env) newProcessNode(name string) *processNode {
	e.t.Helper()
	return e.newProcessNodeWith(name, nil)
}

// newProcessNodeWith is newProcessNode with configure applied to the
// agent's config.
func (e *env) newProcessNodeWith(name string, configure func(*agent.Config)) *processNode {
	e.t.Helper()
	n := &processNode{e: e, name: name, stateDir: e.t.TempDir(), configure: configure}
	e.t.Cleanup(func() { killPodProcesses(e.t, n.stateDir) })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	n.endpoint = lis.Addr().String()
	srv := grpcserver.New(grpcserver.Options{Logger: testLogger(e.t, name).With("subsystem", "grpc")})
	capstanv1.RegisterNodeAgentServiceServer(srv, agent.NewNodeAgentServer(name, logsOf{n}, "127.0.0.1"))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	srv.SetServing(true)
	e.t.Cleanup(func() {
		_ = srv.Stop(context.Background())
		<-served
	})
	n.start()
	return n
}

// start starts a runtime on the node's state directory (adopting what a
// previous one ran) and an agent on it.
func (n *processNode) start() {
	t := n.e.t
	t.Helper()
	rt, err := runtime.NewProcessRuntime(runtime.ProcessOptions{
		StateDir:       filepath.Join(n.stateDir, "runtime"),
		NodeName:       n.name,
		Logger:         testLogger(t, n.name).With("subsystem", "runtime"),
		BackOffInitial: 100 * time.Millisecond,
		BackOffMax:     time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	cfg := n.e.config(n.name)
	cfg.Runtime = rt
	cfg.RuntimeName = "process"
	cfg.AgentEndpoint = n.endpoint
	cfg.CheckpointDir = filepath.Join(n.stateDir, "agent", "pods")
	if n.configure != nil {
		n.configure(&cfg)
	}
	n.rt = rt
	n.agent = n.e.start(cfg)
}

// restart stops the agent and closes its runtime (the processes keep
// running), then starts both again on the same state directory.
func (n *processNode) restart() {
	n.agent.stop(n.e.t)
	if err := n.rt.Close(); err != nil {
		n.e.t.Fatal(err)
	}
	n.start()
}

// logsOf serves the logs of whichever runtime the node has now.
type logsOf struct{ n *processNode }

func (l logsOf) PodStatus(uid string) *runtime.PodStatus { return l.n.rt.PodStatus(uid) }
func (l logsOf) Logs(ctx context.Context, uid, c string, o runtime.LogOptions, w io.Writer) error {
	return l.n.rt.Logs(ctx, uid, c, o, w)
}

// podPids lists the processes whose environment says they belong to the
// pod with uid (the runtime sets CAPSTAN_POD_UID), sorted.
func podPids(uid string) []int {
	return pidsWithEnv("CAPSTAN_POD_UID=" + uid)
}

func pidsWithEnv(entry string) []int {
	procs, _ := os.ReadDir("/proc")
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", p.Name(), "environ"))
		if err != nil || !slices.ContainsFunc(bytes.Split(env, []byte{0}), func(e []byte) bool { return string(e) == entry }) {
			continue
		}
		if stat, err := os.ReadFile(filepath.Join("/proc", p.Name(), "stat")); err == nil {
			if i := bytes.LastIndexByte(stat, ')'); i > 0 && bytes.HasPrefix(stat[i+1:], []byte(" Z")) {
				continue // a zombie: it has exited
			}
		}
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids
}

// killPodProcesses SIGKILLs every process started by a runtime on this
// state directory's node: the backstop that keeps a failed test from
// leaving processes behind.
func killPodProcesses(t *testing.T, stateDir string) {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", p.Name(), "cwd"))
		if err != nil || !strings.HasPrefix(cwd, stateDir) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			t.Logf("killed leftover pod process %d (cwd %s)", pid, cwd)
		}
	}
}

// waitPids waits for the pod's processes and returns them.
func waitPids(t *testing.T, uid string, want int) []int {
	t.Helper()
	var pids []int
	poll.For(t, testDeadline, fmt.Sprintf("%d processes of pod %s", want, uid), func(context.Context) error {
		if pids = podPids(uid); len(pids) != want {
			return fmt.Errorf("processes %v", pids)
		}
		return nil
	})
	return pids
}

func waitNoPids(t *testing.T, uid string) {
	t.Helper()
	poll.For(t, testDeadline, "the processes of pod "+uid+" gone", func(context.Context) error {
		if pids := podPids(uid); len(pids) > 0 {
			return fmt.Errorf("processes %v", pids)
		}
		return nil
	})
}

// A pod bound to the node runs as a process and is reported Running and
// Ready; a graceful delete stops the process and then removes the pod from
// the API; a pod removed from the API at once (grace 0) is stopped too.
func TestProcessPodsRunAndStop(t *testing.T) {
	e := newEnv(t, 1)
	n := e.newProcessNode("proc-1")
	graceful := e.createPod("graceful", n.name, "", []string{"/bin/sleep", "3600"})
	forced := e.createPod("forced", n.name, "", []string{"/bin/sleep", "3600"})
	pod := e.waitPodRunningReady("graceful")
	e.waitPodRunningReady("forced")
	cs := pod.GetStatus().GetContainerStatuses()
	if len(cs) != 1 || cs[0].GetState().GetRunning() == nil || !cs[0].GetReady() || cs[0].GetRestartCount() != 0 {
		t.Fatalf("container statuses %v", cs)
	}
	waitPids(t, graceful.GetMetadata().GetUid(), 1)
	waitPids(t, forced.GetMetadata().GetUid(), 1)

	if _, err := e.c.Delete(e.ctx(), podKind, "default", "graceful", nil); err != nil {
		t.Fatal(err)
	}
	e.waitPodGone("graceful")
	if pids := podPids(graceful.GetMetadata().GetUid()); len(pids) > 0 {
		t.Fatalf("pod removed from the API while its processes %v run", pids)
	}

	if _, err := e.c.Delete(e.ctx(), podKind, "default", "forced", nil, client.GracePeriod(0)); err != nil {
		t.Fatal(err)
	}
	waitNoPids(t, forced.GetMetadata().GetUid())
}

// With every API server gone nothing is stopped: the process keeps
// running, and one that dies is restarted by its policy. When the API is
// back the status catches up, and nothing that was right is restarted.
func TestPodsOutliveTheAPI(t *testing.T) {
	e := newEnv(t, 1)
	n := e.newProcessNode("proc-2")
	steady := e.createPod("steady", n.name, "", []string{"/bin/sleep", "3600"})
	crashing := e.createPod("crashing", n.name, wellknown.RestartAlways, []string{"/bin/sleep", "3600"})
	e.waitPodRunningReady("steady")
	e.waitPodRunningReady("crashing")
	steadyPids := waitPids(t, steady.GetMetadata().GetUid(), 1)
	crashPids := waitPids(t, crashing.GetMetadata().GetUid(), 1)

	e.api.StopReplica(0)
	if err := syscall.Kill(crashPids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	poll.For(t, testDeadline, "the killed container restarted while the API is away", func(context.Context) error {
		pids := podPids(crashing.GetMetadata().GetUid())
		if len(pids) != 1 || pids[0] == crashPids[0] {
			return fmt.Errorf("processes %v (the killed one was %d)", pids, crashPids[0])
		}
		return nil
	})
	// Longer than the lease's TTL and several resyncs: the agent must
	// neither stop the pods nor fail.
	deadline := time.Now().Add(3 * testLeaseDuration)
	for time.Now().Before(deadline) {
		if pids := podPids(steady.GetMetadata().GetUid()); !slices.Equal(pids, steadyPids) {
			t.Fatalf("steady pod's processes %v while the API is away, want %v", pids, steadyPids)
		}
		time.Sleep(100 * time.Millisecond)
	}

	e.api.StartReplica(0)
	poll.For(t, testDeadline, "the restart reported once the API is back", func(context.Context) error {
		pod, err := e.pod("crashing")
		if err != nil {
			return err
		}
		cs := pod.GetStatus().GetContainerStatuses()
		if len(cs) != 1 || cs[0].GetRestartCount() < 1 || cs[0].GetState().GetRunning() == nil {
			return fmt.Errorf("container statuses %v", cs)
		}
		return nil
	})
	if pids := podPids(steady.GetMetadata().GetUid()); !slices.Equal(pids, steadyPids) {
		t.Fatalf("steady pod's processes %v after the API came back, want %v", pids, steadyPids)
	}
	if pod := e.waitPodRunningReady("steady"); pod.GetStatus().GetContainerStatuses()[0].GetRestartCount() != 0 {
		t.Fatalf("steady pod restarted: %v", pod.GetStatus())
	}
	poll.For(t, testDeadline, "the node lease held again", func(context.Context) error {
		_, err := e.lease(n.name)
		return err
	})
}

// A restarted agent (and runtime) on the same state directory adopts the
// running pods: same processes, no restart.
func TestAgentRestartAdoptsPods(t *testing.T) {
	e := newEnv(t, 1)
	n := e.newProcessNode("proc-3")
	pod := e.createPod("adopted", n.name, "", []string{"/bin/sleep", "3600"}, []string{"/bin/sh", "-c", "exec sleep 3600"})
	e.waitPodRunningReady("adopted")
	before := waitPids(t, pod.GetMetadata().GetUid(), 2)

	n.restart()
	// A pod created after the restart runs once the new agent has worked
	// through what it found at start.
	e.createPod("after-restart", n.name, "", []string{"/bin/sleep", "3600"})
	e.waitPodRunningReady("after-restart")
	if after := podPids(pod.GetMetadata().GetUid()); !slices.Equal(after, before) {
		t.Fatalf("processes %v after the agent restarted, want %v", after, before)
	}
	got := e.waitPodRunningReady("adopted")
	for _, cs := range got.GetStatus().GetContainerStatuses() {
		if cs.GetRestartCount() != 0 {
			t.Fatalf("container %s restarted: %v", cs.GetName(), cs)
		}
	}
}

// A container's log reaches a client through PodService/StreamPodLogs: the
// API server proxies the call to the node's NodeAgentService.
func TestLogsThroughTheAPI(t *testing.T) {
	e := newEnv(t, 1)
	n := e.newProcessNode("proc-4")
	e.createPod("talker", n.name, "", []string{"/bin/sh", "-c", "echo hello; echo world; exec sleep 3600"})
	e.waitPodRunningReady("talker")
	poll.For(t, testDeadline, "the node publishes its agent endpoint", func(context.Context) error {
		node, err := e.node(n.name)
		if err != nil {
			return err
		}
		if node.GetStatus().GetAgentEndpoint() != n.endpoint {
			return fmt.Errorf("agent_endpoint %q", node.GetStatus().GetAgentEndpoint())
		}
		return nil
	})

	read := func(req *capstanv1.StreamPodLogsRequest) (string, error) {
		stream, err := e.c.Pods().StreamPodLogs(e.ctx(), req)
		if err != nil {
			return "", err
		}
		var out strings.Builder
		for {
			chunk, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return out.String(), nil
			}
			if err != nil {
				return out.String(), err
			}
			out.Write(chunk.GetData())
		}
	}
	poll.For(t, testDeadline, "the whole log", func(context.Context) error {
		got, err := read(&capstanv1.StreamPodLogsRequest{Name: "talker"})
		if err != nil {
			return err
		}
		if got != "hello\nworld\n" {
			return fmt.Errorf("log %q", got)
		}
		return nil
	})
	if got, err := read(&capstanv1.StreamPodLogsRequest{Name: "talker", Container: "c0", TailLines: proto.Int64(1)}); err != nil || got != "world\n" {
		t.Fatalf("tail 1: %q, %v", got, err)
	}

	// Follow: the existing lines arrive, and the stream stays open until
	// the caller cancels.
	ctx, cancel := context.WithCancel(e.ctx())
	stream, err := e.c.Pods().StreamPodLogs(ctx, &capstanv1.StreamPodLogsRequest{Name: "talker", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got strings.Builder
	done := make(chan error, 1)
	go func() {
		for {
			chunk, err := stream.Recv()
			if err != nil {
				done <- err
				return
			}
			mu.Lock()
			got.Write(chunk.GetData())
			mu.Unlock()
		}
	}()
	poll.For(t, testDeadline, "followed log", func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if got.String() != "hello\nworld\n" {
			return fmt.Errorf("log %q", got.String())
		}
		return nil
	})
	select {
	case err := <-done:
		t.Fatalf("a followed log ended by itself: %v", err)
	default:
	}
	cancel()
	<-done
}
