package agent

import (
	"context"
	"fmt"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// podRecord is what the agent keeps about one pod (by uid) besides the
// cache. Guarded by Agent.mu.
type podRecord struct {
	// pod is the last state seen from the API (or the checkpoint): what
	// runs while the cache has not synced, and the grace period of a pod
	// that the API no longer has.
	pod *capstanv1.Pod
	// checkpointed says which state of the pod is in the checkpoint.
	checkpointed checkpointState
	// kill is the KillPod in progress, if any.
	kill *killOp
	// killed: a KillPod returned nil, the pod's containers are gone.
	killed bool
	// sent is the last status written, and sentVersion the pod's
	// resource_version after that write.
	sent        *capstanv1.PodStatus
	sentVersion int64
}

// checkpointState is what makes a new checkpoint worth writing.
type checkpointState struct {
	generation  int64
	terminating bool
}

// killOp is one KillPod call in flight.
type killOp struct{ grace time.Duration }

// recordLocked returns the record of uid, created if need be. a.mu is held.
func (a *Agent) recordLocked(uid string) *podRecord {
	rec, ok := a.pods[uid]
	if !ok {
		rec = &podRecord{}
		a.pods[uid] = rec
	}
	return rec
}

// syncPod brings the pod with uid in line with what the API says of it:
//
//   - cached and not terminating: the runtime runs it (SyncPod);
//   - cached and terminating: the runtime stops it with the deletion's
//     grace period, then the agent removes it from the API;
//   - not cached, cache not synced (the API has been away since the agent
//     started): run it as last known, never stop it;
//   - not cached, cache synced: the API no longer has it: stop it.
func (a *Agent) syncPod(ctx context.Context, uid string) error {
	pod, cached := a.caches.pod(a.cfg.NodeName, uid)
	switch {
	case cached && pod.GetMetadata().GetDeleteTime() != nil:
		a.remember(pod)
		return a.terminate(ctx, pod)
	case cached:
		a.remember(pod)
		return a.run(ctx, pod)
	case !a.caches.PodsSynced():
		a.mu.Lock()
		var last *capstanv1.Pod
		if rec := a.pods[uid]; rec != nil {
			last = rec.pod
		}
		a.mu.Unlock()
		switch {
		case last == nil:
			return nil // adopted by the runtime, unknown here: wait for the API
		case last.GetMetadata().GetDeleteTime() != nil:
			a.startKill(ctx, uid, podRef(last), gracePeriod(last), "its deletion was requested before the agent restarted")
			return nil
		}
		return a.run(ctx, last)
	}
	return a.stopGone(ctx, uid)
}

// run makes the runtime run pod and queues a look at its status.
func (a *Agent) run(ctx context.Context, pod *capstanv1.Pod) error {
	uid := pod.GetMetadata().GetUid()
	a.mu.Lock()
	stopping := false
	if rec := a.pods[uid]; rec != nil {
		stopping = rec.kill != nil || rec.killed
	}
	a.mu.Unlock()
	if stopping {
		return nil
	}
	// A pod that finished is not started again by an agent (or a runtime)
	// that does not remember running it.
	if phase := pod.GetStatus().GetPhase(); (phase == wellknown.PodSucceeded || phase == wellknown.PodFailed) && a.rt.PodStatus(uid) == nil {
		return nil
	}
	err := a.rt.SyncPod(ctx, pod)
	a.statusLoop.Add(uid)
	if err != nil {
		return fmt.Errorf("sync pod %s: %w", podRef(pod), err)
	}
	return nil
}

// terminate stops a pod whose deletion was requested, then removes it from
// the API: the final step of a graceful deletion.
func (a *Agent) terminate(ctx context.Context, pod *capstanv1.Pod) error {
	meta := pod.GetMetadata()
	uid := meta.GetUid()
	a.mu.Lock()
	killed := a.recordLocked(uid).killed
	a.mu.Unlock()
	if !killed {
		a.startKill(ctx, uid, podRef(pod), gracePeriod(pod), "its deletion was requested")
		return nil
	}
	// Conditional on the version whose deletion the agent carried out: a
	// late or repeated remove can never take a newer state of the pod with
	// it, let alone a new pod of the same name.
	_, err := a.client.Delete(ctx, podKind, meta.GetNamespace(), meta.GetName(),
		&capstanv1.Preconditions{Uid: uid, ResourceVersion: meta.GetResourceVersion()}, client.GracePeriod(0))
	switch {
	case err == nil:
		a.log.Info("pod stopped and removed from the API", "pod", podRef(pod), "pod-uid", uid)
	case apierrors.IsNotFound(err):
		// Removed already.
	default:
		// ABORTED among them: the pod changed since the cache showed it
		// (a shorter grace period, say), or the name holds a new pod. The
		// pod is not forgotten: the sync is retried, and the informer's
		// event queues it too, so it is removed at its newer version, or
		// stopGone forgets it once the cache no longer holds it.
		return fmt.Errorf("remove pod %s at version %d: %w", podRef(pod), meta.GetResourceVersion(), err)
	}
	a.forget(uid)
	return nil
}

// stopGone stops a pod that the API no longer has (its cache has synced
// and does not hold it).
func (a *Agent) stopGone(ctx context.Context, uid string) error {
	a.mu.Lock()
	rec := a.pods[uid]
	var last *capstanv1.Pod
	killed := false
	if rec != nil {
		last, killed = rec.pod, rec.killed
	}
	a.mu.Unlock()
	if killed {
		a.forget(uid)
		return nil
	}
	if rec == nil && a.rt.PodStatus(uid) == nil {
		return nil // nothing runs, nothing to forget
	}
	grace, ref := DefaultGracePeriod, uid
	if last != nil {
		grace, ref = gracePeriod(last), podRef(last)
	}
	a.startKill(ctx, uid, ref, grace, "the API no longer has it")
	return nil
}

// startKill stops the pod's containers in the background, unless a stop
// with at most this grace period is under way already; when it is done the
// pod is synced again.
func (a *Agent) startKill(ctx context.Context, uid, ref string, grace time.Duration, why string) {
	a.mu.Lock()
	rec := a.recordLocked(uid)
	if rec.killed || (rec.kill != nil && rec.kill.grace <= grace) {
		a.mu.Unlock()
		return
	}
	op := &killOp{grace: grace}
	rec.kill = op
	a.mu.Unlock()
	a.log.Info("stopping pod", "pod", ref, "pod-uid", uid, "grace-period", grace, "why", why)
	a.kills.Go(func() {
		err := a.rt.KillPod(ctx, uid, grace)
		a.mu.Lock()
		if rec.kill == op {
			rec.kill = nil
			rec.killed = err == nil
		}
		a.mu.Unlock()
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("stopping pod failed; retrying", "pod", ref, "pod-uid", uid, "error", err)
				a.podLoop.AddRateLimited(uid)
			}
			return
		}
		a.log.Info("pod stopped", "pod", ref, "pod-uid", uid)
		a.enqueuePod(uid)
	})
}

