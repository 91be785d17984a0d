package deployment

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Condition reasons, Kubernetes' names.
const (
	// Progressing.
	reasonNewReplicaSetCreated     = "NewReplicaSetCreated"
	reasonFoundNewReplicaSet       = "FoundNewReplicaSet"
	reasonReplicaSetUpdated        = "ReplicaSetUpdated"
	reasonNewReplicaSetAvailable   = "NewReplicaSetAvailable"
	reasonProgressDeadlineExceeded = "ProgressDeadlineExceeded"
	reasonReplicaSetCreateError    = "ReplicaSetCreateError"
	reasonDeploymentPaused         = "DeploymentPaused"
	reasonDeploymentResumed        = "DeploymentResumed"
	// Available.
	reasonMinimumReplicasAvailable   = "MinimumReplicasAvailable"
	reasonMinimumReplicasUnavailable = "MinimumReplicasUnavailable"
)

func findCondition(conds []*capstanv1.Condition, conditionType string) *capstanv1.Condition {
	for _, c := range conds {
		if c.GetType() == conditionType {
			return c
		}
	}
	return nil
}

func progressingCondition(status, reason, message string) *capstanv1.Condition {
	return &capstanv1.Condition{Type: wellknown.DeploymentProgressing, Status: status, Reason: reason, Message: message}
}

// setStatusCondition puts cond into st, stamped now: unchanged if a
// condition of its type already has its status and reason; the transition
// time is kept if only the reason changes.
func setStatusCondition(st *capstanv1.DeploymentStatus, cond *capstanv1.Condition, generation int64, now time.Time) {
	current := findCondition(st.GetConditions(), cond.GetType())
	if current != nil && current.GetStatus() == cond.GetStatus() && current.GetReason() == cond.GetReason() {
		return
	}
	next := proto.Clone(cond).(*capstanv1.Condition)
	next.LastHeartbeatTime = timestamppb.New(now)
	next.LastTransitionTime = next.LastHeartbeatTime
	next.ObservedGeneration = generation
	if current != nil && current.GetStatus() == cond.GetStatus() {
		next.LastTransitionTime = current.GetLastTransitionTime()
	}
	replaceCondition(st, next)
}

// replaceCondition puts cond in place of the condition of its type, or
// appends it.
func replaceCondition(st *capstanv1.DeploymentStatus, cond *capstanv1.Condition) {
	for i, c := range st.GetConditions() {
		if c.GetType() == cond.GetType() {
			st.Conditions[i] = cond
			return
		}
	}
	st.Conditions = append(st.Conditions, cond)
}

func removeCondition(st *capstanv1.DeploymentStatus, conditionType string) {
	st.Conditions = slices.DeleteFunc(st.Conditions, func(c *capstanv1.Condition) bool { return c.GetType() == conditionType })
}

// setCondition sets cond on d's status (in memory).
func (c *Controller) setCondition(d *capstanv1.Deployment, cond *capstanv1.Condition) {
	if d.Status == nil {
		d.Status = &capstanv1.DeploymentStatus{}
	}
	setStatusCondition(d.Status, cond, d.GetMetadata().GetGeneration(), c.clock.Now())
}

// writeStatus stores d's status at d's resource_version and takes the new
// resource_version into d.
func (c *Controller) writeStatus(ctx context.Context, key string, d *capstanv1.Deployment) error {
	resp, err := c.client.Deployments().UpdateDeploymentStatus(ctx, &capstanv1.UpdateDeploymentStatusRequest{Deployment: d})
	if err != nil {
		return fmt.Errorf("update deployment status: %w", err)
	}
	stored := resp.GetDeployment()
	c.expect.wrote(key, stored)
	d.Metadata.ResourceVersion = stored.GetMetadata().GetResourceVersion()
	return nil
}

