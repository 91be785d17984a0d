package api

import (
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
)

// streamLogs serves PodService/StreamPodLogs: the node agent's
// StreamContainerLogs, copied chunk by chunk.
func (p *nodeProxy) streamLogs(_ any, stream grpc.ServerStream) error {
	var req capstanv1.StreamPodLogsRequest
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	ctx := stream.Context()
	pod, agent, err := p.agentOf(ctx, req.GetNamespace(), req.GetName(), "logs")
	if err != nil {
		return err
	}
	container := req.GetContainer()
	if container == "" {
		if n := len(pod.GetSpec().GetContainers()); n != 1 {
			return apierrors.Invalid("container", fmt.Sprintf("the pod has %d containers: name one", n))
		}
		container = pod.GetSpec().GetContainers()[0].GetName()
	}
	logs, err := agent.StreamContainerLogs(ctx, &capstanv1.StreamContainerLogsRequest{
		PodUid: pod.GetMetadata().GetUid(), Namespace: pod.GetMetadata().GetNamespace(), Name: pod.GetMetadata().GetName(),
		Container: container, Follow: req.GetFollow(), TailLines: req.TailLines, Previous: req.GetPrevious(),
	})
	if err != nil {
		return err
	}
	for {
		chunk, err := logs.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.SendMsg(&capstanv1.StreamPodLogsResponse{Data: chunk.GetData()}); err != nil {
			return err
		}
	}
}
