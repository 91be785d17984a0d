package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// FaultKind is a scenario the run draws from.
type FaultKind string

// The scenarios. Each hits one thing at a time, so that never more than a
// minority of etcd members is down — except QuorumLoss, which takes two
// masters' API servers (and their etcd members) down on purpose, then
// brings them back.
const (
	// FaultUnit kills, stops, pauses or SIGSTOPs one master's component.
	FaultUnit FaultKind = "component"
	// FaultHolder kills or freezes the current holder of the
	// controller-manager's or the scheduler's lease.
	FaultHolder FaultKind = "lease-holder"
	// FaultEtcdLeader kills, stops or pauses the API server whose etcd
	// member leads.
	FaultEtcdLeader FaultKind = "etcd-leader"
	// FaultMaster kills, stops or pauses a whole master: its three units.
	FaultMaster FaultKind = "master"
	// FaultWorker kills a worker with its pods, or stops or pauses it.
	FaultWorker FaultKind = "worker"
	// FaultNetworkCut takes a master's component or a worker off the
	// network, then back.
	FaultNetworkCut FaultKind = "network-cut"
	// FaultQuorumLoss takes two masters' API servers down, then back.
	FaultQuorumLoss FaultKind = "quorum-loss"
)

// FaultRecord is one fault as it happened.
type FaultRecord struct {
	Kind  FaultKind `json:"kind"`
	How   string    `json:"how"`
	Units []string  `json:"units"`
	// Nodes are the workers' node names among Units.
	Nodes    []string  `json:"nodes,omitempty"`
	Start    time.Time `json:"start"`
	Undone   time.Time `json:"undone"`
	Restored time.Time `json:"restored"`
	Err      string    `json:"error,omitempty"`
}

func (f FaultRecord) String() string {
	s := fmt.Sprintf("%-12s %-8s %s", f.Kind, f.How, strings.Join(f.Units, ","))
	if f.Err != "" {
		s += " (" + f.Err + ")"
	}
	return s
}

// faulter draws and applies faults.
type faulter struct {
	t        Target
	c        *client.Client
	rng      *rand.Rand
	log      func(string)
	lastLoss time.Time
	records  []FaultRecord
	// only, if set, are the scenarios to draw from.
	only []FaultKind
}

// holdFor is how long a fault lasts before it is undone.
func (f *faulter) holdFor(kind FaultKind) time.Duration {
	if kind == FaultQuorumLoss {
		return 8 * time.Second
	}
	return 2*time.Second + time.Duration(f.rng.Int64N(int64(6*time.Second)))
}

// next applies one fault, holds it, undoes it and waits until the cluster
// is whole again.
func (f *faulter) next(ctx context.Context) error {
	kinds := []FaultKind{FaultUnit, FaultUnit, FaultHolder, FaultHolder, FaultEtcdLeader, FaultMaster, FaultWorker}
	if _, ok := f.t.(*ComposeTarget); ok {
		kinds = append(kinds, FaultNetworkCut, FaultNetworkCut)
	}
	if time.Since(f.lastLoss) > 3*time.Minute {
		kinds = append(kinds, FaultQuorumLoss)
	}
	if len(f.only) > 0 {
		kinds = slices.DeleteFunc(kinds, func(k FaultKind) bool { return !slices.Contains(f.only, k) })
		if len(kinds) == 0 {
			kinds = []FaultKind{f.only[0]}
		}
	}
	kind := kinds[f.rng.IntN(len(kinds))]
	rec := FaultRecord{Kind: kind}
	apply, undo, err := f.plan(ctx, &rec)
	if err != nil {
		return err
	}
	if kind == FaultQuorumLoss {
		f.lastLoss = time.Now()
	}
	for _, u := range f.t.Units() {
		if u.Role == Worker && slices.Contains(rec.Units, u.Name) {
			rec.Nodes = append(rec.Nodes, u.Node)
		}
	}
	rec.Start = time.Now()
	f.log(fmt.Sprintf("fault %d: %v", len(f.records)+1, rec))
	if err := apply(ctx); err != nil {
		rec.Err = err.Error()
	}
	select {
	case <-ctx.Done():
	case <-time.After(f.holdFor(kind)):
	}
	undoCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
	defer cancel()
	if err := undo(undoCtx); err != nil && rec.Err == "" {
		rec.Err = "undo: " + err.Error()
	}
	rec.Undone = time.Now()
	if err := f.t.Restore(undoCtx, 3*time.Minute); err != nil {
		rec.Restored = time.Now()
		f.records = append(f.records, rec)
		return fmt.Errorf("after %v the cluster did not come back: %w", rec, err)
	}
	rec.Restored = time.Now()
	f.records = append(f.records, rec)
	return nil
}