// calculateStatus is d's status from its ReplicaSets, conditions but
// Progressing brought up to date.
func (c *Controller) calculateStatus(d *capstanv1.Deployment, all []*capstanv1.ReplicaSet, newRS *capstanv1.ReplicaSet) *capstanv1.DeploymentStatus {
	available := sumStatus(all, statusAvailable)
	// Counted against spec.replicas, as Kubernetes does: pods that should
	// exist and do not serve yet.
	unavailable := max(sumSpecReplicas(all)-available, 0)
	st := &capstanv1.DeploymentStatus{
		ObservedGeneration:  d.GetMetadata().GetGeneration(),
		Replicas:            sumStatus(all, statusReplicas),
		UpdatedReplicas:     sumStatus([]*capstanv1.ReplicaSet{newRS}, statusReplicas),
		ReadyReplicas:       sumStatus(all, statusReady),
		AvailableReplicas:   available,
		UnavailableReplicas: unavailable,
	}
	for _, cond := range d.GetStatus().GetConditions() {
		st.Conditions = append(st.Conditions, proto.Clone(cond).(*capstanv1.Condition))
	}
	now, generation := c.clock.Now(), d.GetMetadata().GetGeneration()
	if available >= desiredReplicas(d)-maxUnavailable(d) {
		setStatusCondition(st, &capstanv1.Condition{Type: wellknown.DeploymentAvailable, Status: wellknown.ConditionTrue,
			Reason: reasonMinimumReplicasAvailable, Message: "Deployment has minimum availability."}, generation, now)
	} else {
		setStatusCondition(st, &capstanv1.Condition{Type: wellknown.DeploymentAvailable, Status: wellknown.ConditionFalse,
			Reason: reasonMinimumReplicasUnavailable, Message: "Deployment does not have minimum availability."}, generation, now)
	}
	return st
}

// deploymentComplete: every pod is of the current template and available,
// and the status describes the current spec.
func deploymentComplete(d *capstanv1.Deployment, st *capstanv1.DeploymentStatus) bool {
	replicas := desiredReplicas(d)
	return st.GetUpdatedReplicas() == replicas && st.GetReplicas() == replicas &&
		st.GetAvailableReplicas() == replicas && st.GetObservedGeneration() >= d.GetMetadata().GetGeneration()
}

// madeProgress: more pods of the new template, more ready or available
// pods, or fewer old pods than before.
func madeProgress(old, cur *capstanv1.DeploymentStatus) bool {
	return cur.GetUpdatedReplicas() > old.GetUpdatedReplicas() ||
		cur.GetReadyReplicas() > old.GetReadyReplicas() ||
		old.GetReplicas()-old.GetUpdatedReplicas() > cur.GetReplicas()-cur.GetUpdatedReplicas() ||
		cur.GetAvailableReplicas() > old.GetAvailableReplicas()
}

// timedOut: no progress recorded for progress_deadline_seconds.
func (c *Controller) timedOut(d *capstanv1.Deployment, st *capstanv1.DeploymentStatus) bool {
	cond := findCondition(st.GetConditions(), wellknown.DeploymentProgressing)
	switch {
	case cond == nil || cond.GetReason() == reasonNewReplicaSetAvailable:
		return false
	case cond.GetReason() == reasonProgressDeadlineExceeded:
		return true
	}
	deadline := cond.GetLastHeartbeatTime().AsTime().Add(time.Duration(progressDeadlineSeconds(d)) * time.Second)
	return c.clock.Now().After(deadline)
}

// syncRolloutStatus writes d's status during a rollout: counts, Available,
// Progressing (progress, completion, deadline) and ReplicaFailure.
func (c *Controller) syncRolloutStatus(ctx context.Context, key string, d *capstanv1.Deployment, all []*capstanv1.ReplicaSet, newRS *capstanv1.ReplicaSet) error {
	st := c.calculateStatus(d, all, newRS)
	now, generation := c.clock.Now(), d.GetMetadata().GetGeneration()
	current := findCondition(d.GetStatus().GetConditions(), wellknown.DeploymentProgressing)
	// A finished rollout being resynced has no progress to estimate.
	finished := st.GetReplicas() == st.GetUpdatedReplicas() && current != nil && current.GetReason() == reasonNewReplicaSetAvailable
	newName := ""
	if newRS != nil {
		newName = newRS.GetMetadata().GetName()
	}
	if !finished {
		switch {
		case deploymentComplete(d, st):
			setStatusCondition(st, progressingCondition(wellknown.ConditionTrue, reasonNewReplicaSetAvailable,
				fmt.Sprintf("ReplicaSet %q has successfully progressed.", newName)), generation, now)
		case madeProgress(d.GetStatus(), st):
			// Progress moves the heartbeat even when the reason stays the
			// same: the deadline counts from the last progress.
			cond := progressingCondition(wellknown.ConditionTrue, reasonReplicaSetUpdated,
				fmt.Sprintf("ReplicaSet %q is progressing.", newName))
			cond.LastHeartbeatTime = timestamppb.New(now)
			cond.LastTransitionTime = cond.LastHeartbeatTime
			cond.ObservedGeneration = generation
			if current != nil && current.GetStatus() == wellknown.ConditionTrue {
				cond.LastTransitionTime = current.GetLastTransitionTime()
			}
			replaceCondition(st, cond)
		case c.timedOut(d, st):
			if current.GetReason() != reasonProgressDeadlineExceeded {
				c.recorder.Eventf(ctx, d, wellknown.EventWarning, reasonProgressDeadlineExceeded,
					"ReplicaSet %q has timed out progressing.", newName)
			}
			setStatusCondition(st, progressingCondition(wellknown.ConditionFalse, reasonProgressDeadlineExceeded,
				fmt.Sprintf("ReplicaSet %q has timed out progressing.", newName)), generation, now)
		}
	}
	if failure := replicaFailure(all, newRS); failure != nil {
		setStatusCondition(st, failure, generation, now)
	} else {
		removeCondition(st, wellknown.ReplicaSetReplicaFailure)
	}

	if proto.Equal(d.GetStatus(), st) {
		c.requeueStuck(key, d, st)
		return nil
	}
	d.Status = st
	return c.writeStatus(ctx, key, d)
}