// remember records the latest state of a cached pod, and checkpoints it
// when what matters after a restart changed.
func (a *Agent) remember(pod *capstanv1.Pod) {
	uid := pod.GetMetadata().GetUid()
	state := checkpointState{generation: pod.GetMetadata().GetGeneration(), terminating: pod.GetMetadata().GetDeleteTime() != nil}
	a.mu.Lock()
	rec := a.recordLocked(uid)
	rec.pod = pod
	write := a.store != nil && rec.checkpointed != state
	if write {
		rec.checkpointed = state
	}
	a.mu.Unlock()
	if write {
		if err := a.store.save(pod); err != nil {
			a.log.Warn("cannot checkpoint pod", "pod", podRef(pod), "pod-uid", uid, "error", err)
			a.mu.Lock()
			rec.checkpointed = checkpointState{}
			a.mu.Unlock()
		}
	}
}

// forget drops everything the agent keeps about a pod that is gone.
func (a *Agent) forget(uid string) {
	a.mu.Lock()
	delete(a.pods, uid)
	a.mu.Unlock()
	if a.store != nil {
		if err := a.store.remove(uid); err != nil {
			a.log.Warn("cannot remove the checkpoint of a pod", "pod-uid", uid, "error", err)
		}
	}
}

// loadCheckpoints remembers the pods of the checkpoint, for the time before
// the cache syncs.
func (a *Agent) loadCheckpoints() {
	pods, err := a.store.load()
	if err != nil {
		a.log.Warn("some pod checkpoints could not be read", "error", err)
	}
	a.mu.Lock()
	for _, pod := range pods {
		rec := a.recordLocked(pod.GetMetadata().GetUid())
		rec.pod = pod
		rec.checkpointed = checkpointState{generation: pod.GetMetadata().GetGeneration(), terminating: pod.GetMetadata().GetDeleteTime() != nil}
	}
	a.mu.Unlock()
	if len(pods) > 0 {
		a.log.Info("read the pods of the checkpoint", "pods", len(pods))
	}
}

// gracePeriod is how long a pod's containers get between SIGTERM and
// SIGKILL: the deletion's grace period, else the pod's, else the default.
func gracePeriod(pod *capstanv1.Pod) time.Duration {
	if pod.GetMetadata().GetDeleteTime() != nil {
		return time.Duration(pod.GetMetadata().GetDeleteGracePeriodSeconds()) * time.Second
	}
	if spec := pod.GetSpec(); spec != nil && spec.TerminationGracePeriodSeconds != nil {
		return time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	}
	return DefaultGracePeriod
}
