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
// scheduler leader are replaced by a standby at a greater epoch.
func TestControlPlaneOfRealProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nine real processes")
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
	t.Cleanup(func() {
		if err := c.Down(context.Background(), 15*time.Second); err != nil {
			t.Errorf("Down: %v", err)
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

	for _, tc := range []struct {
		lease  string
		signal syscall.Signal
	}{
		{wellknown.ControllerManagerLease, syscall.SIGKILL},
		{wellknown.SchedulerLease, syscall.SIGTERM},
	} {
		candidates := []string{tc.lease + "-1", tc.lease + "-2", tc.lease + "-3"}
		holder, epoch := waitForHolder(ctx, t, api, tc.lease, candidates, "", 0)
		if tc.signal == syscall.SIGKILL {
			if err := c.Signal(holder, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		} else if err := c.Stop(ctx, holder, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		newHolder, newEpoch := waitForHolder(ctx, t, api, tc.lease, candidates, holder, epoch)
		t.Logf("%s: %v to %s (epoch %d) took over from %s (epoch %d)", tc.lease, tc.signal, newHolder, newEpoch, holder, epoch)
		if err := c.WaitExited(ctx, holder); err != nil {
			t.Fatal(err)
		}
	}
}

// waitForHolder polls the lease until a candidate other than notHolder
// holds it at an epoch above minEpoch.
func waitForHolder(ctx context.Context, t *testing.T, api *client.Client, lease string, candidates []string, notHolder string, minEpoch int64) (string, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		resp, err := api.Leases().GetLease(ctx, &capstanv1.GetLeaseRequest{Namespace: wellknown.SystemNamespace, Name: lease})
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
