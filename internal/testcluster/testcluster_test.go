package testcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Bounds of the test's waits: far above what each takes.
const (
	waitTimeout  = 60 * time.Second
	leaseTimeout = 30 * time.Second
)

var podKind = resource.MustLookup("Pod")

func TestConfigIsChecked(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"negative masters", Config{Masters: -1}, "at least one master"},
		{"negative workers", Config{Workers: -2}, "not a number of workers"},
		{"name with a slash", Config{Name: "a/b"}, "file name"},
		{"pool without nodes", Config{HollowPools: []HollowPool{{Name: "p"}}}, "at least 1"},
		{"pool without a name", Config{HollowPools: []HollowPool{{Nodes: 1}}}, "node name prefix"},
		{"pools of one name", Config{HollowPools: []HollowPool{{Name: "p", Nodes: 1}, {Name: "p", Nodes: 2}}}, "appears twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Start(t.Context(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestClusterOfRealProcesses starts three masters, a real worker and a
// pool of hollow nodes as real processes — the first attempt on a port
// that is taken, so that Start tries again on fresh ports — and then
// drives what the e2e tests and benchmarks use: a pod as a process on the
// real worker and one on a hollow node, a pool added and removed at run
// time, a frozen and a killed leader replaced, a clean SIGTERM, a restore,
// a candidate added and removed at run time, a short run of API faults
// with a log of the leases' holdings, a worker killed with its pod, and
// Close, after which nothing of the cluster runs.
func TestClusterOfRealProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a control plane of real processes")
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	attempts := 0
	freeLayoutPorts = func(masters, workers int) ([]localcluster.MasterPorts, []int, error) {
		m, w, err := localcluster.FreeLayoutPorts(masters, workers)
		if attempts++; attempts == 1 && err == nil {
			m[0].GRPC = taken.Addr().(*net.TCPAddr).Port
		}
		return m, w, err
	}
	defer func() { freeLayoutPorts = localcluster.FreeLayoutPorts }()

	buildCtx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	binDir, err := localcluster.FindOrBuildBinaries(buildCtx, t.TempDir(), localcluster.ControlPlaneBinaries...)
	cancel()
	if err != nil {
		t.Skipf("SKIP: the binaries cannot be built, so no cluster of real processes is tested: %v", err)
	}
	poolLabels := map[string]string{"testcluster.capstan.dev/pool": "start"}
	c, err := Start(t.Context(), Config{
		Name:         "testcluster-test",
		BinDir:       binDir,
		Workers:      1,
		HollowPools:  []HollowPool{{Name: "start-pool", Nodes: 2, Labels: poolLabels, CPU: "2", Memory: "4Gi"}},
		ReadyTimeout: 90 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the processes' logs:\n%s", c.LogTails(20))
		}
		for _, name := range c.Processes() {
			if pid, err := c.Pid(name); err == nil {
				pids = append(pids, pid)
			}
		}
		if err := c.Close(context.Background(), t.Failed()); err != nil {
			t.Errorf("Close: %v", err)
		}
		if t.Failed() {
			t.Logf("logs and data kept in %s", c.Dir())
		} else if _, err := os.Stat(c.Dir()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Close left %s: %v", c.Dir(), err)
		}
		for _, pid := range pids {
			if syscall.Kill(pid, 0) == nil {
				if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(st), ") Z ") {
					t.Errorf("pid %d still runs after Close: %s", pid, st)
				}
			}
		}
	})
	if attempts != 2 {
		t.Errorf("Start picked ports %d times, want 2: the first attempt on a taken port must fail and be retried", attempts)
	}
	if !strings.Contains(c.LogPath("apiserver-1"), "state-2") {
		t.Errorf("apiserver-1 logs to %s, want the second attempt's state", c.LogPath("apiserver-1"))
	}
	if log, err := os.ReadFile(filepath.Join(c.Dir(), "state-1", "logs", "apiserver-1.log")); err != nil || !strings.Contains(string(log), "address already in use") {
		t.Errorf("the first attempt's apiserver-1 log does not show the taken port (%v):\n%s", err, log)
	}
	if got := len(c.APIAddresses()); got != 3 || len(c.EtcdURLs()) != 3 || len(c.APIServers()) != 3 {
		t.Fatalf("%d API addresses, %v etcd URLs, %v API servers: want 3 of each", got, c.EtcdURLs(), c.APIServers())
	}
	if want := []NodeAgent{{Process: "node-agent-1", Node: "node-1"}}; !slices.Equal(c.NodeAgents(), want) {
		t.Fatalf("NodeAgents %v, want %v", c.NodeAgents(), want)
	}
	for _, p := range c.lc.Topology().Processes {
		if want := "--node-port-range=" + c.nodePorts.ports.String(); p.Name == "node-agent-1" && !slices.Contains(p.Args, want) {
			t.Errorf("node-agent-1 args %q lack %q, the cluster's block of node ports", p.Args, want)
		}
	}
	cl := c.Client()
	pool := c.HollowPool("start-pool")
	if pool == nil || !slices.Equal(pool.Nodes(), []string{"start-pool-0", "start-pool-1"}) {
		t.Fatalf("the pool started with the cluster: %v", pool)
	}
	waitNodesReady(t, cl, pool.Nodes(), poolLabels)
	waitNodesReady(t, cl, []string{"node-1"}, nil)

	t.Run("pods", func(t *testing.T) {
		real := createPod(t, cl, "on-the-worker", "node-1")
		hollow := createPod(t, cl, "on-a-hollow-node", "start-pool-1")
		for _, pod := range []string{real, hollow} {
			poll.For(t, waitTimeout, "pod "+pod+" Running and Ready", func(ctx context.Context) error {
				obj, err := cl.Get(ctx, podKind, "default", pod)
				if err != nil {
					return err
				}
				return runningAndReady(obj.(*capstanv1.Pod))
			})
		}
		obj, err := cl.Get(t.Context(), podKind, "default", real)
		if err != nil {
			t.Fatal(err)
		}
		uid := obj.GetMetadata().GetUid()
		procs := localcluster.PodProcesses(func(p localcluster.PodProcess) bool { return p.PodUID == uid })
		if len(procs) != 1 || procs[0].Namespace != "default" || !procs[0].Alive() {
			t.Fatalf("the real worker's pod runs %v, want one live process", procs)
		}
		pids = append(pids, procs[0].Pid)
		// The hollow agent completes a graceful deletion itself.
		if _, err := cl.Delete(t.Context(), podKind, "default", hollow, nil); err != nil {
			t.Fatal(err)
		}
		poll.For(t, waitTimeout, "the hollow node's pod to be gone", func(ctx context.Context) error {
			_, err := cl.Get(ctx, podKind, "default", hollow)
			if apierrors.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("still there (%v)", err)
		})
	})

	t.Run("pool at run time", func(t *testing.T) {
		late, err := c.StartHollowPool(t.Context(), HollowPool{Name: "late-pool", Nodes: 1, MaxPods: 7, LeaseDuration: 4 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		waitNodesReady(t, cl, late.Nodes(), nil)
		obj, err := cl.Get(t.Context(), nodeKind, "", "late-pool-0")
		if err != nil {
			t.Fatal(err)
		}
		if got := obj.(*capstanv1.Node).GetStatus().GetCapacity()["pods"]; got != "7" {
			t.Errorf("the late pool's node has capacity pods=%q, want 7", got)
		}
		if err := late.Stop(t.Context()); err != nil {
			t.Fatal(err)
		}
		for _, kind := range []*resource.Kind{nodeKind, leaseKind} {
			ns := map[*resource.Kind]string{leaseKind: wellknown.NodeLeaseNamespace}[kind]
			if _, err := cl.Get(t.Context(), kind, ns, "late-pool-0"); !apierrors.IsNotFound(err) {
				t.Errorf("%s late-pool-0 after Stop: %v, want NOT_FOUND", kind.Name, err)
			}
		}
		if slices.Contains(c.Processes(), late.Process()) || c.HollowPool("late-pool") != nil {
			t.Errorf("the stopped pool is still part of the cluster: %v", c.Processes())
		}
	})

	t.Run("leaders", func(t *testing.T) {
		ctx := t.Context()
		lease := wellknown.ControllerManagerLease
		frozen, err := c.WaitSettled(ctx, lease, leaseTimeout)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Pause(ctx, frozen.Holder); err != nil {
			t.Fatal(err)
		}
		next, err := c.WaitTakeover(ctx, lease, frozen, leaseTimeout)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Resume(frozen.Holder); err != nil {
			t.Fatal(err)
		}
		if settled, err := c.WaitSettled(ctx, lease, leaseTimeout); err != nil || settled != next {
			t.Fatalf("after the thaw the lease is %v (%v), want %v", settled, err, next)
		}
		if hz, err := c.Health(ctx, next.Holder); err != nil || !hz.Leading || hz.Identity != next.Holder {
			t.Errorf("the leader's /healthz: %+v %v", hz, err)
		}
		standbys, held, err := c.Standbys(ctx, lease)
		if err != nil || held != next || !slices.Contains(standbys, frozen.Holder) {
			t.Errorf("the cluster status lists %v as standbys of %v (%v), want %s among them under %v", standbys, held, err, frozen.Holder, next)
		}

		// A standby stopped by SIGTERM exits cleanly; Start brings it back.
		standby := slices.DeleteFunc(c.Candidates(lease), func(n string) bool { return n == next.Holder })[0]
		ws, err := c.Terminate(ctx, standby)
		if err != nil || !ws.Exited() || ws.ExitStatus() != 0 {
			t.Errorf("%s after SIGTERM: %v %v, want exit status 0", standby, ws, err)
		}
		if err := c.Start(ctx, standby); err != nil {
			t.Fatal(err)
		}

		sched, err := c.WaitSettled(ctx, wellknown.SchedulerLease, leaseTimeout)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Kill(ctx, sched.Holder); err != nil {
			t.Fatal(err)
		}
		if _, err := c.WaitTakeover(ctx, wellknown.SchedulerLease, sched, leaseTimeout); err != nil {
			t.Fatal(err)
		}
		if err := c.Restore(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := c.WaitSettled(ctx, wellknown.SchedulerLease, leaseTimeout); err != nil {
			t.Fatal(err)
		}
		if i, err := c.EtcdLeader(ctx); err != nil || i < 0 || i >= 3 {
			t.Errorf("EtcdLeader: %d %v", i, err)
		}
		if err := c.Restart(ctx, "node-agent-1"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("extra candidate", func(t *testing.T) {
		ctx := t.Context()
		lease := wellknown.SchedulerLease
		const extra = "scheduler-extra"
		err := c.StartCandidate(ctx, ExtraCandidate{Binary: localcluster.SchedulerBinary, Name: extra, Servers: c.APIAddresses()[2:]})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(c.Candidates(lease), extra) || !slices.Contains(c.Processes(), extra) {
			t.Fatalf("the extra candidate is not part of the cluster: candidates %v, processes %v", c.Candidates(lease), c.Processes())
		}
		for _, p := range c.lc.Topology().Processes {
			if p.Name == extra && !slices.Contains(p.Args, "--server="+c.APIAddresses()[2]) {
				t.Errorf("%s runs with %q, want its own --server", extra, p.Args)
			}
		}
		// It stands by like the others: its /healthz names the holding.
		if _, err := c.WaitSettled(ctx, lease, leaseTimeout); err != nil {
			t.Fatal(err)
		}
		if err := c.RemoveCandidate(ctx, extra); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(c.Candidates(lease), extra) || slices.Contains(c.Processes(), extra) {
			t.Errorf("the removed candidate is still part of the cluster: candidates %v, processes %v", c.Candidates(lease), c.Processes())
		}
		if err := c.RemoveCandidate(ctx, "scheduler-1"); err == nil {
			t.Error("RemoveCandidate removed a candidate of the layout")
		}
	})

	t.Run("API fault run", func(t *testing.T) {
		ctx := t.Context()
		leases := []string{wellknown.ControllerManagerLease, wellknown.SchedulerLease}
		var settled []Holding
		for _, lease := range leases {
			h, err := c.WaitSettled(ctx, lease, leaseTimeout)
			if err != nil {
				t.Fatal(err)
			}
			settled = append(settled, h)
		}
		log, err := c.RecordHoldings(ctx, leases...)
		if err != nil {
			t.Fatal(err)
		}
		var reported []APIFault
		faults, err := c.RunAPIFaults(ctx, APIFaultRun{Faults: 3, Hold: 100 * time.Millisecond, Holdings: log, Done: func(f APIFault) error {
			reported = append(reported, f)
			return c.WaitReady(ctx)
		}})
		if err != nil {
			t.Fatal(err)
		}
		if err := log.Sync(ctx, c); err != nil {
			t.Fatal(err)
		}
		if err := log.Stop(); err != nil {
			t.Fatal(err)
		}
		if len(faults) != 3 || len(reported) != 3 {
			t.Fatalf("faults %v, reported %v: want the same 3", faults, reported)
		}
		// Each kind of fault in turn; the first and the third on the etcd
		// leader, the second on another replica.
		for i, f := range faults {
			if f.N != i+1 || f.Fault != Faults[i] || f.EtcdLeader != (i != 1) || !slices.Contains(c.APIServers(), f.Replica) {
				t.Errorf("fault %d: %+v", i+1, f)
			}
		}
		moved := map[string]int{}
		for _, f := range faults {
			for lease, holdings := range f.Moved {
				moved[lease] += len(holdings) - 1
			}
		}
		for i, lease := range leases {
			// Whether the faults moved a lease is the e2e tests' subject;
			// the log starts with the holding of when it started, and the
			// faults account for every change it saw.
			if got := log.Holdings(lease); len(got) == 0 || got[0] != settled[i] || moved[lease] != log.Changes(lease) {
				t.Errorf("the log of %s is %v, want it to start with %v; the faults moved it %d times", lease, got, settled[i], moved[lease])
			}
		}
		t.Logf("holdings during the faults: %v", log)
	})

	t.Run("worker kill", func(t *testing.T) {
		ctx := t.Context()
		k, err := c.KillWorker(ctx, "node-agent-1")
		if err != nil {
			t.Fatal(err)
		}
		if len(k.Pods) != 1 || k.Groups != 1 || k.Pods[0].Alive() {
			t.Errorf("KillWorker killed %v in %d groups, want the one process of the pod on-the-worker", k.Pods, k.Groups)
		}
		if _, err := c.Pid("node-agent-1"); !errors.Is(err, localcluster.ErrNotRunning) {
			t.Errorf("node-agent-1 after KillWorker: %v", err)
		}
		if err := c.Restore(ctx); err != nil {
			t.Fatal(err)
		}
	})

	tails := c.LogTails(3)
	for _, name := range c.Processes() {
		if !strings.Contains(tails, name) {
			t.Errorf("LogTails has no section for %s", name)
		}
	}
}

// waitNodesReady waits until each node is registered, Ready and carries
// labels.
func waitNodesReady(t *testing.T, cl *client.Client, nodes []string, labels map[string]string) {
	t.Helper()
	poll.For(t, waitTimeout, fmt.Sprintf("nodes %v Ready", nodes), func(ctx context.Context) error {
		for _, name := range nodes {
			obj, err := cl.Get(ctx, nodeKind, "", name)
			if err != nil {
				return err
			}
			node := obj.(*capstanv1.Node)
			for k, v := range labels {
				if node.GetMetadata().GetLabels()[k] != v {
					return fmt.Errorf("node %s lacks the label %s=%s: %v", name, k, v, node.GetMetadata().GetLabels())
				}
			}
			if !slices.ContainsFunc(node.GetStatus().GetConditions(), func(c *capstanv1.Condition) bool {
				return c.GetType() == wellknown.NodeReady && c.GetStatus() == wellknown.ConditionTrue
			}) {
				return fmt.Errorf("node %s is not Ready", name)
			}
		}
		return nil
	})
}

// createPod creates a pod of /bin/sleep bound to node.
func createPod(t *testing.T, cl *client.Client, name, node string) string {
	t.Helper()
	grace := int64(1)
	_, err := cl.Create(t.Context(), &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: name},
		Spec: &capstanv1.PodSpec{
			Containers:                    []*capstanv1.Container{{Name: "main", Command: []string{"/bin/sleep", "3600"}}},
			NodeName:                      node,
			TerminationGracePeriodSeconds: &grace,
		},
	})
	if err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	return name
}

func runningAndReady(p *capstanv1.Pod) error {
	if p.GetStatus().GetPhase() != wellknown.PodRunning {
		return fmt.Errorf("phase %q", p.GetStatus().GetPhase())
	}
	for _, c := range p.GetStatus().GetConditions() {
		if c.GetType() == wellknown.PodReady && c.GetStatus() == wellknown.ConditionTrue {
			return nil
		}
	}
	return errors.New("not Ready")
}

// TestNodePortClaims: clusters side by side claim disjoint blocks of node
// ports, below local-up's 30000-32767, and a released block can be
// claimed again.
func TestNodePortClaims(t *testing.T) {
	a, err := claimNodePorts()
	if err != nil {
		t.Skipf("other test clusters hold every block: %v", err)
	}
	defer a.release()
	b, err := claimNodePorts()
	if err != nil {
		t.Skipf("other test clusters hold every block but one: %v", err)
	}
	for _, r := range []localcluster.PortRange{a.ports, b.ports} {
		if r.First < 20000 || r.Last > 29999 || r.Last-r.First+1 != nodePortBlockSize {
			t.Errorf("block %v, want %d ports in 20000-29999", r, nodePortBlockSize)
		}
	}
	if a.ports.Last >= b.ports.First && b.ports.Last >= a.ports.First {
		t.Fatalf("blocks %v and %v overlap", a.ports, b.ports)
	}
	b.release()
	c, err := claimNodePorts()
	if err != nil {
		t.Fatalf("claim after a release: %v", err)
	}
	defer c.release()
	if c.ports == a.ports {
		t.Errorf("claimed %v twice", a.ports)
	}
}
