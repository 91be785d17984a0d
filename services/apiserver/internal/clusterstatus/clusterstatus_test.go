package clusterstatus

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/etcdtest"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
)

func TestMain(m *testing.M) {
	// Multi-member etcd leaves in-process peer connections behind; see etcdtest.IgnoredGoroutines.
	goleak.VerifyTestMain(m, etcdtest.IgnoredGoroutines()...)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// startService starts a Service registering the named replica and stops it
// cleanly — Run ends, then Deregister — when the test ends or when the
// returned stop is called; kill ends Run alone, as a killed process stops.
func startService(t *testing.T, client *clientv3.Client, name string, ttl time.Duration) (svc *Service, stop, kill func()) {
	t.Helper()
	var err error
	svc, err = New(Options{
		Client:          client,
		Self:            &capstanv1.ApiServer{Name: name, Address: "127.0.0.1:1", StartTime: timestamppb.Now(), Version: "test"},
		Logger:          slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("replica", name),
		RegistrationTTL: ttl,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := svc.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	kill = func() {
		cancel()
		<-done
	}
	stop = func() {
		kill()
		svc.Deregister(context.Background())
	}
	t.Cleanup(stop)
	return svc, stop, kill
}

// waitTimeout bounds every wait for a registration to appear or change.
const waitTimeout = 20 * time.Second

func status(t *testing.T, svc *Service) *capstanv1.GetClusterStatusResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := svc.GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
	if err != nil {
		t.Fatalf("GetClusterStatus: %v", err)
	}
	return resp
}

// registered holds once svc lists exactly the replicas want
// (comma-separated, in order).
func registered(t *testing.T, svc *Service, want string) poll.Condition {
	return func(context.Context) error {
		if got := names(status(t, svc).GetApiServers()); got != want {
			return fmt.Errorf("replicas %q", got)
		}
		return nil
	}
}

func names(servers []*capstanv1.ApiServer) string {
	var n []string
	for _, s := range servers {
		n = append(n, s.GetName())
	}
	return strings.Join(n, ",")
}

func TestClusterStatus(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	client := cluster.Client(t)

	a, _, _ := startService(t, client, "a", 0)
	_, stopB, _ := startService(t, client, "b", 0)
	poll.For(t, waitTimeout, "both replicas are registered", registered(t, a, "a,b"))

	leaseKind := resource.MustLookup("lease")
	lease := &capstanv1.Lease{
		Metadata: &capstanv1.ObjectMeta{Name: "scheduler", Namespace: LeaseNamespace},
		Spec:     &capstanv1.LeaseSpec{HolderIdentity: "scheduler-2", LeaseDurationSeconds: 3},
		Status:   &capstanv1.LeaseStatus{Epoch: 42, RenewTime: timestamppb.New(time.Unix(1700000000, 0)), SessionReplica: "b"},
	}
	value, err := proto.Marshal(lease)
	if err != nil {
		t.Fatal(err)
	}
	put, err := client.Put(t.Context(), leaseKind.Key(LeaseNamespace, "scheduler"), string(value))
	if err != nil {
		t.Fatal(err)
	}
	epoch := put.Header.Revision // the epoch is the key's create revision, not the stored field
	// A lease in another namespace is not a component's.
	if _, err := client.Put(t.Context(), leaseKind.Key("default", "other"), string(value)); err != nil {
		t.Fatal(err)
	}

	resp := status(t, a)
	if resp.GetSelf().GetName() != "a" || resp.GetSelf().GetVersion() != "test" {
		t.Errorf("self = %v", resp.GetSelf())
	}
	if !resp.GetQuorum() {
		t.Error("quorum = false with every member up")
	}
	if resp.GetRevision() <= 0 {
		t.Errorf("revision = %d", resp.GetRevision())
	}
	if got := len(resp.GetEtcdMembers()); got != 3 {
		t.Fatalf("%d etcd members, want 3: %v", got, resp.GetEtcdMembers())
	}
	leaders := 0
	for i, m := range resp.GetEtcdMembers() {
		if want := cluster.Member(i).Name; m.GetName() != want {
			t.Errorf("member %d is %q, want %q", i, m.GetName(), want)
		}
		if !m.GetHealthy() || m.GetError() != "" {
			t.Errorf("member %s unhealthy: %q", m.GetName(), m.GetError())
		}
		if m.GetId() == "" || m.GetRaftTerm() == 0 || m.GetRaftIndex() == 0 || m.GetDbSize() == 0 || m.GetVersion() == "" {
			t.Errorf("member %s lacks status fields: %v", m.GetName(), m)
		}
		if len(m.GetClientUrls()) != 1 || m.GetClientUrls()[0] != cluster.Member(i).ClientURL {
			t.Errorf("member %s client URLs %v, want [%s]", m.GetName(), m.GetClientUrls(), cluster.Member(i).ClientURL)
		}
		if m.GetLeader() {
			leaders++
		}
	}
	if leaders != 1 {
		t.Errorf("%d leaders, want 1", leaders)
	}
	want := &capstanv1.ComponentLease{
		Name: "scheduler", Namespace: LeaseNamespace, HolderIdentity: "scheduler-2",
		Epoch: epoch, RenewTime: lease.Status.RenewTime, LeaseDurationSeconds: 3, SessionReplica: "b",
	}
	if len(resp.GetLeases()) != 1 || !proto.Equal(resp.GetLeases()[0], want) {
		t.Errorf("leases = %v, want [%v]", resp.GetLeases(), want)
	}

	// A replica that stops deregisters at once, without waiting for its TTL.
	stopB()
	if got := names(status(t, a).GetApiServers()); got != "a" {
		t.Errorf("after b stopped, replicas = %q, want \"a\"", got)
	}
}

// TestRunLeavesTheRegistration: Run alone ending, as when the process is
// killed, leaves the registration to expire with its lease; Deregister
// afterwards removes it at once.
func TestRunLeavesTheRegistration(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	client := cluster.Client(t)
	a, _, _ := startService(t, client, "a", 0)
	b, _, killB := startService(t, client, "b", 0)
	poll.For(t, waitTimeout, "both replicas are registered", registered(t, a, "a,b"))

	killB()
	if got := names(status(t, a).GetApiServers()); got != "a,b" {
		t.Errorf("after b's Run ended, replicas = %q, want \"a,b\" until its lease expires", got)
	}
	b.Deregister(t.Context())
	if got := names(status(t, a).GetApiServers()); got != "a" {
		t.Errorf("after b deregistered, replicas = %q, want \"a\"", got)
	}
}

func TestRegistersAgainAfterLosingItsLease(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	client := cluster.Client(t)
	startService(t, client, "a", time.Second)

	key := RegistrationKey("a")
	leaseOf := func() clientv3.LeaseID {
		resp, err := client.Get(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return 0
		}
		return clientv3.LeaseID(resp.Kvs[0].Lease)
	}
	poll.For(t, waitTimeout, "the replica is registered", poll.True(func() bool { return leaseOf() != 0 }))
	first := leaseOf()
	// As if etcd had expired the lease during a long quorum loss.
	if _, err := client.Revoke(t.Context(), first); err != nil {
		t.Fatal(err)
	}
	poll.For(t, waitTimeout, "the replica registers again under a new lease", poll.True(func() bool {
		l := leaseOf()
		return l != 0 && l != first
	}))
}

func TestAnswersWithoutQuorum(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	client := cluster.Client(t)
	svc, _, _ := startService(t, client, "a", 0)
	poll.For(t, waitTimeout, "the replica is registered", registered(t, svc, "a"))

	cluster.Stop(1)
	cluster.Stop(2)
	// A leader that lost its quorum steps down only after an election
	// timeout: wait until the member still up says so.
	var resp *capstanv1.GetClusterStatusResponse
	poll.For(t, waitTimeout, "the running member to notice it has no leader", func(ctx context.Context) error {
		var err error
		if resp, err = svc.GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{}); err != nil {
			return fmt.Errorf("GetClusterStatus without quorum: %w", err)
		}
		if up := resp.GetEtcdMembers(); len(up) == 0 || !strings.Contains(up[0].GetError(), "no leader") {
			return fmt.Errorf("members %v", up)
		}
		return nil
	})
	if resp.GetQuorum() {
		t.Error("quorum = true with two of three members stopped")
	}
	if got := len(resp.GetEtcdMembers()); got != 3 {
		t.Fatalf("%d etcd members, want 3: %v", got, resp.GetEtcdMembers())
	}
	for i, m := range resp.GetEtcdMembers() {
		if m.GetHealthy() || m.GetError() == "" || m.GetLeader() {
			t.Errorf("member %d (%s) without quorum: healthy=%v leader=%v error=%q", i, m.GetName(), m.GetHealthy(), m.GetLeader(), m.GetError())
		}
	}
	// The member still up answered its status: it reports its raft state.
	if up := resp.GetEtcdMembers()[0]; up.GetRaftTerm() == 0 || !strings.Contains(up.GetError(), "no leader") {
		t.Errorf("the running member: term %d, error %q; want its term and \"no leader\"", up.GetRaftTerm(), up.GetError())
	}
	// The stale view still lists the replica.
	if got := names(resp.GetApiServers()); got != "a" {
		t.Errorf("replicas without quorum = %q, want the stale view \"a\"", got)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no client", Options{Self: &capstanv1.ApiServer{Name: "a"}}, "clusterstatus: Options.Client is nil"},
		{"no name", Options{Client: &clientv3.Client{}, Self: &capstanv1.ApiServer{}}, "clusterstatus: Options.Self.Name is empty"},
		{"slash", Options{Client: &clientv3.Client{}, Self: &capstanv1.ApiServer{Name: "a/b"}}, `clusterstatus: Options.Self.Name "a/b" contains a slash`},
		{"short ttl", Options{Client: &clientv3.Client{}, Self: &capstanv1.ApiServer{Name: "a"}, RegistrationTTL: time.Millisecond}, "clusterstatus: Options.RegistrationTTL 1ms is below one second"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.opts)
			if err == nil || err.Error() != tt.want {
				t.Errorf("New: %v, want %q", err, tt.want)
			}
		})
	}
}
