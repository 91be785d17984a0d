package agent

import (
	"context"
	"fmt"
	"log/slog"
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
		wrote, err := a.syncNodeStatus(ctx, force, nil)
		switch {
		case err != nil && ctx.Err() == nil:
			// A conflict that outlived a fresh read means another writer
			// is busy with the Node: its change reaches the cache, whose
			// event pokes this loop again.
			level := slog.LevelWarn
			if apierrors.IsConflict(err) {
				level = slog.LevelDebug
			}
			a.log.Log(ctx, level, "cannot update the node status; retrying", "error", err)
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
// and writes its status over the Node it created or read.
func (a *Agent) register(ctx context.Context) error {
	resp, err := a.client.Nodes().CreateNode(ctx, &capstanv1.CreateNodeRequest{Node: &capstanv1.Node{
		Metadata: &capstanv1.ObjectMeta{Name: a.cfg.NodeName, Labels: a.cfg.Labels},
	}})
	node := resp.GetNode()
	switch {
	case err == nil:
		a.log.Info("node registered", "created", true)
	case apierrors.IsAlreadyExists(err):
		if node, err = a.updateLabels(ctx); err != nil {
			return err
		}
		a.log.Info("node registered", "created", false)
	default:
		return fmt.Errorf("create node: %w", err)
	}
	if _, err := a.syncNodeStatus(ctx, true, node); err != nil {
		return err
	}
	return nil
}

// updateLabels makes the Node carry the agent's labels, and returns it as
// read or stored; an update that meets a concurrent change reads again.
func (a *Agent) updateLabels(ctx context.Context) (*capstanv1.Node, error) {
	for {
		resp, err := a.client.Nodes().GetNode(ctx, &capstanv1.GetNodeRequest{Name: a.cfg.NodeName})
		if err != nil {
			return nil, fmt.Errorf("read node: %w", err)
		}
		node := resp.GetNode()
		changed := false
		for k, v := range a.cfg.Labels {
			if cur, ok := node.GetMetadata().GetLabels()[k]; !ok || cur != v {
				changed = true
			}
		}
		if !changed {
			return node, nil
		}
		if node.Metadata.Labels == nil {
			node.Metadata.Labels = map[string]string{}
		}
		for k, v := range a.cfg.Labels {
			node.Metadata.Labels[k] = v
		}
		// At the version read (its uid and resource_version are in node).
		updated, err := a.client.Nodes().UpdateNode(ctx, &capstanv1.UpdateNodeRequest{Node: node})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("update node labels: %w", err)
		}
		return updated.GetNode(), nil
	}
}

// syncNodeStatus writes the Node status if it differs from the newest Node
// the agent knows (condition times aside), or if force. That Node is the
// newer of known (the one register created or read; may be nil) and the
// cached one, else the one read from the API.
//
// The write is conditional on that Node's uid and resource_version, so that
// a write that arrives late (it sat in the socket of a frozen API replica)
// can never overwrite a newer status, such as the node lifecycle
// controller's Ready=Unknown. If the Node changed meanwhile (the cache was
// behind), the status is composed again over the Node read from the API and
// written at its version: the status depends on the Node's (Ready's
// transition time), and the loop must converge while the cache lags. A Node
// that was deleted is registered again.
func (a *Agent) syncNodeStatus(ctx context.Context, force bool, known *capstanv1.Node) (wrote bool, err error) {
	node := known
	if cached, ok := a.caches.nodeObject(a.cfg.NodeName); ok && cached.GetMetadata().GetResourceVersion() > node.GetMetadata().GetResourceVersion() {
		node = cached
	}
	for reread := false; ; reread = true {
		if node == nil {
			resp, err := a.client.Nodes().GetNode(ctx, &capstanv1.GetNodeRequest{Name: a.cfg.NodeName})
			if apierrors.IsNotFound(err) {
				a.log.Warn("the node was deleted; registering it again")
				return true, a.register(ctx)
			}
			if err != nil {
				return false, fmt.Errorf("read node: %w", err)
			}
			node = resp.GetNode()
		}
		want := a.nodeStatus(node.GetStatus())
		if !force && nodeStatusEqual(node.GetStatus(), want) {
			return false, nil
		}
		meta := node.GetMetadata()
		_, err = a.client.Nodes().UpdateNodeStatus(ctx, &capstanv1.UpdateNodeStatusRequest{Node: &capstanv1.Node{
			Metadata: &capstanv1.ObjectMeta{Name: a.cfg.NodeName, Uid: meta.GetUid(), ResourceVersion: meta.GetResourceVersion()},
			Status:   want,
		}})
		switch {
		case err == nil:
			return true, nil
		case apierrors.IsNotFound(err):
			a.log.Warn("the node was deleted; registering it again")
			return true, a.register(ctx)
		case apierrors.IsConflict(err) && !reread:
			a.log.Debug("the node changed since the agent read it; composing its status again over the API's", "resource-version", meta.GetResourceVersion(), "error", err)
			node = nil
		default:
			return false, fmt.Errorf("update node status at version %d: %w", meta.GetResourceVersion(), err)
		}
	}
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