type action func(context.Context) error

// plan picks the units and the way of faulting them.
func (f *faulter) plan(ctx context.Context, rec *FaultRecord) (apply, undo action, err error) {
	pick := func(units []Unit) Unit { return units[f.rng.IntN(len(units))] }
	masters := unitsOf(f.t, func(u Unit) bool { return u.Role != Worker })
	workers := unitsOf(f.t, func(u Unit) bool { return u.Role == Worker })
	var units []Unit
	ways := []string{"kill", "stop", "pause", "sigstop"}
	switch rec.Kind {
	case FaultUnit:
		units = []Unit{pick(masters)}
	case FaultHolder:
		lease := []string{"controller-manager", "scheduler"}[f.rng.IntN(2)]
		u, err := f.holder(ctx, lease)
		if err != nil {
			return nil, nil, err
		}
		units, ways = []Unit{u}, []string{"kill", "sigstop"}
	case FaultEtcdLeader:
		n, err := f.etcdLeader(ctx)
		if err != nil {
			return nil, nil, err
		}
		units = unitsOf(f.t, func(u Unit) bool { return u.Role == APIServer && u.Index == n })
		ways = []string{"kill", "stop", "pause"}
	case FaultMaster:
		units = masterUnits(f.t, 1+f.rng.IntN(3))
		ways = []string{"kill", "stop", "pause"}
	case FaultWorker:
		units, ways = []Unit{pick(workers)}, []string{"kill-with-pods", "stop", "pause"}
	case FaultNetworkCut:
		units, ways = []Unit{pick(append(masters, workers...))}, []string{"cut"}
	case FaultQuorumLoss:
		first := 1 + f.rng.IntN(3)
		second := 1 + (first+f.rng.IntN(2))%3
		units = unitsOf(f.t, func(u Unit) bool { return u.Role == APIServer && (u.Index == first || u.Index == second) })
		ways = []string{"stop"}
	}
	rec.How = ways[f.rng.IntN(len(ways))]
	for _, u := range units {
		rec.Units = append(rec.Units, u.Name)
	}
	switch rec.How {
	case "kill":
		return func(ctx context.Context) error { return f.t.Kill(ctx, units...) },
			func(ctx context.Context) error { return f.t.Start(ctx, units...) }, nil
	case "kill-with-pods":
		return func(ctx context.Context) error { return f.t.KillWorker(ctx, units[0]) },
			func(ctx context.Context) error { return f.t.Start(ctx, units...) }, nil
	case "stop":
		return func(ctx context.Context) error { return f.t.Stop(ctx, units...) },
			func(ctx context.Context) error { return f.t.Start(ctx, units...) }, nil
	case "pause":
		return func(ctx context.Context) error { return f.t.Pause(ctx, units...) },
			func(ctx context.Context) error { return f.t.Unpause(ctx, units...) }, nil
	case "sigstop":
		return func(ctx context.Context) error { return f.t.Freeze(ctx, units...) },
			func(ctx context.Context) error { return f.t.Thaw(ctx, units...) }, nil
	case "cut":
		return func(ctx context.Context) error { return f.t.Cut(ctx, units[0]) },
			func(ctx context.Context) error { return f.t.Heal(ctx, units[0]) }, nil
	}
	return nil, nil, fmt.Errorf("no way %q", rec.How)
}

// holder is the unit that holds lease now.
func (f *faulter) holder(ctx context.Context, lease string) (Unit, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	obj, err := f.c.Get(ctx, leaseKind, wellknown.SystemNamespace, lease)
	if err != nil {
		return Unit{}, fmt.Errorf("lease %s: %w", lease, err)
	}
	holder := obj.(*capstanv1.Lease).GetSpec().GetHolderIdentity()
	u, ok := holderUnit(f.t, holder)
	if !ok {
		return Unit{}, fmt.Errorf("lease %s: no unit runs its holder %q", lease, holder)
	}
	return u, nil
}

// etcdLeader is the number of the master whose etcd member leads
// (members are named master-N on both targets).
func (f *faulter) etcdLeader(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	st, err := f.c.Cluster().GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
	if err != nil {
		return 0, err
	}
	for _, m := range st.GetEtcdMembers() {
		var n int
		if _, err := fmt.Sscanf(m.GetName(), "master-%d", &n); m.GetLeader() && err == nil {
			return n, nil
		}
	}
	return 0, errors.New("no etcd member leads")
}
