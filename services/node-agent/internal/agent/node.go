package agent

import (
	"context"
	"fmt"
	goruntime "runtime"
	"strconv"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/version"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// The Ready condition the agent reports.
const (
	reasonAgentReady  = "AgentReady"
	messageAgentReady = "node agent is running and renewing its lease"
)

// pokeNodeStatus asks the node status loop to compare (force: to write)
// the Node status now.
func (a *Agent) pokeNodeStatus(force bool) {
	if force {
		a.forceNodeStatus.Store(true)
	}
	select {
	case a.nodeStatusPoke <- struct{}{}:
	default:
	}
}

// runNodeStatus registers the Node, retrying until the API answers, then
// keeps its status current until ctx ends.
func (a *Agent) runNodeStatus(ctx context.Context) {
	delay := retryFirstDelay
	for {
		err := a.register(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("cannot register the node yet; retrying", "error", err, "retry-in", delay)
		if !a.sleepCtx(ctx, delay) {
			return
		}
		delay = nextDelay(delay)
	}
	close(a.registered)
	lastWrite := a.clock.Now()
	check := a.clock.NewTicker(a.cfg.NodeStatusCheckPeriod)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-check.C():
		case <-a.nodeStatusPoke:
		}
		force := a.forceNodeStatus.Swap(false) || a.clock.Since(lastWrite) >= a.cfg.NodeStatusRefreshPeriod
		wrote, err := a.syncNodeStatus(ctx, force)
		switch {
		case err != nil && ctx.Err() == nil:
			a.log.Warn("cannot update the node status; retrying", "error", err)
			if force {
				a.forceNodeStatus.Store(true)
			}
		case wrote:
			lastWrite = a.clock.Now()
		}
	}
}

// register creates the Node, or adds the agent's labels to the one that
// exists (keeping what others set: taints, unschedulable, their labels),
// and writes its status.
func (a *Agent) register(ctx context.Context) error {
	_, err := a.client.Nodes().CreateNode(ctx, &capstanv1.CreateNodeRequest{Node: &capstanv1.Node{
		Metadata: &capstanv1.ObjectMeta{Name: a.cfg.NodeName, Labels: a.cfg.Labels},
	}})
	switch {
	case err == nil:
		a.log.Info("node registered", "created", true)
	case apierrors.IsAlreadyExists(err):
		if err := a.updateLabels(ctx); err != nil {
			return err
		}
		a.log.Info("node registered", "created", false)
	default:
		return fmt.Errorf("create node: %w", err)
	}
	if _, err := a.syncNodeStatus(ctx, true); err != nil {
		return err
	}
	return nil
}

// updateLabels makes the Node carry the agent's labels; an update that
// meets a concurrent change reads again.
func (a *Agent) updateLabels(ctx context.Context) error {
	for {
		resp, err := a.client.Nodes().GetNode(ctx, &capstanv1.GetNodeRequest{Name: a.cfg.NodeName})
		if err != nil {
			return fmt.Errorf("read node: %w", err)
		}
		node := resp.GetNode()
		changed := false
		for k, v := range a.cfg.Labels {
			if cur, ok := node.GetMetadata().GetLabels()[k]; !ok || cur != v {
				changed = true
			}
		}
		if !changed {
			return nil
		}
		if node.Metadata.Labels == nil {
			node.Metadata.Labels = map[string]string{}
		}
		for k, v := range a.cfg.Labels {
			node.Metadata.Labels[k] = v
		}
		_, err = a.client.Nodes().UpdateNode(ctx, &capstanv1.UpdateNodeRequest{Node: node})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("update node labels: %w", err)
		}
		return nil
	}
}

// syncNodeStatus writes the Node status if it differs from the cached
// Node's (condition times aside), or if force. A Node that was deleted is
// registered again.
func (a *Agent) syncNodeStatus(ctx context.Context, force bool) (wrote bool, err error) {
	var current *capstanv1.NodeStatus
	if cached, ok := a.caches.nodeObject(a.cfg.NodeName); ok {
		current = cached.GetStatus()
	}
	want := a.nodeStatus(current)
	if !force && current != nil && nodeStatusEqual(current, want) {
		return false, nil
	}
	_, err = a.client.Nodes().UpdateNodeStatus(ctx, &capstanv1.UpdateNodeStatusRequest{Node: &capstanv1.Node{
		Metadata: &capstanv1.ObjectMeta{Name: a.cfg.NodeName},
		Status:   want,
	}})
	if apierrors.IsNotFound(err) {
		a.log.Warn("the node was deleted; registering it again")
		return true, a.register(ctx)
	}
	if err != nil {
		return false, fmt.Errorf("update node status: %w", err)
	}
	return true, nil
}

// nodeStatus is the status the agent reports, with condition transition
// times kept from current when the condition has not changed.
func (a *Agent) nodeStatus(current *capstanv1.NodeStatus) *capstanv1.NodeStatus {
	now := timestamppb.New(a.clock.Now())
	resources := map[string]string{
		"cpu":    a.cfg.CPU,
		"memory": a.cfg.Memory,
		"pods":   strconv.Itoa(a.cfg.MaxPods),
	}
	ready := &capstanv1.Condition{
		Type:               wellknown.NodeReady,
		Status:             wellknown.ConditionTrue,
		Reason:             reasonAgentReady,
		Message:            messageAgentReady,
		LastTransitionTime: now,
		LastHeartbeatTime:  now,
	}
	for _, c := range current.GetConditions() {
		if c.GetType() == ready.Type && c.GetStatus() == ready.Status && c.GetLastTransitionTime() != nil {
			ready.LastTransitionTime = c.GetLastTransitionTime()
		}
	}
	return &capstanv1.NodeStatus{
		Capacity:      resources,
		Allocatable:   resources,
		Conditions:    []*capstanv1.Condition{ready},
		Addresses:     []*capstanv1.NodeAddress{{Type: "InternalIP", Address: a.cfg.Address}},
		AgentEndpoint: a.cfg.AgentEndpoint,
		NodeInfo: &capstanv1.NodeInfo{
			AgentVersion:    version.Version,
			OperatingSystem: goruntime.GOOS,
			Architecture:    goruntime.GOARCH,
			Runtime:         a.cfg.RuntimeName,
		},
	}
}

// nodeStatusEqual compares two Node statuses, condition times aside.
func nodeStatusEqual(a, b *capstanv1.NodeStatus) bool {
	return proto.Equal(withoutConditionTimes(a), withoutConditionTimes(b))
}

// withoutConditionTimes is a copy of a status (NodeStatus or PodStatus)
// whose conditions carry no times.
func withoutConditionTimes[T interface {
	proto.Message
	GetConditions() []*capstanv1.Condition
}](status T) T {
	c := proto.Clone(status).(T)
	for _, cond := range c.GetConditions() {
		cond.LastTransitionTime = nil
		cond.LastHeartbeatTime = nil
	}
	return c
}
