package hollow

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/utils/clock"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/services/node-agent/internal/runtime"
)

// RuntimeName is what hollow nodes report as node_info.runtime.
const RuntimeName = "hollow"

// changesBuffer lets a burst of pods be reported without a reader.
const changesBuffer = 256

// Runtime is a runtime.Runtime that runs nothing: a pod is Running with
// every container started and Ready the moment SyncPod first sees it, and
// gone the moment KillPod is called. Its logs are empty. It is safe for
// concurrent use and starts no goroutines.
type Runtime struct {
	clock   clock.PassiveClock
	changes chan string

	mu   sync.Mutex
	pods map[string]*runtime.PodStatus // by uid
}

var _ runtime.Runtime = (*Runtime)(nil)

// NewRuntime returns an empty hollow runtime whose start times come from
// clk (the real clock if nil).
func NewRuntime(clk clock.PassiveClock) *Runtime {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Runtime{clock: clk, changes: make(chan string, changesBuffer), pods: map[string]*runtime.PodStatus{}}
}

// SyncPod "starts" an unknown pod; a known one is left as it is.
func (r *Runtime) SyncPod(_ context.Context, pod *capstanv1.Pod) error {
	uid := pod.GetMetadata().GetUid()
	if uid == "" {
		return fmt.Errorf("hollow: pod %s/%s has no uid", pod.GetMetadata().GetNamespace(), pod.GetMetadata().GetName())
	}
	r.mu.Lock()
	if _, ok := r.pods[uid]; ok {
		r.mu.Unlock()
		return nil
	}
	now := r.clock.Now()
	status := &runtime.PodStatus{StartTime: now}
	for _, c := range pod.GetSpec().GetContainers() {
		status.Containers = append(status.Containers, &capstanv1.ContainerStatus{
			Name:    c.GetName(),
			Ready:   true,
			Started: true,
			State:   &capstanv1.ContainerState{Running: &capstanv1.ContainerStateRunning{StartedAt: timestamppb.New(now)}},
		})
	}
	r.pods[uid] = status
	r.mu.Unlock()
	r.notify(uid)
	return nil
}

// KillPod forgets the pod at once.
func (r *Runtime) KillPod(_ context.Context, uid string, _ time.Duration) error {
	r.mu.Lock()
	_, ok := r.pods[uid]
	delete(r.pods, uid)
	r.mu.Unlock()
	if ok {
		r.notify(uid)
	}
	return nil
}

// PodStatus returns a copy of what SyncPod made up, nil for an unknown pod.
func (r *Runtime) PodStatus(uid string) *runtime.PodStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	status, ok := r.pods[uid]
	if !ok {
		return nil
	}
	out := *status
	out.Containers = make([]*capstanv1.ContainerStatus, len(status.Containers))
	for i, c := range status.Containers {
		out.Containers[i] = proto.Clone(c).(*capstanv1.ContainerStatus)
	}
	return &out
}

// Pods lists the uids of the pods SyncPod started.
func (r *Runtime) Pods() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Collect(maps.Keys(r.pods))
}

// Logs writes nothing: a hollow container prints nothing. With Follow it
// waits for ctx to end.
func (r *Runtime) Logs(ctx context.Context, uid, container string, opts runtime.LogOptions, _ io.Writer) error {
	status := r.PodStatus(uid)
	if status == nil || !slices.ContainsFunc(status.Containers, func(c *capstanv1.ContainerStatus) bool { return c.GetName() == container }) {
		return fmt.Errorf("hollow: container %s of pod %s: %w", container, uid, fs.ErrNotExist)
	}
	if opts.Follow {
		<-ctx.Done()
	}
	return nil
}

// Changes delivers the uid of each pod started or killed.
func (r *Runtime) Changes() <-chan string { return r.changes }

// Close does nothing: a hollow runtime has no goroutines.
func (r *Runtime) Close() error { return nil }

func (r *Runtime) notify(uid string) {
	select {
	case r.changes <- uid:
	default: // the agent resyncs anyway
	}
}
