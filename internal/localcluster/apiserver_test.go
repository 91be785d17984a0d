package localcluster

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// apiserverBinDir returns a directory holding the apiserver binary, or
// skips the test when it cannot be built.
func apiserverBinDir(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	dir, err := FindOrBuildBinaries(ctx, t.TempDir(), APIServerBinary)
	if err != nil {
		t.Skipf("SKIP: the apiserver binary cannot be built, so the real cluster is not tested: %v", err)
	}
	return dir
}

// TestStackedClusterOfRealAPIServers brings up three real API servers with
// embedded etcd members on free ports, crashes one, brings it back (it must
// rejoin with its data), and tears everything down.
func TestStackedClusterOfRealAPIServers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three real API servers")
	}
	binDir := apiserverBinDir(t)
	ports, err := FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{
		Topology:     Stacked(binDir, t.TempDir(), ports),
		Logger:       slog.New(slog.NewTextHandler(t.Output(), nil)),
		ReadyTimeout: 90 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		if err := c.Down(context.Background(), 15*time.Second); err != nil {
			t.Errorf("Down: %v", err)
		}
		for _, st := range c.Status() {
			if st.Running {
				t.Errorf("%s still running after Down", st.Name)
			}
		}
	})

	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"apiserver-1", "apiserver-2", "apiserver-3"} {
		if err := c.CheckReady(ctx, name); err != nil {
			t.Fatalf("%s after Up: %v", name, err)
		}
	}

	if err := c.Signal("apiserver-2", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitExited(ctx, "apiserver-2"); err != nil {
		t.Fatal(err)
	}
	if err := c.Up(ctx); err != nil {
		t.Fatalf("Up after a crash: %v", err)
	}
	pid, err := c.Pid("apiserver-2")
	if err != nil {
		t.Fatal(err)
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cmdline), "--etcd-initial-cluster-state=existing") {
		t.Fatalf("restarted member did not rejoin as existing: %q", cmdline)
	}
}
