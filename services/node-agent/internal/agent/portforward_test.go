package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/poll"
)

// shoutEnv makes the test binary a pod: a TCP server on 127.0.0.1:$PORT
// that reads each connection to its end and answers it in upper case.
const shoutEnv = "CAPSTAN_TEST_SHOUT"

func serveShout() {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", os.Getenv("PORT")))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("listening on", ln.Addr())
	for {
		conn, err := ln.Accept()
		if err != nil {
			os.Exit(1)
		}
		go func() {
			defer conn.Close()
			in, _ := io.ReadAll(conn)
			_, _ = conn.Write(bytes.ToUpper(in))
		}()
	}
}

// A TCP connection reaches a pod's port through PodService/PortForward:
// the API server proxies it to the node agent, which connects to the host
// port the pod was given. The caller's end of sending reaches the pod as
// the end of its input; the pod's answer and its close come back.
func TestPortForwardThroughTheAPI(t *testing.T) {
	e := newEnv(t, 1)
	n := e.newProcessNode("proc-5")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.c.Create(e.ctx(), &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Name: "shouter", Namespace: "default"},
		Spec: &capstanv1.PodSpec{NodeName: n.name, TerminationGracePeriodSeconds: proto.Int64(1), Containers: []*capstanv1.Container{{
			Name: "c0", Command: []string{self},
			Env:   []*capstanv1.EnvVar{{Name: shoutEnv, Value: "1"}},
			Ports: []*capstanv1.ContainerPort{{Name: "shout", ContainerPort: 7000}},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.waitPodRunningReady("shouter")

	forward := func(first *capstanv1.PortForwardRequest, more ...string) (string, error) {
		ctx, cancel := context.WithCancel(e.ctx())
		defer cancel()
		stream, err := e.c.Pods().PortForward(ctx)
		if err != nil {
			return "", err
		}
		if err := stream.Send(first); err != nil && !errors.Is(err, io.EOF) {
			return "", err
		}
		for _, m := range more {
			if err := stream.Send(&capstanv1.PortForwardRequest{Data: []byte(m)}); err != nil && !errors.Is(err, io.EOF) {
				return "", err
			}
		}
		if err := stream.CloseSend(); err != nil {
			return "", err
		}
		var out strings.Builder
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return out.String(), nil
			}
			if err != nil {
				return out.String(), err
			}
			out.Write(resp.GetData())
		}
	}
	// The pod may be Ready a moment before it listens.
	poll.For(t, testDeadline, "an answer through the forward", func(context.Context) error {
		got, err := forward(&capstanv1.PortForwardRequest{Name: "shouter", Port: 7000, Data: []byte("hello ")}, "through ", "the api")
		if err != nil {
			return err
		}
		if got != "HELLO THROUGH THE API" {
			return fmt.Errorf("answer %q", got)
		}
		return nil
	})
	big := strings.Repeat("abcdefgh", 20000) // several messages each way
	if got, err := forward(&capstanv1.PortForwardRequest{Name: "shouter", Port: 7000}, big[:70000], big[70000:]); err != nil || got != strings.ToUpper(big) {
		t.Fatalf("160 kB through the forward: %d bytes back, %v", len(got), err)
	}

	for _, tc := range []struct {
		req  *capstanv1.PortForwardRequest
		code codes.Code
		want string
	}{
		{&capstanv1.PortForwardRequest{Name: "shouter", Port: 7001}, codes.InvalidArgument, "port"},
		{&capstanv1.PortForwardRequest{Name: "shouter", Port: 70000}, codes.InvalidArgument, "port"},
		{&capstanv1.PortForwardRequest{Port: 7000}, codes.InvalidArgument, "name"},
		{&capstanv1.PortForwardRequest{Name: "nobody", Port: 7000}, codes.NotFound, "nobody"},
	} {
		_, err := forward(tc.req)
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("forward %v: %v, want %v naming %q", tc.req, err, tc.code, tc.want)
		}
	}
}
