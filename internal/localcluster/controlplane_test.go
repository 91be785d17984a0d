package localcluster

import (
	"context"
	"log/slog"
	"slices"
	"syscall"
	"testing"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// TestControlPlaneOfRealProcesses brings up the full control plane of real
// binaries on free ports: each lease gets one holder among its three
// candidates; a SIGKILLed controller-manager leader and a SIGTERMed
// scheduler leader are replaced by a standby at a greater epoch. The three
// node agents register and hold their node leases; a pod is scheduled and
// runs as a process, which outlives Down until KillPods.
func TestControlPlaneOfRealProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts twelve real processes")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	binDir, err := FindOrBuildBinaries(ctx, t.TempDir(), ControlPlaneBinaries...)
	if err != nil {
		t.Skipf("SKIP: the binaries cannot be built, so the real control plane is not tested: %v", err)
	}
	ports, err := FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{
		Topology:     ControlPlane(binDir, t.TempDir(), ports),
		Logger:       slog.New(slog.NewTextHandler(t.Output(), nil)),
		ReadyTimeout: 90 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	podStarted := false
	t.Cleanup(func() {
		if err := c.Down(context.Background(), 15*time.Second); err != nil {
			t.Errorf("Down: %v", err)
		}
		killed, err := c.KillPods()
		if err != nil {
			t.Errorf("KillPods: %v", err)
		}
		if podStarted && killed == 0 {
			t.Errorf("KillPods killed nothing: the pod's process should have outlived its node agent")
		}
	})
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	api, err := client.New(client.Config{Endpoints: c.Topology().APIAddresses(), UserAgent: "localcluster-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()

	nodes := []string{"node-1", "node-2", "node-3"}
	for _, node := range nodes {
		waitForHolder(ctx, t, api, wellknown.NodeLeaseNamespace, node, []string{node}, "", 0)
	}
	if _, err := api.Create(ctx, &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Name: "sleeper", Namespace: "default"},
		Spec:     &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "main", Command: []string{"/bin/sleep", "3600"}}}},
	}); err != nil {
		t.Fatal(err)
	}
	podStarted = true
	waitForPodRunning(ctx, t, api, "sleeper", nodes)

	for _, tc := range []struct {
		lease  string
		signal syscall.Signal
	}{
		{wellknown.ControllerManagerLease, syscall.SIGKILL},
		{wellknown.SchedulerLease, syscall.SIGTERM},
	} {
		candidates := []string{tc.lease + "-1", tc.lease + "-2", tc.lease + "-3"}
		holder, epoch := waitForHolder(ctx, t, api, wellknown.SystemNamespace, tc.lease, candidates, "", 0)
		if tc.signal == syscall.SIGKILL {
			if err := c.Signal(holder, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		} else if err := c.Stop(ctx, holder, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		newHolder, newEpoch := waitForHolder(ctx, t, api, wellknown.SystemNamespace, tc.lease, candidates, holder, epoch)
		t.Logf("%s: %v to %s (epoch %d) took over from %s (epoch %d)", tc.lease, tc.signal, newHolder, newEpoch, holder, epoch)
		if err := c.WaitExited(ctx, holder); err != nil {
			t.Fatal(err)
		}
	}
}

// waitForPodRunning polls the pod until one of nodes runs it.
func waitForPodRunning(ctx context.Context, t *testing.T, api *client.Client, name string, nodes []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		resp, err := api.Pods().GetPod(ctx, &capstanv1.GetPodRequest{Name: name})
		pod := resp.GetPod()
		if err == nil && pod.GetStatus().GetPhase() == wellknown.PodRunning {
			if node := pod.GetSpec().GetNodeName(); !slices.Contains(nodes, node) {
				t.Fatalf("pod %s runs on %q, not one of %v", name, node, nodes)
			}
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pod %s never ran: last seen %v (error %v)", name, pod, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitForHolder polls the lease until a candidate other than notHolder
// holds it at an epoch above minEpoch.
func waitForHolder(ctx context.Context, t *testing.T, api *client.Client, namespace, lease string, candidates []string, notHolder string, minEpoch int64) (string, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		resp, err := api.Leases().GetLease(ctx, &capstanv1.GetLeaseRequest{Namespace: namespace, Name: lease})
		if err == nil {
			holder, epoch := resp.GetLease().GetSpec().GetHolderIdentity(), resp.GetLease().GetStatus().GetEpoch()
			if holder != notHolder && epoch > minEpoch {
				if !slices.Contains(candidates, holder) {
					t.Fatalf("lease %s held by %q, not one of %v", lease, holder, candidates)
				}
				return holder, epoch
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("lease %s: no holder other than %q above epoch %d: last error %v", lease, notHolder, minEpoch, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
