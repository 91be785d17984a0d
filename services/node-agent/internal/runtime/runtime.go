// Package runtime defines how the node agent runs pods (the Runtime
// interface) and implements it with local processes (NewProcessRuntime).
// The agent decides what should run; a Runtime makes it so and reports what
// it sees. The hollow runtime of scale tests is another implementation.
//
// The process runtime keeps two promises across agent deaths. A node port
// is never given twice: every declared container port gets one from the
// node port range, held in a node-wide set from the pod's acceptance to
// its removal and rebuilt from the checkpoints by the next agent (ports.go).
// And a container never runs without a checkpoint that names it: its
// process is created as a holding shim, checkpointed, and only then
// released to execve() the command (shim.go). The shim is package
// containershim's init taking over a program started with argv[0]
// "capstan-container-shim", so every program that links this package — the
// node agent, and the test binaries — can be one.
//
// Concurrency: a Runtime is safe for concurrent use (see Runtime and
// ProcessRuntime for how the process runtime's goroutines and locks are
// arranged).
package runtime

import (
	"context"
	"io"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// Runtime runs the containers of the pods bound to one node. Implementations
// are safe for concurrent use. Every method returns promptly: long work
// (starting, probing, restarting with back-off, stopping) happens in the
// runtime's own goroutines, which Close stops without touching the
// processes, so that a restarted agent can adopt them.
type Runtime interface {
	// SyncPod makes the runtime run pod as its spec says: containers that
	// are not running are started (subject to the restart policy and its
	// back-off), probes are run. Calling it again with the same pod changes
	// nothing; the agent calls it on every change and periodically.
	SyncPod(ctx context.Context, pod *capstanv1.Pod) error
	// KillPod stops every container of the pod with uid: SIGTERM to each
	// container's process group, then SIGKILL to the group after grace. It
	// returns when they are gone (or ctx ends) and forgets the pod.
	KillPod(ctx context.Context, uid string, grace time.Duration) error
	// PodStatus is what the runtime observes of a pod: nil if it does not
	// know the pod.
	PodStatus(uid string) *PodStatus
	// Pods lists the uids of every pod the runtime runs or has adopted.
	Pods() []string
	// Logs writes a container's log to w: the last tailLines lines (all if
	// negative), then, with follow, new output until ctx ends.
	Logs(ctx context.Context, uid, container string, opts LogOptions, w io.Writer) error
	// Changes delivers a pod uid whenever something about that pod changed
	// (a container started, exited, became ready...), so the agent reports
	// status promptly. Sends never block: a slow reader misses duplicates.
	Changes() <-chan string
	// Close stops the runtime's goroutines and leaves the processes running.
	Close() error
}

// LogOptions select what Logs writes.
type LogOptions struct {
	Follow    bool
	TailLines int64 // negative: the whole log
	Previous  bool  // the container's run before its last restart
}

// PodStatus is the runtime's view of one pod.
type PodStatus struct {
	// Containers, in the order of the pod's spec.
	Containers []*capstanv1.ContainerStatus
	// StartTime is when the runtime accepted the pod.
	StartTime time.Time
	// Message explains a failure to start (e.g. the command does not exist).
	Message string
	// Reason is a CamelCase reason for Message (e.g. "StartError").
	Reason string
}
