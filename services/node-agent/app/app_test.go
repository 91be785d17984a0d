package app_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
	"github.com/capstan-dev/capstan/services/node-agent/app"
	"github.com/capstan-dev/capstan/services/node-agent/internal/agent"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// etcd's embedded server and client keep a few process-wide goroutines.
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/client/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

const testDeadline = 90 * time.Second

func TestParseFlags(t *testing.T) {
	opts, err := app.ParseFlags([]string{
		"--node-name=worker-7", "--server=127.0.0.1:1,127.0.0.1:2", "--address=10.0.0.7", "--listen=0.0.0.0:11250",
		"--labels=zone=z1, disk=ssd", "--cpu=1500m", "--memory=2Gi", "--max-pods=20", "--lease-duration=4s",
		"--log-level=debug", "--log-format=json", "--node-port-range=31000-31099",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := opts.Validate(); err != nil {
		t.Fatal(err)
	}
	opts = opts.Complete()
	if opts.NodeName != "worker-7" || opts.Labels["zone"] != "z1" || opts.Labels["disk"] != "ssd" || opts.CPU != "1500m" ||
		opts.Memory != "2Gi" || opts.MaxPods != 20 || opts.LeaseDuration != 4*time.Second || opts.StateDir != filepath.Join(".node-agent", "worker-7") ||
		opts.NodePortRange != "31000-31099" {
		t.Fatalf("options %+v", opts)
	}
	if ep, err := opts.AgentEndpoint(); err != nil || ep != "10.0.0.7:11250" {
		t.Fatalf("AgentEndpoint %q, %v", ep, err)
	}
	if d := app.DefaultOptions(); d.Listen != "127.0.0.1:10250" || d.Address != "127.0.0.1" || d.MaxPods != 110 || d.LeaseDuration != 6*time.Second ||
		d.NodePortRange != "30000-32767" {
		t.Fatalf("defaults %+v", d)
	}
	if _, err := app.ParseFlags([]string{"--labels=novalue"}); err == nil {
		t.Fatal("a label without = was accepted")
	}
}

// ephemeralPorts is ten ports of the kernel's ephemeral port range that
// it does not reserve, "" if that cannot be told.
func ephemeralPorts() string {
	rng, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return ""
	}
	if reserved, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_reserved_ports"); err != nil || strings.TrimSpace(string(reserved)) != "" {
		return ""
	}
	fields := strings.Fields(string(rng))
	if len(fields) != 2 {
		return ""
	}
	first, err := strconv.Atoi(fields[0])
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%d-%d", first, first+9)
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(o *app.Options)
		want   string // "" for valid
	}{
		{"defaults", func(o *app.Options) {}, ""},
		{"hollow", func(o *app.Options) { o.HollowNodes = 100 }, ""},
		{"probe only", func(o *app.Options) { o.HealthProbe = "127.0.0.1:10250"; o.NodeName = "" }, ""},
		{"empty name", func(o *app.Options) { o.NodeName = "" }, "--node-name must not be empty"},
		{"bad name", func(o *app.Options) { o.NodeName = "Node_1" }, `--node-name "Node_1"`},
		{"bad server", func(o *app.Options) { o.Server = "nohost" }, `--server: "nohost" must be host:port`},
		{"bad listen", func(o *app.Options) { o.Listen = "x" }, `--listen "x": must be host:port`},
		{"bad address", func(o *app.Options) { o.Address = "" }, `--address ""`},
		{"bad label", func(o *app.Options) { o.Labels = map[string]string{"a b": "c"} }, `--labels: key "a b"`},
		{"bad cpu", func(o *app.Options) { o.CPU = "lots" }, `--cpu "lots": must be a positive quantity`},
		{"zero memory", func(o *app.Options) { o.Memory = "0" }, `--memory "0"`},
		{"max pods", func(o *app.Options) { o.MaxPods = 0 }, "--max-pods must be at least 1, not 0"},
		{"short lease", func(o *app.Options) { o.LeaseDuration = time.Second }, "--lease-duration must be whole seconds and at least 2s, not 1s"},
		{"hollow count", func(o *app.Options) { o.HollowNodes = -1 }, "--hollow-nodes must be between 0 and 10000, not -1"},
		{"bad level", func(o *app.Options) { o.LogLevel = "loud" }, "--log-level must be debug, info, warn or error"},
		{"bad format", func(o *app.Options) { o.LogFormat = "xml" }, "--log-format must be text or json"},
		{"bad probe", func(o *app.Options) { o.HealthProbe = "x" }, `--health-probe "x": must be host:port`},
		{"node port range", func(o *app.Options) { o.NodePortRange = "31000-31999" }, ""},
		{"node port range syntax", func(o *app.Options) { o.NodePortRange = "31000" }, `--node-port-range: "31000" is not FIRST-LAST`},
		{"node port range order", func(o *app.Options) { o.NodePortRange = "5-3" }, "--node-port-range: 5-3 is not a range of ports"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := app.DefaultOptions()
			o.NodeName = "node-1"
			tc.change(&o)
			err := o.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestValidateNodePortRangeAgainstTheKernel: a real node refuses node
// ports that the kernel hands to outgoing connections; hollow nodes, which
// use none, do not care.
func TestValidateNodePortRangeAgainstTheKernel(t *testing.T) {
	ephemeral := ephemeralPorts()
	if ephemeral == "" {
		t.Skip("the kernel's ephemeral port range is unknown")
	}
	o := app.DefaultOptions()
	o.NodeName = "node-1"
	o.NodePortRange = ephemeral
	want := "--node-port-range: " + ephemeral + " lies inside the kernel's ephemeral port range"
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Validate: %v, want an error containing %q", err, want)
	}
	o.HollowNodes = 2
	if err := o.Validate(); err != nil {
		t.Errorf("Validate of hollow nodes: %v", err)
	}
}

// syncBuffer is a log destination safe for the agent's goroutines.
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

// started is a Run going on in the background.
type started struct {
	addr   string
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func start(t *testing.T, opts app.Options) *started {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts.Listener = lis
	ctx, cancel := context.WithCancel(context.Background())
	s := &started{addr: lis.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- app.Run(ctx, opts) }()
	t.Cleanup(func() { s.stop(t) })
	return s
}

// stop is SIGTERM: cancel and wait for Run to return nil.
func (s *started) stop(t *testing.T) {
	t.Helper()
	s.once.Do(func() {
		s.cancel()
		select {
		case err := <-s.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(testDeadline):
			t.Error("Run did not return after its context ended")
		}
	})
}

func probe(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return app.Run(ctx, app.Options{HealthProbe: addr})
}

func newClient(t *testing.T, api *apiservertest.Cluster) *client.Client {
	c, err := client.New(client.Config{Endpoints: api.Addrs()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// The real node agent, in-process: it registers, reports SERVING to its
// own health probe, runs a pod as a process, logs component and node on
// every line, and on SIGTERM releases its lease and exits 0 leaving the
// pod's process running.
func TestRunRealNode(t *testing.T) {
	api := apiservertest.Start(t, 1)
	c := newClient(t, api)
	stateDir := t.TempDir()
	t.Cleanup(func() { killProcessesUnder(t, stateDir) })
	var logs syncBuffer
	opts := app.DefaultOptions()
	opts.NodeName = "app-node"
	opts.Server = strings.Join(api.Addrs(), ",")
	opts.StateDir = stateDir
	opts.NodePortRange = "31990-31999"
	opts.LeaseDuration = 2 * time.Second
	opts.LogOutput = &logs
	opts.Tune = func(cfg *agent.Config) { cfg.NodeStatusCheckPeriod = 200 * time.Millisecond }
	s := start(t, opts)

	poll.For(t, testDeadline, "the agent's own health probe to pass", func(context.Context) error { return probe(s.addr) })
	obj, err := c.Get(t.Context(), resource.MustLookup("Node"), "", "app-node")
	if err != nil {
		t.Fatal(err)
	}
	node := obj.(*capstanv1.Node)
	if node.GetStatus().GetAgentEndpoint() != s.addr || node.GetStatus().GetNodeInfo().GetRuntime() != app.RuntimeProcess ||
		node.GetStatus().GetCapacity()["memory"] == "" || node.GetStatus().GetCapacity()["cpu"] == "" {
		t.Fatalf("node status %v", node.GetStatus())
	}

	_, err = c.Create(t.Context(), &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Name: "sleeper", Namespace: "default"},
		Spec: &capstanv1.PodSpec{NodeName: "app-node", Containers: []*capstanv1.Container{{
			Name: "main", Command: []string{"/bin/sleep", "3600"}, Ports: []*capstanv1.ContainerPort{{ContainerPort: 8080}},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	poll.For(t, testDeadline, "the pod Running on a node port of --node-port-range", func(ctx context.Context) error {
		obj, err := c.Get(ctx, resource.MustLookup("Pod"), "default", "sleeper")
		if err != nil {
			return err
		}
		st := obj.(*capstanv1.Pod).GetStatus()
		if phase := st.GetPhase(); phase != wellknown.PodRunning {
			return fmt.Errorf("phase %q", phase)
		}
		if cs := st.GetContainerStatuses(); len(cs) != 1 || len(cs[0].GetPorts()) != 1 ||
			cs[0].GetPorts()[0].GetHostPort() < 31990 || cs[0].GetPorts()[0].GetHostPort() > 31999 {
			return fmt.Errorf("container statuses %v, want port 8080 on a node port in 31990-31999", cs)
		}
		return nil
	})
	pids := processesUnder(stateDir)
	if len(pids) != 1 {
		t.Fatalf("pod processes %v, want one", pids)
	}

	s.stop(t)
	if got := processesUnder(stateDir); len(got) != 1 || got[0] != pids[0] {
		t.Fatalf("processes %v after the agent stopped, want %v still running", got, pids)
	}
	if _, err := c.Leases().GetLease(t.Context(), &capstanv1.GetLeaseRequest{Namespace: wellknown.NodeLeaseNamespace, Name: "app-node"}); !apierrors.IsNotFound(err) {
		t.Fatalf("node lease after SIGTERM: %v, want it released", err)
	}
	if err := probe(s.addr); err == nil {
		t.Fatal("health probe of a stopped agent succeeded")
	}
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if !strings.Contains(line, "component=node-agent") || !strings.Contains(line, "node=app-node") {
			t.Errorf("log line without component and node: %s", line)
		}
	}
}

// Hollow mode: N simulated nodes behind one NodeAgentService.
func TestRunHollowNodes(t *testing.T) {
	api := apiservertest.Start(t, 1)
	c := newClient(t, api)
	var logs syncBuffer
	opts := app.DefaultOptions()
	opts.NodeName = "sim"
	opts.HollowNodes = 5
	opts.Server = strings.Join(api.Addrs(), ",")
	opts.CPU, opts.Memory = "8", "16Gi"
	opts.LeaseDuration = 2 * time.Second
	opts.LogOutput = &logs
	s := start(t, opts)
	poll.For(t, testDeadline, "SERVING once every hollow node registered", func(context.Context) error { return probe(s.addr) })
	res, err := c.ListAll(t.Context(), resource.MustLookup("Node"), client.ListOptions{LabelSelector: agent.LabelHollow + "=true"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Items) != 5 {
		t.Fatalf("%d hollow nodes, want 5", len(res.Items))
	}
	for _, obj := range res.Items {
		st := obj.(*capstanv1.Node).GetStatus()
		if st.GetCapacity()["cpu"] != "8" || st.GetAgentEndpoint() != s.addr || st.GetNodeInfo().GetRuntime() != "hollow" {
			t.Errorf("node %s status %v", obj.GetMetadata().GetName(), st)
		}
	}
	s.stop(t)
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if !strings.Contains(line, "component=node-agent") || !strings.Contains(line, "node=sim") {
			t.Errorf("log line without component and node: %s", line)
		}
	}
}

func TestRunRejectsBadOptions(t *testing.T) {
	opts := app.DefaultOptions()
	opts.NodeName = ""
	if err := app.Run(t.Context(), opts); err == nil || !strings.Contains(err.Error(), "node-agent: --node-name must not be empty") {
		t.Fatalf("Run: %v", err)
	}
}

// processesUnder lists the live processes whose working directory is
// under dir (where the runtime starts containers).
func processesUnder(dir string) []int {
	procs, _ := os.ReadDir("/proc")
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", p.Name(), "cwd"))
		if err != nil || !strings.HasPrefix(cwd, dir) {
			continue
		}
		if stat, err := os.ReadFile(filepath.Join("/proc", p.Name(), "stat")); err == nil {
			if i := bytes.LastIndexByte(stat, ')'); i > 0 && bytes.HasPrefix(stat[i+1:], []byte(" Z")) {
				continue // exited
			}
		}
		pids = append(pids, pid)
	}
	return pids
}

func killProcessesUnder(t *testing.T, dir string) {
	for _, pid := range processesUnder(dir) {
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			t.Logf("killed pod process %d", pid)
		}
	}
}
