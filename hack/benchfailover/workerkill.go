package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/hack/internal/podtrack"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/testcluster"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// workerKill runs pods ReplicaSet pods on the real node agents, then
// SIGKILLs the agent with the most of them and its pods' processes, and
// measures until the pods run again on the other nodes (podtrack). The
// kill waits until the controller-manager's leader has led for
// nodeStartupGrace (and a second more): before that it judges no node.
func (b *bench) workerKill(ctx context.Context, pods int, nodeStartupGrace time.Duration) (podtrack.WorkerKillResult, error) {
	agents := map[string]string{}
	for _, a := range b.cluster.NodeAgents() {
		agents[a.Node] = a.Process
	}
	tracker := podtrack.Start(ctx, b.api, workerNamespace)
	defer tracker.Stop()
	fmt.Fprintf(os.Stderr, "worker kill: a ReplicaSet of %d pods on %d node agents ...\n", pods, len(agents))
	if _, err := b.api.Create(ctx, testcluster.ReplicaSet(workerNamespace, workerReplicaSet, int32(pods), podSpec(workerLabel))); err != nil {
		return podtrack.WorkerKillResult{}, fmt.Errorf("create the ReplicaSet of the worker kill: %w", err)
	}
	err := tracker.WaitFor(ctx, readyTimeout, fmt.Sprintf("%d pods Running", pods), func(p map[string]podtrack.PodTimes, _ map[string]time.Time) error {
		if n := podtrack.CountRunning(p, ""); n < pods {
			return fmt.Errorf("%d of %d pods Running", n, pods)
		}
		return nil
	})
	if err != nil {
		return podtrack.WorkerKillResult{}, err
	}
	lease, err := b.cluster.Lease(ctx, wellknown.ControllerManagerLease)
	if err != nil {
		return podtrack.WorkerKillResult{}, err
	}
	if wait := time.Until(lease.GetStatus().GetAcquireTime().AsTime().Add(nodeStartupGrace + time.Second)); wait > 0 {
		fmt.Fprintf(os.Stderr, "waiting %v: the controller-manager's leader judges no node before its node startup grace (%v) has passed\n", wait.Round(time.Second), nodeStartupGrace)
		select {
		case <-ctx.Done():
			return podtrack.WorkerKillResult{}, ctx.Err()
		case <-time.After(wait):
		}
	}
	if now, err := b.cluster.LeaseHolding(ctx, wellknown.ControllerManagerLease); err != nil || now != testcluster.HoldingOf(lease) {
		return podtrack.WorkerKillResult{}, fmt.Errorf("the controller-manager's leader changed while the bench waited for its node startup grace: %v, now %v (%v)",
			testcluster.HoldingOf(lease), now, err)
	}
	sessions, err := b.nodeLeases(ctx)
	if err != nil {
		return podtrack.WorkerKillResult{}, err
	}
	fmt.Fprintf(os.Stderr, "node leases before the kill: %s\n", sessions)
	fmt.Fprintln(os.Stderr, "SIGKILL of the node agent with the most pods, and of its pods' processes ...")
	res, err := podtrack.KillWorker(ctx, b.cluster, tracker, agents, pods, workerKillTimeout)
	if err != nil {
		return res, err
	}
	ended, err := b.nodeLeaseEnd(ctx, res.Node, res.Killed)
	if err != nil {
		return res, err
	}
	fmt.Fprintf(os.Stderr, "the node lease of %s ended: %s\n", res.Node, ended)
	return res, nil
}

// nodeLeases describes each node lease: its holder, epoch and session.
func (b *bench) nodeLeases(ctx context.Context) (string, error) {
	list, err := b.api.List(ctx, leaseKind, client.ListOptions{Namespace: wellknown.NodeLeaseNamespace})
	if err != nil {
		return "", fmt.Errorf("list the node leases: %w", err)
	}
	var out []string
	for _, obj := range list.Items {
		l := obj.(*capstanv1.Lease)
		session := l.GetStatus().GetSessionReplica()
		if session == "" {
			session = "none"
		}
		out = append(out, fmt.Sprintf("%s (%v, session %s)", l.GetMetadata().GetName(), testcluster.HoldingOf(l), session))
	}
	return strings.Join(out, ", "), nil
}

// nodeLeaseEnd says how the holding of the node's lease ended after the
// moment killed, from the events of its transitions (the API server
// records one for each).
func (b *bench) nodeLeaseEnd(ctx context.Context, node string, killed time.Time) (string, error) {
	list, err := b.api.List(ctx, eventKind, client.ListOptions{Namespace: wellknown.NodeLeaseNamespace, FieldSelector: "involved_object.name=" + node})
	if err != nil {
		return "", fmt.Errorf("list the events of the node lease %s: %w", node, err)
	}
	var last *capstanv1.Event
	for _, obj := range list.Items {
		ev := obj.(*capstanv1.Event)
		if ev.GetReason() == "LeaseAcquired" || ev.GetLastTime().AsTime().Before(killed) {
			continue
		}
		if last == nil || ev.GetLastTime().AsTime().After(last.GetLastTime().AsTime()) {
			last = ev
		}
	}
	if last == nil {
		return "no event says how: it expired (an expiry is recorded only when the lease is acquired again)", nil
	}
	return fmt.Sprintf("%s: %s", last.GetReason(), last.GetMessage()), nil
}
