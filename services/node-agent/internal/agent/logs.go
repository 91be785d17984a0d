package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/services/node-agent/internal/runtime"
)

// maxLogChunk is the most bytes of log one StreamContainerLogsResponse
// carries, well below gRPC's default 4 MiB message limit.
const maxLogChunk = 32 << 10

// LogSource is where the NodeAgentService reads logs: a runtime.Runtime,
// or in hollow mode something that finds the runtime of the node that runs
// a pod.
type LogSource interface {
	// PodStatus is nil for a pod the source does not run.
	PodStatus(uid string) *runtime.PodStatus
	Logs(ctx context.Context, uid, container string, opts runtime.LogOptions, w io.Writer) error
}

// runtimeLogs adapts a runtime.Runtime to LogSource.
type runtimeLogs struct{ rt runtime.Runtime }

func (r runtimeLogs) PodStatus(uid string) *runtime.PodStatus { return r.rt.PodStatus(uid) }

func (r runtimeLogs) Logs(ctx context.Context, uid, container string, opts runtime.LogOptions, w io.Writer) error {
	return r.rt.Logs(ctx, uid, container, opts, w)
}

// RuntimeLogs is the LogSource of one runtime.
func RuntimeLogs(rt runtime.Runtime) LogSource { return runtimeLogs{rt: rt} }

// nodeAgentServer implements capstanv1.NodeAgentServiceServer.
type nodeAgentServer struct {
	capstanv1.UnimplementedNodeAgentServiceServer
	node    string
	source  LogSource
	podHost string
}

// NewNodeAgentServer returns the NodeAgentService of node (named in
// messages), reading logs and pods' ports from source. PortForward
// connects to podHost (the node's address, where its pods listen); an
// empty podHost — a hollow node, whose pods run nothing — refuses it.
// Safe for concurrent use.
func NewNodeAgentServer(node string, source LogSource, podHost string) capstanv1.NodeAgentServiceServer {
	return &nodeAgentServer{node: node, source: source, podHost: podHost}
}

// StreamContainerLogs streams a container's log in chunks of at most
// maxLogChunk bytes. NOT_FOUND if the node does not run the pod.
func (s *nodeAgentServer) StreamContainerLogs(req *capstanv1.StreamContainerLogsRequest, stream capstanv1.NodeAgentService_StreamContainerLogsServer) error {
	switch {
	case req.GetPodUid() == "":
		return apierrors.Invalid("pod_uid", "required")
	case req.GetContainer() == "":
		return apierrors.Invalid("container", "required")
	case req.TailLines != nil && req.GetTailLines() < 0:
		return apierrors.Invalid("tail_lines", "must not be negative")
	}
	pod := req.GetNamespace() + "/" + req.GetName()
	if s.source.PodStatus(req.GetPodUid()) == nil {
		return status.Errorf(codes.NotFound, "pod %s (uid %s) does not run on node %s", pod, req.GetPodUid(), s.node)
	}
	opts := runtime.LogOptions{Follow: req.GetFollow(), TailLines: -1, Previous: req.GetPrevious()}
	if req.TailLines != nil {
		opts.TailLines = req.GetTailLines()
	}
	ctx := stream.Context()
	err := s.source.Logs(ctx, req.GetPodUid(), req.GetContainer(), opts, chunkWriter{stream})
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case apierrors.IsStatus(err):
		return err
	case errors.Is(err, fs.ErrNotExist):
		return status.Errorf(codes.NotFound, "log of container %s of pod %s on node %s: %v", req.GetContainer(), pod, s.node, err)
	}
	return status.Errorf(codes.Internal, "log of container %s of pod %s on node %s: %v", req.GetContainer(), pod, s.node, err)
}

// chunkWriter sends what is written to it as log chunks.
type chunkWriter struct {
	stream capstanv1.NodeAgentService_StreamContainerLogsServer
}

func (w chunkWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), maxLogChunk)
		// SendMsg serialises before returning, so p may be reused after.
		if err := w.stream.Send(&capstanv1.StreamContainerLogsResponse{Data: p[:n]}); err != nil {
			return written, fmt.Errorf("send log chunk: %w", err)
		}
		written += n
		p = p[n:]
	}
	return written, nil
}
