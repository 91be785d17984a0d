package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
)

// maxForwardChunk is the most bytes one port-forward message carries.
const maxForwardChunk = 32 << 10

// ForwardContainerPort connects to the host port the pod's container_port was
// given on this node and copies bytes both ways until the pod closes the
// connection (the stream ends) or the caller closes its send side (the
// connection's write side is closed, and what the pod still sends is
// delivered). NOT_FOUND for a pod this node does not run,
// INVALID_ARGUMENT for a port the pod does not listen on, UNAVAILABLE if
// nothing answers on it.
func (s *nodeAgentServer) ForwardContainerPort(stream capstanv1.NodeAgentService_ForwardContainerPortServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	switch {
	case first.GetPodUid() == "":
		return apierrors.Invalid("pod_uid", "required")
	case first.GetPort() < 1 || first.GetPort() > 65535:
		return apierrors.Invalid("port", fmt.Sprintf("must be 1-65535, not %d", first.GetPort()))
	case s.podHost == "":
		return status.Errorf(codes.FailedPrecondition, "node %s is hollow: its pods run nothing to connect to", s.node)
	}
	pod := first.GetNamespace() + "/" + first.GetName()
	st := s.source.PodStatus(first.GetPodUid())
	if st == nil {
		return status.Errorf(codes.NotFound, "pod %s (uid %s) does not run on node %s", pod, first.GetPodUid(), s.node)
	}
	hostPort := int32(0)
	for _, c := range st.Containers {
		for _, p := range c.GetPorts() {
			if p.GetContainerPort() == first.GetPort() {
				hostPort = p.GetHostPort()
			}
		}
	}
	if hostPort == 0 {
		return apierrors.Invalid("port", fmt.Sprintf("pod %s listens on no container port %d on node %s", pod, first.GetPort(), s.node))
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	addr := net.JoinHostPort(s.podHost, strconv.Itoa(int(hostPort)))
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return status.Errorf(codes.Unavailable, "pod %s port %d (%s on node %s): %v", pod, first.GetPort(), addr, s.node, err)
	}
	tcp := conn.(*net.TCPConn)
	defer tcp.Close()
	// The connection closes when the call ends, which unblocks both copies.
	stop := context.AfterFunc(ctx, func() { _ = tcp.Close() })
	defer stop()

	upstream := make(chan error, 1)
	go func() {
		upstream <- copyToConn(tcp, first.GetData(), stream)
	}()
	buf := make([]byte, maxForwardChunk)
	for {
		n, err := tcp.Read(buf)
		if n > 0 {
			if err := stream.Send(&capstanv1.ForwardContainerPortResponse{Data: buf[:n]}); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			// A broken caller stream closes the connection: say that, not
			// the read error it caused.
			select {
			case uerr := <-upstream:
				if uerr != nil {
					return uerr
				}
			default:
			}
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err()
			}
			return status.Errorf(codes.Unavailable, "pod %s port %d: %v", pod, first.GetPort(), err)
		}
	}
}

// copyToConn writes data, then every message's data from the caller, to
// conn; the caller's end of sending closes conn's write side.
func copyToConn(conn *net.TCPConn, data []byte, stream capstanv1.NodeAgentService_ForwardContainerPortServer) error {
	for {
		if len(data) > 0 {
			if _, err := conn.Write(data); err != nil {
				return nil // the read side sees the broken connection
			}
		}
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			_ = conn.CloseWrite()
			return nil
		}
		if err != nil {
			_ = conn.Close()
			return err
		}
		data = req.GetData()
	}
}
