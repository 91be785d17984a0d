package cmd_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
	"github.com/capstan-dev/capstan/services/capctl/internal/cmd"
)

func TestPortForward(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := capctl{t: t, addrs: cluster.Addrs()}
	api := apiClient(t, cluster.Addrs())
	registerNode(t, api, "worker-1", startFakeAgent(t))
	web := boundPod("web", "worker-1", "main")
	web.Spec.Containers[0].Ports = []*capstanv1.ContainerPort{{ContainerPort: 8080}}
	create(t, api, web)
	create(t, api, boundPod("pending", "worker-1", "main"))
	if _, err := api.UpdateStatus(context.Background(), &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Name: "web", Namespace: "default"},
		Status:   &capstanv1.PodStatus{Phase: wellknown.PodRunning},
	}); err != nil {
		t.Fatal(err)
	}

	t.Run("errors", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		wantContains(t, "missing pod", c.fails("", "port-forward", "pod/nope", "8080"), `Error from server (NotFound): pods "nope" not found`)
		wantContains(t, "undeclared port", c.fails("", "port-forward", "web", "9090"), "pod web declares no container port 9090")
		wantContains(t, "not running", c.fails("", "port-forward", "pending", "8080"), "pod pending is not running")
		wantContains(t, "bad port", c.fails("", "port-forward", "web", "80800"), "the remote port must be 1-65535")
		wantContains(t, "not a pod", c.fails("", "port-forward", "deploy/web", "8080"), "port-forward reaches pods only")
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- cmd.Execute(ctx, c.args([]string{"port-forward", "pod/web", ":8080"}), cmd.Streams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	}()
	forwarding := regexp.MustCompile(`Forwarding from (127\.0\.0\.1:\d+) -> 8080`)
	var local string
	poll.For(t, testDeadline, "port-forward to listen", func(context.Context) error {
		select {
		case code := <-done:
			t.Fatalf("port-forward ended by itself (exit %d): %q %q", code, out.String(), errOut.String())
		default:
		}
		m := forwarding.FindStringSubmatch(out.String())
		if m == nil {
			return fmt.Errorf("port-forward printed %q", out.String())
		}
		local = m[1]
		return nil
	})
	// Each connection is a stream of its own.
	for _, msg := range []string{"first connection", "second connection"} {
		conn, err := net.Dial("tcp", local)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		_ = conn.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(conn)
		conn.Close()
		if err != nil || string(got) != strings.ToUpper(msg) {
			t.Fatalf("through the forward: %q, %v; want %q", got, err, strings.ToUpper(msg))
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("interrupted port-forward: exit %d, stderr %q", code, errOut.String())
	}
}
