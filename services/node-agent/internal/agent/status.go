package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/node-agent/internal/runtime"
)

// statusWriteTimeout bounds one UpdatePodStatus: while the API is away a
// write fails after it and is tried again later, composed afresh.
const statusWriteTimeout = 5 * time.Second

// Reasons of the pod conditions the agent sets.
const (
	reasonContainersNotReady = "ContainersNotReady"
	reasonPodCompleted       = "PodCompleted"
	reasonContainerCreating  = "ContainerCreating"
)

// writeStatus composes the status of the pod with uid from what the runtime
// sees now and writes it if it differs from the newest status the API has
// (the cache's, or the one this agent wrote last if the cache has not seen
// that write yet). Terminating pods and pods the runtime does not run are
// not reported.
//
// The write is conditional on the uid and resource_version of the version
// it was composed over, so that a write that arrives late (it sat in the
// socket of a frozen API replica) or composed from a cache that is behind
// can never overwrite a newer status: the API refuses it with ABORTED. That
// is returned as it is, and the status loop tries again with back-off; the
// informer's event of the newer pod queues the pod too. Either way the next
// try composes afresh over the newer pod, so a refused status is written
// once the cache has caught up.
func (a *Agent) writeStatus(ctx context.Context, uid string) error {
	pod, ok := a.caches.pod(a.cfg.NodeName, uid)
	if !ok || pod.GetMetadata().GetDeleteTime() != nil {
		return nil
	}
	observed := a.rt.PodStatus(uid)
	if observed == nil {
		return nil
	}
	base, version := pod.GetStatus(), pod.GetMetadata().GetResourceVersion()
	a.mu.Lock()
	if rec := a.pods[uid]; rec != nil && rec.sent != nil && rec.sentVersion > version {
		// The cache has not seen this agent's last write yet. That write
		// was conditional on the version it was composed over, so the pod
		// at sentVersion is the cached one with the status sent: compose
		// over it, at its version.
		base, version = rec.sent, rec.sentVersion
	}
	a.mu.Unlock()
	status := ComposePodStatus(pod, observed, base, a.cfg.Address, a.clock.Now())
	if PodStatusEqual(base, status) {
		return nil
	}
	callCtx, cancel := context.WithTimeout(ctx, statusWriteTimeout)
	defer cancel()
	meta := pod.GetMetadata()
	resp, err := a.client.Pods().UpdatePodStatus(callCtx, &capstanv1.UpdatePodStatusRequest{Pod: &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Namespace: meta.GetNamespace(), Name: meta.GetName(), Uid: uid, ResourceVersion: version},
		Status:   status,
	}})
	switch {
	case apierrors.IsNotFound(err):
		return nil // gone: the cache's delete event stops it
	case err != nil:
		// ABORTED among them: the pod changed since version, or the name
		// holds a new pod. Not forgotten: retried (quietly, see
		// reconcile) until the cache shows the newer pod, or no longer
		// shows this one.
		return fmt.Errorf("update status of pod %s at version %d: %w", podRef(pod), version, err)
	}
	a.mu.Lock()
	if rec := a.pods[uid]; rec != nil {
		rec.sent, rec.sentVersion = status, resp.GetPod().GetMetadata().GetResourceVersion()
	}
	a.mu.Unlock()
	a.log.Debug("pod status written", "pod", podRef(pod), "pod-uid", uid, "phase", status.GetPhase())
	return nil
}

