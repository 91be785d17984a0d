package client

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/poll"
)

// namedReplica answers GetClusterStatus with its name, so a test sees which
// replica a call reached. The subject of the test is the client's balancing,
// so a stand-in server is enough here.
type namedReplica struct {
	capstanv1.UnimplementedClusterServiceServer
	name string
	// hangs makes every call wait for its deadline, like a frozen process
	// whose connections stay open.
	hangs bool
}

func (r *namedReplica) GetClusterStatus(ctx context.Context, _ *capstanv1.GetClusterStatusRequest) (*capstanv1.GetClusterStatusResponse, error) {
	if r.hangs {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &capstanv1.GetClusterStatusResponse{Self: &capstanv1.ApiServer{Name: r.name}}, nil
}

func startNamedReplica(t *testing.T, name string) (addr string, hs *health.Server) {
	return startReplica(t, &namedReplica{name: name})
}

func startReplica(t *testing.T, replica *namedReplica) (addr string, hs *health.Server) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	capstanv1.RegisterClusterServiceServer(srv, replica)
	hs = health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String(), hs
}

// TestNotServingReplicaGetsNoCalls checks that the health-checking balancer
// sends calls only to replicas reporting SERVING.
func TestNotServingReplicaGetsNoCalls(t *testing.T) {
	addrA, healthA := startNamedReplica(t, "a")
	addrB, healthB := startNamedReplica(t, "b")
	c := newClient(t, addrA, addrB)
	ctx := testContext(t)

	// onlyReaches waits until calls reach only replica want, then checks
	// that the next calls do too.
	onlyReaches := func(want string) {
		t.Helper()
		poll.For(t, 30*time.Second, "calls to reach only "+want, func(context.Context) error {
			for i := range 4 {
				resp, err := c.Cluster().GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
				if err != nil {
					t.Fatalf("GetClusterStatus: %v", err)
				}
				if got := resp.GetSelf().GetName(); got != want {
					return fmt.Errorf("call %d of 4 reached %s", i+1, got)
				}
			}
			return nil
		})
		for range 20 {
			resp, err := c.Cluster().GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
			if err != nil {
				t.Fatalf("GetClusterStatus: %v", err)
			}
			if got := resp.GetSelf().GetName(); got != want {
				t.Fatalf("a call reached %s, want only %s", got, want)
			}
		}
	}

	healthA.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	onlyReaches("b")
	healthA.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthB.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	onlyReaches("a")

	// With no replica serving, a call waits (within its deadline) instead
	// of failing at once, and goes through when one serves again.
	healthA.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	poll.For(t, 30*time.Second, "no replica to be serving", func(context.Context) error {
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		resp, err := c.Cluster().GetClusterStatus(short, &capstanv1.GetClusterStatusRequest{})
		if err == nil {
			return fmt.Errorf("a call within 100ms was answered by %s", resp.GetSelf().GetName())
		}
		return nil
	})
	result := make(chan error, 1)
	go func() {
		_, err := c.Cluster().GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
		result <- err
	}()
	healthB.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	if err := <-result; err != nil {
		t.Fatalf("call waiting for a serving replica: %v", err)
	}
}

// TestHangingReplicaCostsOneAttempt checks that a replica that takes calls
// but never answers does not fail them: each attempt there ends at the
// attempt timeout and the retry goes to the next replica.
func TestHangingReplicaCostsOneAttempt(t *testing.T) {
	addrA, _ := startReplica(t, &namedReplica{name: "a", hangs: true})
	addrB, _ := startNamedReplica(t, "b")
	c, err := New(Config{Endpoints: []string{addrA, addrB}, CallTimeout: 10 * time.Second, AttemptTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 10 {
		resp, err := c.Cluster().GetClusterStatus(context.Background(), &capstanv1.GetClusterStatusRequest{})
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if got := resp.GetSelf().GetName(); got != "b" {
			t.Fatalf("call %d answered by %s", i, got)
		}
	}
}
