package localcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/capstan-dev/capstan/internal/poll"
)

// helperEnv makes the test binary act as a managed process instead of
// running the tests: the runner needs programs that ignore SIGTERM, serve
// gRPC health or fail at start, and /bin/sleep does none of that.
const helperEnv = "LOCALCLUSTER_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode, os.Args[1:]))
	}
	goleak.VerifyTestMain(m)
}

// runHelper is the body of a helper process.
func runHelper(mode string, args []string) int {
	terminated := make(chan os.Signal, 1)
	switch mode {
	case "serve-health": // serve grpc.health.v1 SERVING on args[0] until SIGTERM
		signal.Notify(terminated, syscall.SIGTERM)
		lis, err := net.Listen("tcp", args[0])
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 1
		}
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, health.NewServer())
		go srv.Serve(lis)
		<-terminated
		srv.GracefulStop()
		return 0
	case "serve-http": // answer 200 on http://args[0]/healthz until SIGTERM
		signal.Notify(terminated, syscall.SIGTERM)
		lis, err := net.Listen("tcp", args[0])
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 1
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: time.Second}
		go srv.Serve(lis)
		<-terminated
		_ = srv.Close()
		return 0
	case "ignore-term": // survive SIGTERM: only SIGKILL ends it
		signal.Ignore(syscall.SIGTERM)
		signal.Notify(terminated, syscall.SIGUSR1)
		fmt.Println("ignoring SIGTERM")
		<-terminated
		return 0
	case "fail": // exit at once, with a message in the log
		fmt.Fprintln(os.Stderr, "helper: bad flag --nope")
		return 3
	}
	return 2
}

func helperProcess(name, mode string, args ...string) Process {
	return Process{Name: name, Binary: os.Args[0], Args: args, Env: []string{helperEnv + "=" + mode}}
}

func sleepProcess(name string) Process {
	return Process{Name: name, Binary: "/bin/sleep", Args: []string{"600"}}
}