// ComposePodStatus is the status of pod as its node reports it, from what
// the runtime observes. previous is the status the API has: the transition
// times of unchanged conditions and the start time are kept from it.
// hostIP is the node's address, which is also the pod's (pods share the
// node's network).
//
// The phase follows Kubernetes' rules: Pending while a container waits to
// start for the first time; Running while every container has started and
// one runs (or, with restart policy Always or OnFailure after a failure,
// all are down but will be restarted); Succeeded when all have exited 0 and
// will not run again; Failed when all have exited, one of them in error,
// and restart policy Never keeps them down.
func ComposePodStatus(pod *capstanv1.Pod, observed *runtime.PodStatus, previous *capstanv1.PodStatus, hostIP string, now time.Time) *capstanv1.PodStatus {
	containers := make([]*capstanv1.ContainerStatus, 0, len(pod.GetSpec().GetContainers()))
	for _, c := range pod.GetSpec().GetContainers() {
		i := slices.IndexFunc(observed.Containers, func(s *capstanv1.ContainerStatus) bool { return s.GetName() == c.GetName() })
		if i < 0 {
			containers = append(containers, &capstanv1.ContainerStatus{
				Name:  c.GetName(),
				State: &capstanv1.ContainerState{Waiting: &capstanv1.ContainerStateWaiting{Reason: reasonContainerCreating}},
			})
			continue
		}
		containers = append(containers, proto.Clone(observed.Containers[i]).(*capstanv1.ContainerStatus))
	}
	phase := podPhase(pod.GetSpec().GetRestartPolicy(), containers)

	stamp := timestamppb.New(now)
	var unready []string
	for _, c := range containers {
		if !c.GetReady() {
			unready = append(unready, c.GetName())
		}
	}
	containersReady := &capstanv1.Condition{Type: wellknown.ContainersReady, Status: wellknown.ConditionTrue}
	if len(unready) > 0 {
		containersReady.Status = wellknown.ConditionFalse
		containersReady.Reason = reasonContainersNotReady
		containersReady.Message = fmt.Sprintf("containers with unready status: [%s]", strings.Join(unready, " "))
	}
	ready := proto.Clone(containersReady).(*capstanv1.Condition)
	ready.Type = wellknown.PodReady
	if phase == wellknown.PodSucceeded || phase == wellknown.PodFailed {
		for _, c := range []*capstanv1.Condition{containersReady, ready} {
			c.Status, c.Reason, c.Message = wellknown.ConditionFalse, reasonPodCompleted, ""
		}
	}
	conditions := []*capstanv1.Condition{
		{Type: wellknown.PodScheduled, Status: wellknown.ConditionTrue},
		containersReady,
		ready,
	}
	for _, c := range conditions {
		c.LastTransitionTime = stamp
		c.ObservedGeneration = pod.GetMetadata().GetGeneration()
		for _, old := range previous.GetConditions() {
			if old.GetType() == c.GetType() && old.GetStatus() == c.GetStatus() && old.GetLastTransitionTime() != nil {
				c.LastTransitionTime = old.GetLastTransitionTime()
				if c.Reason == "" {
					c.Reason = old.GetReason() // e.g. the scheduler's "Scheduled"
				}
			}
		}
	}

	startTime := previous.GetStartTime()
	if startTime == nil && !observed.StartTime.IsZero() {
		startTime = timestamppb.New(observed.StartTime)
	}
	if startTime == nil {
		startTime = stamp
	}
	return &capstanv1.PodStatus{
		Phase:              phase,
		Conditions:         conditions,
		Message:            observed.Message,
		Reason:             observed.Reason,
		HostIp:             hostIP,
		PodIp:              hostIP,
		StartTime:          startTime,
		ContainerStatuses:  containers,
		ObservedGeneration: pod.GetMetadata().GetGeneration(),
	}
}

// podPhase applies Kubernetes' phase rules (kubelet's getPhase) to the
// containers' statuses.
func podPhase(restartPolicy string, containers []*capstanv1.ContainerStatus) string {
	var waiting, running, stopped, succeeded int
	for _, c := range containers {
		switch state := c.GetState(); {
		case state.GetRunning() != nil:
			running++
		case state.GetTerminated() != nil:
			stopped++
			if state.GetTerminated().GetExitCode() == 0 {
				succeeded++
			}
		case c.GetLastState().GetTerminated() != nil:
			// Waiting to be restarted: it has run.
			stopped++
		default:
			waiting++
		}
	}
	switch {
	case len(containers) == 0 || waiting > 0:
		return wellknown.PodPending
	case running > 0:
		return wellknown.PodRunning
	case restartPolicy == "" || restartPolicy == wellknown.RestartAlways:
		return wellknown.PodRunning // every container will be restarted
	case stopped == succeeded:
		return wellknown.PodSucceeded
	case restartPolicy == wellknown.RestartNever:
		return wellknown.PodFailed
	default:
		return wellknown.PodRunning // OnFailure: the failed ones will be restarted
	}
}

// PodStatusEqual compares two pod statuses, condition times aside: what
// makes a status worth writing.
func PodStatusEqual(a, b *capstanv1.PodStatus) bool {
	if a == nil || b == nil {
		return a == b
	}
	return proto.Equal(withoutConditionTimes(a), withoutConditionTimes(b))
}
