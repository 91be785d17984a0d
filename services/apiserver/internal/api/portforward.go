package api

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
)

// portForward serves PodService/PortForward: it checks that the pod
// declares the port, opens the node agent's PortForward and copies
// messages both ways. The caller's end of sending is passed on as the
// agent's; the agent's end of the stream ends the call.
func (p *nodeProxy) portForward(_ any, stream grpc.ServerStream) error {
	var first capstanv1.PortForwardRequest
	if err := stream.RecvMsg(&first); err != nil {
		return err
	}
	if port := first.GetPort(); port < 1 || port > 65535 {
		return apierrors.Invalid("port", fmt.Sprintf("must be 1-65535, not %d", port))
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	pod, agent, err := p.agentOf(ctx, first.GetNamespace(), first.GetName(), "ports")
	if err != nil {
		return err
	}
	if !declaresPort(pod, first.GetPort()) {
		return apierrors.Invalid("port", fmt.Sprintf("pod %s declares no container port %d", first.GetName(), first.GetPort()))
	}
	fwd, err := agent.ForwardContainerPort(ctx)
	if err != nil {
		return err
	}
	if err := fwd.Send(&capstanv1.ForwardContainerPortRequest{
		PodUid: pod.GetMetadata().GetUid(), Namespace: pod.GetMetadata().GetNamespace(), Name: pod.GetMetadata().GetName(),
		Port: first.GetPort(), Data: first.GetData(),
	}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	go func() {
		for {
			var req capstanv1.PortForwardRequest
			err := stream.RecvMsg(&req)
			if errors.Is(err, io.EOF) {
				_ = fwd.CloseSend()
				return
			}
			if err != nil {
				cancel()
				return
			}
			// io.EOF here means the agent ended the stream: Recv below
			// reports how.
			if err := fwd.Send(&capstanv1.ForwardContainerPortRequest{Data: req.GetData()}); err != nil {
				return
			}
		}
	}()
	for {
		resp, err := fwd.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.SendMsg(&capstanv1.PortForwardResponse{Data: resp.GetData()}); err != nil {
			return err
		}
	}
}

// declaresPort reports whether one of pod's containers declares port.
func declaresPort(pod *capstanv1.Pod, port int32) bool {
	for _, c := range pod.GetSpec().GetContainers() {
		for _, p := range c.GetPorts() {
			if p.GetContainerPort() == port {
				return true
			}
		}
	}
	return false
}
