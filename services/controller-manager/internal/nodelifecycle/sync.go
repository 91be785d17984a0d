package nodelifecycle

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/taints"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Condition reason, message and event reasons.
const (
	reasonNodeStatusUnknown  = "NodeStatusUnknown"
	messageLeaseNotRenewed   = "node agent stopped renewing its lease"
	reasonNodeNotReady       = "NodeNotReady"
	reasonEvicted            = "TaintManagerEviction"
	reasonEvictionSuppressed = "EvictionSuppressed"
)

var podKind = resource.MustLookup("Pod")

// sync brings one node in line with its lease as judged at now.
func (c *Controller) sync(ctx context.Context, s *state, name string, now time.Time) error {
	cached, ok := c.nodes.Get("", name)
	if !ok {
		s.forget(name)
		return nil
	}
	_, leasePresent := c.leases.Get(wellknown.NodeLeaseNamespace, name)
	switch s.judge(name, leasePresent, now, c.opts.StartupGrace) {
	case alive:
		return c.untaint(ctx, cached)
	case waiting:
		return nil
	}
	node, err := c.markDead(ctx, cached, now)
	if err != nil {
		return err
	}
	return c.evict(ctx, s, node, now)
}

func unreachableTaint(node *capstanv1.Node) *capstanv1.Taint {
	for _, t := range node.GetSpec().GetTaints() {
		if t.GetKey() == wellknown.TaintNodeUnreachable && t.GetEffect() == wellknown.TaintNoExecute {
			return t
		}
	}
	return nil
}

// untaint removes the unreachable taint from a node whose lease is back.
func (c *Controller) untaint(ctx context.Context, cached *capstanv1.Node) error {
	if unreachableTaint(cached) == nil {
		return nil
	}
	node := resource.Clone(cached)
	node.Spec.Taints = slices.DeleteFunc(node.Spec.Taints, func(t *capstanv1.Taint) bool {
		return t.GetKey() == wellknown.TaintNodeUnreachable && t.GetEffect() == wellknown.TaintNoExecute
	})
	if _, err := c.client.Nodes().UpdateNode(ctx, &capstanv1.UpdateNodeRequest{Node: node}); err != nil {
		return fmt.Errorf("remove taint %s: %w", wellknown.TaintNodeUnreachable, err)
	}
	c.log.Info("node lease is back: removed the unreachable taint", "node", node.GetMetadata().GetName())
	return nil
}

// markDead sets Ready=Unknown and adds the unreachable taint, each if not
// there yet, and returns the node as stored.
func (c *Controller) markDead(ctx context.Context, cached *capstanv1.Node, now time.Time) (*capstanv1.Node, error) {
	name := cached.GetMetadata().GetName()
	node := cached
	if ready := readyCondition(node); ready == nil || ready.GetStatus() != wellknown.ConditionUnknown {
		next := resource.Clone(node)
		setReadyUnknown(next, now)
		resp, err := c.client.Nodes().UpdateNodeStatus(ctx, &capstanv1.UpdateNodeStatusRequest{Node: next})
		if err != nil {
			return nil, fmt.Errorf("set Ready=Unknown: %w", err)
		}
		node = resp.GetNode()
		c.log.Warn("node lease is gone: Ready is now Unknown", "node", name)
		c.recorder.Eventf(ctx, node, wellknown.EventWarning, reasonNodeNotReady,
			"Node %s status is now Unknown: %s", name, messageLeaseNotRenewed)
	}
	// A taint without time_added (put there by hand) would never age into
	// an eviction: it gets one.
	if taint := unreachableTaint(node); taint == nil || taint.GetTimeAdded() == nil {
		next := resource.Clone(node)
		if next.Spec == nil {
			next.Spec = &capstanv1.NodeSpec{}
		}
		next.Spec.Taints = slices.DeleteFunc(next.Spec.Taints, func(t *capstanv1.Taint) bool {
			return t.GetKey() == wellknown.TaintNodeUnreachable && t.GetEffect() == wellknown.TaintNoExecute
		})
		next.Spec.Taints = append(next.Spec.Taints, &capstanv1.Taint{
			Key:       wellknown.TaintNodeUnreachable,
			Effect:    wellknown.TaintNoExecute,
			TimeAdded: timestamppb.New(now),
		})
		resp, err := c.client.Nodes().UpdateNode(ctx, &capstanv1.UpdateNodeRequest{Node: next})
		if err != nil {
			return nil, fmt.Errorf("add taint %s: %w", wellknown.TaintNodeUnreachable, err)
		}
		node = resp.GetNode()
		c.log.Info("tainted dead node", "node", name, "taint", wellknown.TaintNodeUnreachable)
	}
	return node, nil
}