// syncStatus writes d's counts and Available condition, leaving Progressing
// as it is: for paused Deployments and scaling.
func (c *Controller) syncStatus(ctx context.Context, key string, d *capstanv1.Deployment, all []*capstanv1.ReplicaSet, newRS *capstanv1.ReplicaSet) error {
	st := c.calculateStatus(d, all, newRS)
	if proto.Equal(d.GetStatus(), st) {
		return nil
	}
	d.Status = st
	return c.writeStatus(ctx, key, d)
}

// replicaFailure is the ReplicaFailure condition of the new ReplicaSet, or
// else of any old one, as a Deployment condition.
func replicaFailure(all []*capstanv1.ReplicaSet, newRS *capstanv1.ReplicaSet) *capstanv1.Condition {
	ordered := all
	if newRS != nil {
		ordered = append([]*capstanv1.ReplicaSet{newRS}, all...)
	}
	for _, rs := range ordered {
		if rs == nil {
			continue
		}
		if cond := findCondition(rs.GetStatus().GetConditions(), wellknown.ReplicaSetReplicaFailure); cond != nil && cond.GetStatus() == wellknown.ConditionTrue {
			return &capstanv1.Condition{Type: wellknown.ReplicaSetReplicaFailure, Status: cond.GetStatus(), Reason: cond.GetReason(), Message: cond.GetMessage()}
		}
	}
	return nil
}

// requeueStuck looks at an unfinished rollout again when its progress
// deadline passes, in case nothing else brings it back.
func (c *Controller) requeueStuck(key string, d *capstanv1.Deployment, st *capstanv1.DeploymentStatus) {
	cond := findCondition(d.GetStatus().GetConditions(), wellknown.DeploymentProgressing)
	if cond == nil || deploymentComplete(d, st) || cond.GetReason() == reasonProgressDeadlineExceeded {
		return
	}
	deadline := cond.GetLastHeartbeatTime().AsTime().Add(time.Duration(progressDeadlineSeconds(d)) * time.Second)
	// A second more so that the deadline has surely passed on arrival.
	c.loop.AddAfter(key, max(deadline.Sub(c.clock.Now()), 0)+time.Second)
}

// checkPausedConditions marks Progressing Unknown when d is paused or
// resumed, so the time spent paused does not count against the deadline.
func (c *Controller) checkPausedConditions(ctx context.Context, key string, d *capstanv1.Deployment) error {
	cond := findCondition(d.GetStatus().GetConditions(), wellknown.DeploymentProgressing)
	if cond != nil && cond.GetReason() == reasonProgressDeadlineExceeded {
		return nil // a reported failure stays until there is progress
	}
	pausedMarked := cond != nil && cond.GetReason() == reasonDeploymentPaused
	switch paused := d.GetSpec().GetPaused(); {
	case paused && !pausedMarked:
		c.setCondition(d, progressingCondition(wellknown.ConditionUnknown, reasonDeploymentPaused, "Deployment is paused"))
	case !paused && pausedMarked:
		c.setCondition(d, progressingCondition(wellknown.ConditionUnknown, reasonDeploymentResumed, "Deployment is resumed"))
	default:
		return nil
	}
	return c.writeStatus(ctx, key, d)
}

// cloneDeployment is resource.Clone with a status to write into.
func cloneDeployment(d *capstanv1.Deployment) *capstanv1.Deployment {
	out := resource.Clone(d)
	if out.Status == nil {
		out.Status = &capstanv1.DeploymentStatus{}
	}
	return out
}