func newCluster(t *testing.T, procs ...Process) *Cluster {
	t.Helper()
	c, err := New(Config{Topology: Topology{StateDir: t.TempDir(), Processes: procs}, ReadyTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Down(context.Background(), time.Second); err != nil {
			t.Errorf("cleanup Down: %v", err)
		}
	})
	return c
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustPid(t *testing.T, c *Cluster, name string) int {
	t.Helper()
	pid, err := c.Pid(name)
	if err != nil {
		t.Fatalf("Pid(%s): %v", name, err)
	}
	return pid
}

func TestUpAdoptsRunningAndRestartsKilled(t *testing.T) {
	ctx := testContext(t)
	c := newCluster(t, sleepProcess("a"), sleepProcess("b"))
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	pidA, pidB := mustPid(t, c, "a"), mustPid(t, c, "b")

	// A second Up, as from another `make local-up`, adopts both.
	again, err := New(Config{Topology: c.Topology()})
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mustPid(t, c, "a"); got != pidA {
		t.Fatalf("Up restarted a running process: pid %d, want %d", got, pidA)
	}

	if err := c.Signal("b", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitExited(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pid("b"); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Pid of a killed process: err %v, want ErrNotRunning", err)
	}
	for _, st := range c.Status() {
		if want := st.Name == "a"; st.Running != want {
			t.Fatalf("Status %s: running %v, want %v", st.Name, st.Running, want)
		}
	}

	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mustPid(t, c, "b"); got == pidB {
		t.Fatalf("killed process was not restarted (pid %d)", got)
	}
	if got := mustPid(t, c, "a"); got != pidA {
		t.Fatalf("Up touched the live process: pid %d, want %d", got, pidA)
	}
}

func TestProcessesRunDetachedAndLogToTheirFile(t *testing.T) {
	ctx := testContext(t)
	c := newCluster(t, helperProcess("h", "ignore-term"))
	pid, err := c.Start(ctx, "h")
	if err != nil {
		t.Fatal(err)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command: state ppid pgrp session.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if fields[2] != strconv.Itoa(pid) || fields[3] != strconv.Itoa(pid) {
		t.Fatalf("pid %d has process group %s and session %s, want its own", pid, fields[2], fields[3])
	}
	waitForLog(t, c.Topology().LogPath("h"), "ignoring SIGTERM")
	if !strings.Contains(readFile(t, c.Topology().LogPath("h")), "localcluster: starting "+os.Args[0]) {
		t.Fatal("log has no start header")
	}
}

func TestDownEscalatesToSIGKILL(t *testing.T) {
	ctx := testContext(t)
	c := newCluster(t, helperProcess("stubborn", "ignore-term"), sleepProcess("polite"))
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	waitForLog(t, c.Topology().LogPath("stubborn"), "ignoring SIGTERM")
	if err := c.Down(ctx, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, st := range c.Status() {
		if st.Running || st.Pid != 0 {
			t.Fatalf("after Down: %+v, want stopped with no pid file", st)
		}
	}
}

func TestDownStopsAFrozenProcess(t *testing.T) {
	ctx := testContext(t)
	c := newCluster(t, sleepProcess("frozen"))
	var logs bytes.Buffer
	c.logger = slog.New(slog.NewTextHandler(&logs, nil))
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Signal("frozen", syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// SIGCONT after SIGTERM lets the frozen process act on SIGTERM, so
	// within a long grace Down must not need SIGKILL.
	if err := c.Down(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "killing") {
		t.Fatalf("Down killed a process that SIGTERM would have stopped:\n%s", logs.String())
	}
	if _, err := c.Pid("frozen"); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("after Down: %v, want ErrNotRunning", err)
	}
}

func TestForeignPidIsNeverTaken(t *testing.T) {
	ctx := testContext(t)
	c := newCluster(t, sleepProcess("s"))
	topo := c.Topology()
	if err := os.MkdirAll(filepath.Dir(topo.PidPath("s")), 0o700); err != nil {
		t.Fatal(err)
	}
	// This test's own pid is alive but is not /bin/sleep.
	if err := writePidFile(topo.PidPath("s"), os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if st := c.Status()[0]; st.Running || st.Pid != os.Getpid() {
		t.Fatalf("status %+v, want a stale pid file", st)
	}
	if err := c.Signal("s", syscall.SIGTERM); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Signal to a foreign pid: %v, want ErrNotRunning", err)
	}
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if pid := mustPid(t, c, "s"); pid == os.Getpid() {
		t.Fatal("adopted a foreign process")
	}
}

func TestRestartArgsOnceMarkerExists(t *testing.T) {
	ctx := testContext(t)
	c := newCluster(t, Process{
		Name: "member", Binary: "/bin/sleep",
		Args: []string{"601"}, RestartArgs: []string{"602"}, RestartMarker: "etcd/member",
	})
	for _, tc := range []struct {
		makeMarker bool
		wantArg    string
	}{
		{makeMarker: false, wantArg: "601"},
		{makeMarker: true, wantArg: "602"},
	} {
		if tc.makeMarker {
			if err := os.MkdirAll(filepath.Join(c.Topology().DataDir("member"), "etcd", "member"), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		pid, err := c.Start(ctx, "member")
		if err != nil {
			t.Fatal(err)
		}
		cmdline := readFile(t, fmt.Sprintf("/proc/%d/cmdline", pid))
		if want := "/bin/sleep\x00" + tc.wantArg + "\x00"; cmdline != want {
			t.Fatalf("marker %v: cmdline %q, want %q", tc.makeMarker, cmdline, want)
		}
		if err := c.Stop(ctx, "member", 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

func TestUpWaitsForHealth(t *testing.T) {
	ctx := testContext(t)
	ports, err := FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0].GRPC)
	p := helperProcess("api", "serve-health", addr)
	p.HealthAddr = addr
	c := newCluster(t, p)
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckReady(ctx, "api"); err != nil {
		t.Fatalf("after Up: %v", err)
	}
	if got := c.Topology().APIAddresses(); len(got) != 0 {
		t.Fatalf("APIAddresses of a topology without apiserver binaries: %v", got)
	}
}

func TestUpReportsAProcessThatDies(t *testing.T) {
	ctx := testContext(t)
	p := helperProcess("broken", "fail")
	p.HealthAddr = "127.0.0.1:1"
	c := newCluster(t, p)
	err := c.Up(ctx)
	if !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "bad flag --nope") {
		t.Fatalf("Up: %v, want ErrNotRunning with the log's last lines", err)
	}
}

func TestNewRejectsBadTopologies(t *testing.T) {
	for _, tc := range []struct {
		name string
		topo Topology
		want string
	}{
		{"no state dir", Topology{Processes: []Process{sleepProcess("a")}}, "StateDir is empty"},
		{"duplicate", Topology{StateDir: "x", Processes: []Process{sleepProcess("a"), sleepProcess("a")}}, "appears twice"},
		{"path name", Topology{StateDir: "x", Processes: []Process{sleepProcess("a/b")}}, "not a valid file name"},
		{"no binary", Topology{StateDir: "x", Processes: []Process{{Name: "a"}}}, "Binary is empty"},
		{"restart without marker", Topology{StateDir: "x", Processes: []Process{{Name: "a", Binary: "/bin/true", RestartArgs: []string{}}}}, "RestartMarker"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Config{Topology: tc.topo})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestStartWithoutBinarySaysToBuild(t *testing.T) {
	c := newCluster(t, Process{Name: "a", Binary: filepath.Join(t.TempDir(), "missing")})
	if _, err := c.Start(testContext(t), "a"); err == nil || !strings.Contains(err.Error(), "make build") {
		t.Fatalf("Start: %v, want a hint to build", err)
	}
}

func TestDefaultTopology(t *testing.T) {
	topo := Default("bin", ".local")
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(wd, "bin", "apiserver"); topo.Processes[0].Binary != want {
		t.Errorf("binary %s, want %s", topo.Processes[0].Binary, want)
	}
	want := []string{"127.0.0.1:6441", "127.0.0.1:6442", "127.0.0.1:6443"}
	if got := topo.APIAddresses(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("APIAddresses: %v, want %v", got, want)
	}
	p := topo.Processes[1]
	for _, arg := range []string{
		"--name=apiserver-2",
		"--etcd-name=master-2",
		"--etcd-listen-client=http://127.0.0.1:22379",
		"--etcd-advertise-peer=http://127.0.0.1:22380",
		"--etcd-initial-cluster=master-1=http://127.0.0.1:12380,master-2=http://127.0.0.1:22380,master-3=http://127.0.0.1:32380",
		"--etcd-data-dir=" + filepath.Join(wd, ".local", "data", "apiserver-2", "etcd"),
		"--etcd-initial-cluster-state=new",
	} {
		if !slices.Contains(p.Args, arg) {
			t.Errorf("apiserver-2 args %q lack %q", p.Args, arg)
		}
	}
	if !slices.Contains(p.RestartArgs, "--etcd-initial-cluster-state=existing") {
		t.Errorf("apiserver-2 restart args %q do not rejoin the existing cluster", p.RestartArgs)
	}

	var names []string
	for _, p := range topo.Processes {
		names = append(names, p.Name)
	}
	wantNames := []string{"apiserver-1", "apiserver-2", "apiserver-3",
		"controller-manager-1", "controller-manager-2", "controller-manager-3",
		"scheduler-1", "scheduler-2", "scheduler-3",
		"node-agent-1", "node-agent-2", "node-agent-3"}
	if !slices.Equal(names, wantNames) {
		t.Fatalf("processes %v, want %v", names, wantNames)
	}
	for _, tc := range []struct {
		index     int
		binary    string
		healthURL string
		wantArgs  []string
	}{
		{4, "controller-manager", "http://127.0.0.1:10252/healthz", []string{"--identity=controller-manager-2", "--metrics-listen=127.0.0.1:10252"}},
		{8, "scheduler", "http://127.0.0.1:10263/healthz", []string{"--identity=scheduler-3", "--metrics-listen=127.0.0.1:10263"}},
	} {
		p := topo.Processes[tc.index]
		if want := filepath.Join(wd, "bin", tc.binary); p.Binary != want {
			t.Errorf("%s: binary %s, want %s", p.Name, p.Binary, want)
		}
		if p.HealthURL != tc.healthURL || p.HealthAddr != "" {
			t.Errorf("%s: health URL %q addr %q, want URL %q", p.Name, p.HealthURL, p.HealthAddr, tc.healthURL)
		}
		for _, arg := range append(tc.wantArgs, "--server=127.0.0.1:6441,127.0.0.1:6442,127.0.0.1:6443") {
			if !slices.Contains(p.Args, arg) {
				t.Errorf("%s args %q lack %q", p.Name, p.Args, arg)
			}
		}
	}
	agent := topo.Processes[10]
	if want := filepath.Join(wd, "bin", "node-agent"); agent.Binary != want || agent.HealthAddr != "127.0.0.1:10272" || agent.HealthURL != "" {
		t.Errorf("node-agent-2: binary %s health %q %q", agent.Binary, agent.HealthAddr, agent.HealthURL)
	}
	for _, arg := range []string{
		"--node-name=node-2", "--listen=127.0.0.1:10272", "--address=127.0.0.1",
		"--server=127.0.0.1:6441,127.0.0.1:6442,127.0.0.1:6443",
		"--state-dir=" + filepath.Join(wd, ".local", "data", "node-agent-2"),
		"--node-port-range=30922-31843",
	} {
		if !slices.Contains(agent.Args, arg) {
			t.Errorf("node-agent-2 args %q lack %q", agent.Args, arg)
		}
	}
	if got := topo.APIAddresses(); len(got) != 3 {
		t.Errorf("APIAddresses %v: the node agents' addresses are not API servers", got)
	}
}

func TestControlPlaneWithoutHTTPPorts(t *testing.T) {
	topo := ControlPlane("bin", t.TempDir(), []MasterPorts{{GRPC: 1, EtcdClient: 2, EtcdPeer: 3}})
	cm := topo.Processes[1]
	if cm.Name != "controller-manager-1" || cm.HealthURL != "" || !slices.Contains(cm.Args, "--metrics-listen=") {
		t.Fatalf("controller-manager without an HTTP port: %+v", cm)
	}
	if n := len(topo.Processes); n != 3 {
		t.Fatalf("%d processes, want 3: no node agent without its port", n)
	}
}

func TestUpWaitsForHTTPHealthAndLiveness(t *testing.T) {
	ctx := testContext(t)
	ports, err := FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0].ControllerManagerHTTP)
	web := helperProcess("web", "serve-http", addr)
	web.HealthURL = "http://" + addr + "/healthz"
	c := newCluster(t, web, sleepProcess("plain"))
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"web", "plain"} {
		if err := c.CheckReady(ctx, name); err != nil {
			t.Fatalf("%s after Up: %v", name, err)
		}
	}
	if err := c.Stop(ctx, "plain", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckReady(ctx, "plain"); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("CheckReady of a stopped process without health checks: %v, want ErrNotRunning", err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func waitForLog(t *testing.T, path, text string) {
	t.Helper()
	poll.For(t, 30*time.Second, fmt.Sprintf("%s to contain %q", path, text), func(context.Context) error {
		b, err := os.ReadFile(path)
		if err != nil || !strings.Contains(string(b), text) {
			return fmt.Errorf("the log is %q (%v)", b, err)
		}
		return nil
	})
}

func TestAddAndRemoveAtRunTime(t *testing.T) {
	ctx := testContext(t)
	c := newCluster(t, sleepProcess("first"))
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Add(sleepProcess("first")); err == nil || !strings.Contains(err.Error(), "appears twice") {
		t.Fatalf("Add of a name the topology has: %v, want an error", err)
	}
	if err := c.Add(sleepProcess("added")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pid("added"); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Add started the process: %v", err)
	}
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	pid := mustPid(t, c, "added")
	if err := c.Remove(ctx, "added", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if syscall.Kill(pid, 0) == nil && isOurs(pid, "/bin/sleep") {
		t.Fatalf("Remove left pid %d running", pid)
	}
	if _, err := c.Pid("added"); !errors.Is(err, ErrUnknownProcess) {
		t.Fatalf("Pid after Remove: %v, want ErrUnknownProcess", err)
	}
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, st := range c.Status() {
		names = append(names, st.Name)
	}
	if !slices.Equal(names, []string{"first"}) {
		t.Fatalf("processes after Remove and Up: %v, want [first]", names)
	}
}

func TestCheckStopped(t *testing.T) {
	ctx := testContext(t)
	c := newCluster(t, sleepProcess("s"))
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckStopped("s"); err == nil {
		t.Fatal("CheckStopped of a running process: nil")
	}
	if err := c.Signal("s", syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 10*time.Second, "the process to stop", func(context.Context) error { return c.CheckStopped("s") })
	if err := c.Signal("s", syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 10*time.Second, "the process to run again", func(context.Context) error {
		if c.CheckStopped("s") == nil {
			return errors.New("still stopped")
		}
		return nil
	})
}

func TestLayoutWithWorkersApartAndExtraArgs(t *testing.T) {
	masters, workers, err := FreeLayoutPorts(1, 2)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range append([]int{masters[0].GRPC, masters[0].EtcdClient, masters[0].EtcdPeer, masters[0].ControllerManagerHTTP, masters[0].SchedulerHTTP}, workers...) {
		if p == 0 || seen[p] {
			t.Fatalf("FreeLayoutPorts gave %v and %v: a port is 0 or twice", masters, workers)
		}
		seen[p] = true
	}
	topo := Layout{
		BinDir: "bin", StateDir: t.TempDir(), Masters: masters, Workers: workers,
		NodePorts: PortRange{First: 20000, Last: 20999},
		Args:      map[string][]string{ControllerManagerBinary: {"--lease-duration=2s"}, NodeAgentBinary: {"--labels=a=b"}},
	}.Topology()
	var names []string
	for _, p := range topo.Processes {
		names = append(names, p.Name)
		wantExtra := map[string]string{"controller-manager": "--lease-duration=2s", "node-agent": "--labels=a=b"}[filepath.Base(p.Binary)]
		if wantExtra != "" && p.Args[len(p.Args)-1] != wantExtra {
			t.Errorf("%s args %q do not end with %q", p.Name, p.Args, wantExtra)
		}
	}
	if want := []string{"apiserver-1", "controller-manager-1", "scheduler-1", "node-agent-1", "node-agent-2"}; !slices.Equal(names, want) {
		t.Fatalf("processes %v, want %v", names, want)
	}
	if got := topo.Processes[4].Args[0]; got != "--node-name=node-2" {
		t.Errorf("node-agent-2 runs %s, want --node-name=node-2", got)
	}
	for i, want := range []string{"--node-port-range=20000-20499", "--node-port-range=20500-20999"} {
		if p := topo.Processes[3+i]; !slices.Contains(p.Args, want) {
			t.Errorf("%s args %q lack %q", p.Name, p.Args, want)
		}
	}
	apiOnly := Layout{BinDir: "bin", StateDir: t.TempDir(), Masters: masters, APIServersOnly: true, Workers: workers[:1]}.Topology()
	if n := len(apiOnly.Processes); n != 2 {
		t.Fatalf("API servers only, one worker: %d processes, want 2", n)
	}
}

// TestNodePortsSplit: the node agents of one machine get disjoint slices
// of the node port range that together cover it.
func TestNodePortsSplit(t *testing.T) {
	for _, tc := range []struct {
		r    PortRange
		n    int
		want []PortRange
	}{
		{DefaultNodePorts, 3, []PortRange{{30000, 30921}, {30922, 31843}, {31844, 32767}}},
		{DefaultNodePorts, 1, []PortRange{DefaultNodePorts}},
		{PortRange{20000, 20999}, 2, []PortRange{{20000, 20499}, {20500, 20999}}},
		{PortRange{1, 3}, 3, []PortRange{{1, 1}, {2, 2}, {3, 3}}},
	} {
		if got := tc.r.Split(tc.n); !slices.Equal(got, tc.want) {
			t.Errorf("%v.Split(%d) = %v, want %v", tc.r, tc.n, got, tc.want)
		}
	}
}

// TestStartedProcessRunsAtOnce: right after Start returns, the process is
// running as far as every look at it can tell, although the kernel lays
// out a new program's arguments a moment after the exec that Start waits
// for (a look in between saw an empty /proc/<pid>/cmdline in about one
// start of a hundred).
func TestStartedProcessRunsAtOnce(t *testing.T) {
	ctx := testContext(t)
	c := newCluster(t, sleepProcess("s"))
	for round := range 300 {
		pid, err := c.Start(ctx, "s")
		if err != nil {
			t.Fatal(err)
		}
		if got, err := c.Pid("s"); err != nil || got != pid {
			t.Fatalf("round %d: Pid right after Start = %d, %v; want %d", round, got, err, pid)
		}
		if err := c.Stop(ctx, "s", time.Second); err != nil {
			t.Fatal(err)
		}
	}
}
