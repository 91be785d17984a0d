package cmd_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/services/capctl/internal/cmd"
)

// clusterStatusServer stands in for the apiserver's ClusterService: the
// subject here is how capctl shows the answers and keeps refreshing through
// a failed one, not how they are computed (TestLeases reads the real
// service). Each answer has a new scheduler leader; the fourth call fails.
type clusterStatusServer struct {
	capstanv1.UnimplementedClusterServiceServer
	calls atomic.Int64
}

func (s *clusterStatusServer) GetClusterStatus(context.Context, *capstanv1.GetClusterStatusRequest) (*capstanv1.GetClusterStatusResponse, error) {
	n := s.calls.Add(1)
	if n == 4 {
		return nil, status.Error(codes.Internal, "the fourth answer fails")
	}
	self := &capstanv1.ApiServer{Name: "master-1", Address: "127.0.0.1:6441", Version: "test"}
	return &capstanv1.GetClusterStatusResponse{
		Self:        self,
		ApiServers:  []*capstanv1.ApiServer{self, {Name: "master-2", Address: "127.0.0.1:6442"}},
		EtcdMembers: []*capstanv1.EtcdMember{{Name: "m1", Id: "8e9e05c52164694d", Leader: true, RaftTerm: 2, Healthy: true}},
		Quorum:      true,
		Revision:    100 + n,
		Leases: []*capstanv1.ComponentLease{{Name: "scheduler", Namespace: "capstan-system",
			HolderIdentity: fmt.Sprintf("master-%d", n), Epoch: 1000 + n, LeaseDurationSeconds: 2}},
	}, nil
}

func startClusterStatusServer(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	capstanv1.RegisterClusterServiceServer(srv, &clusterStatusServer{})
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String()
}

func TestClusterStatus(t *testing.T) {
	c := capctl{t: t, addrs: []string{startClusterStatusServer(t)}}

	out := c.ok("", "cluster", "status")
	wantContains(t, "cluster status", out,
		"API SERVERS\nANSWERED   NAME       ADDRESS          AGE         VERSION   ETCD-MEMBER\n*          master-1   127.0.0.1:6441",
		"QUORUM: yes   REVISION: 101",
		"scheduler   master-1   1001")

	wantContains(t, "cluster status -o yaml", c.ok("", "cluster", "status", "-o", "yaml"), "quorum: true\n", "revision: 102\n")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var buf, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- cmd.Execute(ctx, c.args([]string{"cluster", "status", "-w"}), cmd.Streams{In: strings.NewReader(""), Out: &buf, ErrOut: &errOut})
	}()
	// Call 3 answers, 4 fails, 5 answers: the display goes on past the error.
	waitFor(t, &buf, "scheduler   master-5")
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("cluster status -w exited %d; stderr:\n%s", code, errOut.String())
		}
	case <-time.After(testDeadline):
		t.Fatal("cluster status -w did not stop after its context was cancelled")
	}
	out = buf.String()
	wantContains(t, "cluster status -w", out, "Every 1s: capctl cluster status", "scheduler   master-3",
		"Error from server (InternalError): the fourth answer fails")
	if strings.Contains(out, "\x1b[") {
		t.Errorf("cluster status -w cleared the screen of a buffer, not a terminal:\n%q", out)
	}
	if frames := strings.Count(out, "Every 1s"); frames < 3 {
		t.Errorf("%d frames, want at least 3:\n%s", frames, out)
	}
}