func readyCondition(node *capstanv1.Node) *capstanv1.Condition {
	for _, cond := range node.GetStatus().GetConditions() {
		if cond.GetType() == wellknown.NodeReady {
			return cond
		}
	}
	return nil
}

// setReadyUnknown marks Ready Unknown; the heartbeat time stays, it is the
// agent's last word.
func setReadyUnknown(node *capstanv1.Node, now time.Time) {
	if node.Status == nil {
		node.Status = &capstanv1.NodeStatus{}
	}
	cond := readyCondition(node)
	if cond == nil {
		cond = &capstanv1.Condition{Type: wellknown.NodeReady}
		node.Status.Conditions = append(node.Status.Conditions, cond)
	}
	cond.Status = wellknown.ConditionUnknown
	cond.Reason = reasonNodeStatusUnknown
	cond.Message = messageLeaseNotRenewed
	cond.LastTransitionTime = timestamppb.New(now)
}

// evict deletes the pods of a dead, tainted node whose time is up, unless
// mass-eviction protection holds, and schedules the next look.
func (c *Controller) evict(ctx context.Context, s *state, node *capstanv1.Node, now time.Time) error {
	name := node.GetMetadata().GetName()
	if !s.evictionDue(name, now) {
		return nil
	}
	// The monitor's census says so already (and logged it), or a fresh one
	// does: leases of a partitioned zone vanish within moments of each
	// other.
	if s.isSuppressed() {
		return nil
	}
	if deadNodes, total := c.census(s, now); evictionSuppressed(deadNodes, total) {
		return nil
	}
	taint := unreachableTaint(node)
	tainted := taint.GetTimeAdded().AsTime() // markDead made sure it is set

	pods, err := c.client.ListAll(ctx, podKind, client.ListOptions{
		Namespace:     resource.AllNamespaces,
		FieldSelector: "spec.node_name=" + name,
	})
	if err != nil {
		return fmt.Errorf("list pods of node %s: %w", name, err)
	}
	// With nothing left to evict, look again after a full timeout, for
	// pods bound here since.
	next := now.Add(c.opts.PodEvictionTimeout)
	for _, obj := range pods.Items {
		pod := obj.(*capstanv1.Pod)
		wait, forever := tolerationWait(pod, taint, c.opts.PodEvictionTimeout)
		if forever {
			continue
		}
		if at := tainted.Add(wait); now.Before(at) {
			next = earliest(next, at)
			continue
		}
		if err := c.evictPod(ctx, node, pod, now.Sub(tainted)); err != nil {
			return err
		}
	}
	s.setNextEvictionPass(name, next)
	return nil
}

func (c *Controller) evictPod(ctx context.Context, node *capstanv1.Node, pod *capstanv1.Pod, unreachableFor time.Duration) error {
	meta := pod.GetMetadata()
	// Force (grace 0): the node's agent is unreachable and cannot finish a
	// graceful deletion. If it comes back, it stops the pods the API no
	// longer has. Only the version that was judged (its node, its
	// tolerations): a pod changed since, or a new pod of the same name, is
	// ABORTED, and the retry lists the node's pods again and judges anew.
	_, err := c.client.Delete(ctx, podKind, meta.GetNamespace(), meta.GetName(),
		&capstanv1.Preconditions{Uid: meta.GetUid(), ResourceVersion: meta.GetResourceVersion()}, client.GracePeriod(0))
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("evict pod %s/%s at version %d: %w", meta.GetNamespace(), meta.GetName(), meta.GetResourceVersion(), err)
	}
	c.log.Info("evicted pod from dead node", "node", node.GetMetadata().GetName(),
		"pod", meta.GetNamespace()+"/"+meta.GetName(), "unreachable-for", unreachableFor.Round(time.Millisecond))
	c.recorder.Eventf(ctx, pod, wellknown.EventWarning, reasonEvicted,
		"Deleted pod %s/%s: node %s has been unreachable for %s", meta.GetNamespace(), meta.GetName(),
		node.GetMetadata().GetName(), unreachableFor.Round(time.Second))
	return nil
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// tolerationWait is how long pod may stay on a node after taint was added:
// timeout if no toleration matches; if some match, forever if one of them
// has no toleration_seconds, else the shortest of their toleration_seconds.
func tolerationWait(pod *capstanv1.Pod, taint *capstanv1.Taint, timeout time.Duration) (wait time.Duration, forever bool) {
	matched := false
	for _, tol := range pod.GetSpec().GetTolerations() {
		if !taints.Tolerates(tol, taint) {
			continue
		}
		if tol.TolerationSeconds == nil {
			return 0, true
		}
		d := time.Duration(max(tol.GetTolerationSeconds(), 0)) * time.Second
		if !matched || d < wait {
			wait = d
		}
		matched = true
	}
	if !matched {
		return timeout, false
	}
	return wait, false
}
