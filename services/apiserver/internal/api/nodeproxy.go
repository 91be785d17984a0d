package api

import (
	"context"
	"fmt"
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

// nodeProxy serves the calls that reach a pod through its node agent —
// PodService/StreamPodLogs and PodService/PortForward — by calling the
// node agent of the pod's node (Node.status.agent_endpoint), so a client
// needs nothing but an API address. Connections to agents are kept per
// endpoint. It is safe for concurrent use.
type nodeProxy struct {
	reg   *registry.Registry
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newNodeProxy(reg *registry.Registry) *nodeProxy {
	return &nodeProxy{reg: reg, conns: map[string]*grpc.ClientConn{}}
}

// agentOf reads the pod and returns it with a client of its node's agent.
// what names the call in messages ("logs", "ports").
func (p *nodeProxy) agentOf(ctx context.Context, namespace, name, what string) (*capstanv1.Pod, capstanv1.NodeAgentServiceClient, error) {
	if name == "" {
		return nil, nil, apierrors.Invalid("name", "required")
	}
	podKind := resource.MustLookup("Pod")
	obj, err := p.reg.Get(ctx, podKind, podKind.Namespace(namespace), name)
	if err != nil {
		return nil, nil, err
	}
	pod := obj.(*capstanv1.Pod)
	nodeName := pod.GetSpec().GetNodeName()
	if nodeName == "" {
		return nil, nil, apierrors.PreconditionFailed(fmt.Sprintf("pod %s is not bound to a node yet: it has no %s", name, what))
	}
	nodeObj, err := p.reg.Get(ctx, resource.MustLookup("Node"), "", nodeName)
	if err != nil {
		return nil, nil, err
	}
	endpoint := nodeObj.(*capstanv1.Node).GetStatus().GetAgentEndpoint()
	if endpoint == "" {
		return nil, nil, status.Errorf(codes.Unavailable, "node %s publishes no agent endpoint", nodeName)
	}
	conn, err := p.conn(endpoint)
	if err != nil {
		return nil, nil, status.Errorf(codes.Unavailable, "node %s agent at %s: %v", nodeName, endpoint, err)
	}
	return pod, capstanv1.NewNodeAgentServiceClient(conn), nil
}

func (p *nodeProxy) conn(endpoint string) (*grpc.ClientConn, error) {
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
func (p *nodeProxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for endpoint, c := range p.conns {
		_ = c.Close()
		delete(p.conns, endpoint)
	}
}
