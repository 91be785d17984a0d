package api

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/apiserver/internal/registry"
)

// logProxy serves PodService/StreamPodLogs by calling the node agent of the
// pod's node (Node.status.agent_endpoint) and copying its stream, so a
// client needs nothing but an API address. Connections to agents are kept
// per endpoint. It is safe for concurrent use.
type logProxy struct {
	reg   *registry.Registry
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newLogProxy(reg *registry.Registry) *logProxy {
	return &logProxy{reg: reg, conns: map[string]*grpc.ClientConn{}}
}

func (p *logProxy) handler(_ any, stream grpc.ServerStream) error {
	var req capstanv1.StreamPodLogsRequest
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	ctx := stream.Context()
	podKind := resource.MustLookup("Pod")
	obj, err := p.reg.Get(ctx, podKind, podKind.Namespace(req.GetNamespace()), req.GetName())
	if err != nil {
		return err
	}
	pod := obj.(*capstanv1.Pod)
	container := req.GetContainer()
	if container == "" {
		if n := len(pod.GetSpec().GetContainers()); n != 1 {
			return apierrors.Invalid("container", fmt.Sprintf("the pod has %d containers: name one", n))
		}
		container = pod.GetSpec().GetContainers()[0].GetName()
	}
	nodeName := pod.GetSpec().GetNodeName()
	if nodeName == "" {
		return apierrors.PreconditionFailed(fmt.Sprintf("pod %s is not bound to a node yet: it has no logs", req.GetName()))
	}
	nodeObj, err := p.reg.Get(ctx, resource.MustLookup("Node"), "", nodeName)
	if err != nil {
		return err
	}
	endpoint := nodeObj.(*capstanv1.Node).GetStatus().GetAgentEndpoint()
	if endpoint == "" {
		return status.Errorf(codes.Unavailable, "node %s publishes no agent endpoint", nodeName)
	}
	conn, err := p.conn(endpoint)
	if err != nil {
		return status.Errorf(codes.Unavailable, "node %s agent at %s: %v", nodeName, endpoint, err)
	}
	logs, err := capstanv1.NewNodeAgentServiceClient(conn).StreamContainerLogs(ctx, &capstanv1.StreamContainerLogsRequest{
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

func (p *logProxy) conn(endpoint string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[endpoint]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	p.conns[endpoint] = c
	return c, nil
}

// Close closes the connections to node agents.
func (p *logProxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for endpoint, c := range p.conns {
		_ = c.Close()
		delete(p.conns, endpoint)
	}
}
