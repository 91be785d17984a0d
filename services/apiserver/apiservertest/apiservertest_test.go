package apiservertest_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/etcdtest"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.IgnoredGoroutines()...) }

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// health asks once, with no waiting: what a client's first call would see.
func health(t *testing.T, conn *grpc.ClientConn) (healthpb.HealthCheckResponse_ServingStatus, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return resp.GetStatus(), err
}

// TestReplicasServeWhenStarted: Start and StartReplica return only once the
// replica is SERVING and registered, so a first call needs no wait; a
// stopped replica refuses calls and comes back on its old address.
func TestReplicasServeWhenStarted(t *testing.T) {
	cluster := apiservertest.Start(t, 2)
	addrs := cluster.Addrs()
	var conns []*grpc.ClientConn
	for i, addr := range addrs {
		conns = append(conns, dial(t, addr))
		if st, err := health(t, conns[i]); err != nil || st != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("replica %d right after Start: %v, %v; want SERVING", i, st, err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	st, err := capstanv1.NewClusterServiceClient(conns[0]).GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range st.GetApiServers() {
		names = append(names, a.GetName())
	}
	if got := strings.Join(names, ","); got != "apiserver-1,apiserver-2" || !st.GetQuorum() {
		t.Fatalf("registered %q, quorum %v; want apiserver-1,apiserver-2 with a quorum", got, st.GetQuorum())
	}

	cluster.StopReplica(1)
	if _, err := health(t, conns[1]); status.Code(err) != codes.Unavailable {
		t.Fatalf("a stopped replica answered: %v", err)
	}
	if _, err := capstanv1.NewConfigMapServiceClient(conns[0]).CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: &capstanv1.ConfigMap{
		Metadata: &capstanv1.ObjectMeta{Name: "while-stopped"},
	}}); err != nil {
		t.Fatalf("write through the other replica: %v", err)
	}
	cluster.StartReplica(1)
	if got := cluster.Addrs(); !slices.Equal(got, addrs) {
		t.Fatalf("addresses after a restart %v, want %v", got, addrs)
	}
	// A new connection: the old one is in its reconnect back-off.
	restarted := dial(t, addrs[1])
	if st, err := health(t, restarted); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("replica 1 right after StartReplica: %v, %v; want SERVING", st, err)
	}
	if _, err := capstanv1.NewConfigMapServiceClient(restarted).GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Name: "while-stopped"}); err != nil {
		t.Fatalf("read through the restarted replica: %v", err)
	}
}

// TestRunsTheBinarysLimits: the replicas enforce the binary's default
// request size limit (--max-request-bytes), as the binary does.
func TestRunsTheBinarysLimits(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	conn := dial(t, cluster.Addrs()[0])
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	_, err := capstanv1.NewConfigMapServiceClient(conn).CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: &capstanv1.ConfigMap{
		Metadata: &capstanv1.ObjectMeta{Name: "big"},
		Data:     map[string]string{"big": strings.Repeat("x", 1<<20)},
	}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a request above --max-request-bytes: %v, want RESOURCE_EXHAUSTED", err)
	}
}
