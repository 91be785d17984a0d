package cmd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
	"github.com/capstan-dev/capstan/services/capctl/internal/cmd"
)

// fakeAgent stands in for a node agent's NodeAgentService (the subject here
// is capctl): each container's log is "<container> line 1\n<container>
// line 2\n", the previous run's is "<container> before restart\n", and a
// followed log stays open after them until the caller leaves.
type fakeAgent struct {
	capstanv1.UnimplementedNodeAgentServiceServer
}

func (fakeAgent) StreamContainerLogs(req *capstanv1.StreamContainerLogsRequest, stream capstanv1.NodeAgentService_StreamContainerLogsServer) error {
	lines := []string{req.GetContainer() + " line 1\n", req.GetContainer() + " line 2\n"}
	if req.GetPrevious() {
		lines = []string{req.GetContainer() + " before restart\n"}
	}
	if req.TailLines != nil && int(req.GetTailLines()) < len(lines) {
		lines = lines[len(lines)-int(req.GetTailLines()):]
	}
	for _, l := range lines {
		if err := stream.Send(&capstanv1.StreamContainerLogsResponse{Data: []byte(l)}); err != nil {
			return err
		}
	}
	if req.GetFollow() {
		<-stream.Context().Done()
	}
	return nil
}

// PortForward answers each connection, once the caller has sent all of
// it, with what it sent in upper case, and ends the stream.
func (fakeAgent) ForwardContainerPort(stream capstanv1.NodeAgentService_ForwardContainerPortServer) error {
	var in []byte
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		in = append(in, req.GetData()...)
	}
	return stream.Send(&capstanv1.ForwardContainerPortResponse{Data: bytes.ToUpper(in)})
}

func startFakeAgent(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	capstanv1.RegisterNodeAgentServiceServer(srv, fakeAgent{})
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

// registerNode creates a Ready node whose agent is at endpoint.
func registerNode(t *testing.T, api *client.Client, name, endpoint string) {
	t.Helper()
	ctx := context.Background()
	if _, err := api.Create(ctx, &capstanv1.Node{Metadata: &capstanv1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.UpdateStatus(ctx, &capstanv1.Node{
		Metadata: &capstanv1.ObjectMeta{Name: name},
		Status:   &capstanv1.NodeStatus{AgentEndpoint: endpoint, Conditions: []*capstanv1.Condition{{Type: wellknown.NodeReady, Status: wellknown.ConditionTrue}}},
	}); err != nil {
		t.Fatal(err)
	}
}

func boundPod(name, node string, containers ...string) *capstanv1.Pod {
	spec := &capstanv1.PodSpec{NodeName: node}
	for _, c := range containers {
		spec.Containers = append(spec.Containers, &capstanv1.Container{Name: c, Command: []string{"/bin/sleep", "3600"}})
	}
	return &capstanv1.Pod{Metadata: &capstanv1.ObjectMeta{Name: name, Namespace: "default"}, Spec: spec}
}

func TestLogs(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := capctl{t: t, addrs: cluster.Addrs()}
	api := apiClient(t, cluster.Addrs())
	registerNode(t, api, "worker-1", startFakeAgent(t))
	create(t, api, boundPod("single", "worker-1", "main"))
	create(t, api, boundPod("pair", "worker-1", "app", "sidecar"))
	create(t, api, &capstanv1.Pod{Metadata: &capstanv1.ObjectMeta{Name: "pending", Namespace: "default"},
		Spec: &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "main", Command: []string{"/bin/true"}}}}})

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"one container", []string{"logs", "single"}, "main line 1\nmain line 2\n"},
		{"kind/name", []string{"logs", "pod/single"}, "main line 1\nmain line 2\n"},
		{"named container", []string{"logs", "pair", "-c", "sidecar"}, "sidecar line 1\nsidecar line 2\n"},
		{"tail", []string{"logs", "single", "--tail", "1"}, "main line 2\n"},
		{"previous", []string{"logs", "pair", "--container=app", "-p"}, "app before restart\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := capctl{t: t, addrs: c.addrs}
			if got := c.ok("", tc.args...); got != tc.want {
				t.Fatalf("capctl %s:\n%q\nwant\n%q", strings.Join(tc.args, " "), got, tc.want)
			}
		})
	}

	t.Run("errors", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		wantContains(t, "missing pod", c.fails("", "logs", "nope"), `Error from server (NotFound): pods "nope" not found`)
		wantContains(t, "two containers", c.fails("", "logs", "pair"), "the pod has 2 containers: name one")
		wantContains(t, "unbound", c.fails("", "logs", "pending"), "is not bound to a node yet")
		wantContains(t, "not a pod", c.fails("", "logs", "deploy/web"), "logs are kept for pods only")
		wantContains(t, "bad tail", c.fails("", "logs", "single", "--tail", "-3"), "--tail must be -1")
	})

	t.Run("follow until interrupted", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var out, errOut syncBuffer
		done := make(chan int, 1)
		go func() {
			done <- cmd.Execute(ctx, c.args([]string{"logs", "single", "-f"}), cmd.Streams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
		}()
		poll.For(t, testDeadline, "logs -f to print both lines", func(context.Context) error {
			select {
			case code := <-done:
				t.Fatalf("logs -f ended by itself (exit %d): %q %q", code, out.String(), errOut.String())
			default:
			}
			if got := out.String(); got != "main line 1\nmain line 2\n" {
				return fmt.Errorf("logs -f printed %q", got)
			}
			return nil
		})
		cancel()
		if code := <-done; code != 0 {
			t.Fatalf("interrupted logs -f: exit %d, stderr %q", code, errOut.String())
		}
	})
}

func TestDeleteGracePeriodAndForce(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := capctl{t: t, addrs: cluster.Addrs()}
	api := apiClient(t, cluster.Addrs())
	create(t, api, boundPod("graceful", "worker-1", "main"))
	create(t, api, boundPod("forced", "worker-1", "main"))
	podKind := resource.MustLookup("Pod")

	wantLines(t, "delete --grace-period", c.ok("", "delete", "pod", "graceful", "--grace-period=7"), `pod "graceful" deleted`)
	obj, err := api.Get(context.Background(), podKind, "default", "graceful")
	if err != nil {
		t.Fatalf("a bound pod deleted gracefully is gone at once: %v", err)
	}
	if m := obj.GetMetadata(); m.GetDeleteTime() == nil || m.GetDeleteGracePeriodSeconds() != 7 {
		t.Fatalf("metadata %v: want delete_time and a grace period of 7", m)
	}

	r := c.run("", "delete", "pod", "forced", "--force")
	if r.code != 0 {
		t.Fatalf("delete --force: exit %d: %s", r.code, r.stderr)
	}
	wantLines(t, "delete --force", r.stdout, `pod "forced" force deleted`)
	wantContains(t, "delete --force warning", r.stderr, "warning: Immediate deletion does not wait")
	if _, err := api.Get(context.Background(), podKind, "default", "forced"); err == nil {
		t.Fatal("a force-deleted pod is still there")
	}
	wantContains(t, "--force with a grace period", c.fails("", "delete", "pod", "graceful", "--force", "--grace-period=3"),
		"--force and --grace-period greater than 0 cannot be specified together")
	wantLines(t, "delete --grace-period=0", c.ok("", "delete", "pod", "graceful", "--grace-period=0"), `pod "graceful" force deleted`)
}
