package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// forwardChunk is the most bytes one PortForward message carries.
const forwardChunk = 32 << 10

type portForwardOptions struct {
	address string
}

// portMapping is one [LOCAL:]REMOTE argument; local 0 means any free port.
type portMapping struct {
	local  int
	remote int32
}

func newPortForwardCommand(g *globals) *cobra.Command {
	var o portForwardOptions
	cmd := &cobra.Command{
		Use:   "port-forward pod/NAME [LOCAL:]REMOTE [...]",
		Short: "Forward local ports to a pod's ports, through the API",
		Long: `Listen on local ports and carry every connection to a port the pod
declares (a containerPort), through any API replica and the node agent that
runs the pod, so only an API address is needed: it works when the pod's node
cannot be reached from here (a worker container's private address, say).
REMOTE alone listens on the same port number locally; :REMOTE on any free
port. Runs until interrupted.`,
		Example: `  capctl port-forward pod/echo-7xk2p 8080
  capctl port-forward echo-7xk2p 18080:8080
  capctl port-forward pod/echo-7xk2p :8080     # a free local port; printed`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd, g, args[0], args[1:]) },
	}
	cmd.Flags().StringVar(&o.address, "address", "127.0.0.1", "local address to listen on")
	return cmd
}

func parsePortMapping(s string) (portMapping, error) {
	local, remote, hasLocal := strings.Cut(s, ":")
	if !hasLocal {
		local, remote = s, s
	}
	r, err := strconv.Atoi(remote)
	if err != nil || r < 1 || r > 65535 {
		return portMapping{}, fmt.Errorf("%q: the remote port must be 1-65535", s)
	}
	l := 0
	if local != "" {
		if l, err = strconv.Atoi(local); err != nil || l < 0 || l > 65535 {
			return portMapping{}, fmt.Errorf("%q: the local port must be 0-65535", s)
		}
	}
	return portMapping{local: l, remote: int32(r)}, nil
}

func (o *portForwardOptions) run(cmd *cobra.Command, g *globals, target string, specs []string) error {
	name := target
	if kind, n, ok := strings.Cut(target, "/"); ok {
		k, err := lookupKind(cmd, kind)
		if err != nil {
			return err
		}
		if k != podKind {
			return usagef(cmd, "port-forward reaches pods only, not %s", k.Resource)
		}
		name = n
	}
	if name == "" {
		return usagef(cmd, "name the pod")
	}
	var mappings []portMapping
	for _, s := range specs {
		m, err := parsePortMapping(s)
		if err != nil {
			return usagef(cmd, "%v", err)
		}
		mappings = append(mappings, m)
	}
	c, err := g.dial(0)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := cmd.Context()
	namespace := g.namespaceFor(podKind)

	// Refuse at once what every connection would be refused for.
	getCtx, cancel := context.WithTimeout(ctx, g.timeout)
	obj, err := c.Get(getCtx, podKind, namespace, name)
	cancel()
	if err != nil {
		if apierrors.IsNotFound(err) {
			return objectError(podKind, name, err)
		}
		return err
	}
	pod := obj.(*capstanv1.Pod)
	if phase := pod.GetStatus().GetPhase(); phase != wellknown.PodRunning {
		return fmt.Errorf("pod %s is not running (phase %q)", name, phase)
	}
	for _, m := range mappings {
		if !podDeclaresPort(pod, m.remote) {
			return fmt.Errorf("pod %s declares no container port %d", name, m.remote)
		}
	}

	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	for _, m := range mappings {
		l, err := net.Listen("tcp", net.JoinHostPort(o.address, strconv.Itoa(m.local)))
		if err != nil {
			return err
		}
		listeners = append(listeners, l)
		fmt.Fprintf(g.streams.Out, "Forwarding from %s -> %d\n", l.Addr(), m.remote)
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	errs := make(chan error, len(listeners))
	for i, l := range listeners {
		f := forwarder{c: c, namespace: namespace, name: name, port: mappings[i].remote, errOut: g.streams.ErrOut}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- f.serve(ctx, l)
		}()
	}
	context.AfterFunc(ctx, func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	})
	select {
	case <-ctx.Done():
		return nil
	case err := <-errs:
		stop()
		if ctx.Err() != nil && cmd.Context().Err() != nil {
			return nil
		}
		return err
	}
}

func podDeclaresPort(pod *capstanv1.Pod, port int32) bool {
	for _, c := range pod.GetSpec().GetContainers() {
		for _, p := range c.GetPorts() {
			if p.GetContainerPort() == port {
				return true
			}
		}
	}
	return false
}

// forwarder carries the connections accepted on one local port to one port
// of the pod, each over its own PortForward stream.
type forwarder struct {
	c         *client.Client
	namespace string
	name      string
	port      int32
	errOut    io.Writer
}

// serve accepts until l is closed, and waits for the connections it
// carries to end.
func (f forwarder) serve(ctx context.Context, l net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f.carry(ctx, conn.(*net.TCPConn)); err != nil && ctx.Err() == nil {
				fmt.Fprintf(f.errOut, "error forwarding port %d to pod %s: %v\n", f.port, f.name, err)
			}
		}()
	}
}

// carry copies one connection both ways: the local side's end of input
// ends the stream's sending, and the pod's end of output closes the
// connection.
func (f forwarder) carry(ctx context.Context, conn *net.TCPConn) error {
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	stream, err := f.c.Pods().PortForward(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&capstanv1.PortForwardRequest{Namespace: f.namespace, Name: f.name, Port: f.port}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		buf := make([]byte, forwardChunk)
		for {
			n, err := conn.Read(buf)
			if n > 0 {
				if serr := stream.Send(&capstanv1.PortForwardRequest{Data: buf[:n]}); serr != nil {
					return // Recv reports why
				}
			}
			if errors.Is(err, io.EOF) {
				_ = stream.CloseSend()
				return
			}
			if err != nil {
				cancel()
				return
			}
		}
	}()
	err = f.receive(ctx, stream, conn)
	// Closing the connection ends the local reader too.
	cancel()
	_ = conn.Close()
	<-sent
	if interrupted(ctx, err) {
		return nil
	}
	return err
}

// receive writes what the pod sends to conn until the stream ends.
func (f forwarder) receive(ctx context.Context, stream capstanv1.PodService_PortForwardClient, conn *net.TCPConn) error {
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := conn.Write(resp.GetData()); err != nil {
			return nil // the local side went away
		}
	}
}
