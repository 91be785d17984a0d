package etcd3

import (
	"context"
	"fmt"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-dev/capstan/internal/apierrors"
)

// The cluster clock: a write is applied before its deadline or never.
//
// The API server checks a write's deadline right before it sends the
// transaction (checkDeadline), but etcd evaluates a transaction when it
// applies it, and that can be seconds later: a transaction that reached an
// etcd member which was then frozen (its host paused while it was the etcd
// leader) waits in that member's socket or proposal queue and is proposed
// when the member resumes. By then its caller has given up and may have
// done something else instead — a ReplicaSet controller whose pod create
// timed out creates another pod, and the late one makes the set too big.
//
// So every API replica writes its wall clock to ClockKey every ClockPeriod
// (only forward: a slower clock writes nothing), and every write with a
// deadline carries the condition "the clock has not reached my deadline".
// A transaction etcd applies later than about 2 × ClockPeriod after its
// deadline (the margin and one tick) finds the clock past it and writes
// nothing. The clock is a key
// in etcd, so its order against the late transaction is etcd's own,
// however long the member was frozen.
//
// The clock is the fastest replica's wall clock, so each replica measures,
// at every tick, how far the cluster clock leads its own (the clock's lead)
// and states its deadlines in the cluster clock's time: deadline + lead +
// clockMargin. Replica clocks that differ thus cost nothing — a replica
// whose clock runs an hour ahead makes no write fail anywhere — and only a
// clock that jumps between two ticks is off by the jump until the next
// one. A write refused as late is tried once more after a fresh
// measurement, so a replica that has not ticked yet (or whose lead just
// changed) does not refuse writes that are on time.
const (
	// ClockKey holds the cluster clock: the newest wall-clock time an API
	// replica wrote, in Unix milliseconds, zero-padded to clockDigits
	// digits so that etcd's byte-wise comparison of values is numeric.
	ClockKey = "/capstan-internal/clock"
	// ClockPeriod is how often each API replica writes the clock.
	ClockPeriod = 250 * time.Millisecond

	// clockMargin is added to every deadline: the lead is measured up to
	// a ClockPeriod before the write, during which the cluster clock may
	// have been a tick behind.
	clockMargin = ClockPeriod
	clockDigits = 16
)

func clockValue(t time.Time) string { return fmt.Sprintf("%0*d", clockDigits, t.UnixMilli()) }

// clockDeadline is ctx's deadline in the cluster clock's time, if ctx has
// one.
func (s *Store) clockDeadline(ctx context.Context) (string, bool) {
	d, ok := ctx.Deadline()
	if !ok {
		return "", false
	}
	return clockValue(d.Add(time.Duration(s.clockLead.Load()) + clockMargin)), true
}

// clockCompare is the condition a write with ctx's deadline adds, if ctx
// has one: the cluster clock has not reached it. It fails when the clock
// key is missing too (etcd compares no value with a key that does not
// exist); the write then starts the clock and tries again.
func (s *Store) clockCompare(ctx context.Context) (clientv3.Cmp, bool) {
	d, ok := s.clockDeadline(ctx)
	if !ok {
		return clientv3.Cmp{}, false
	}
	return clientv3.Compare(clientv3.Value(ClockKey), "<", d), true
}

// clockOutcome says why a failed write's clock condition failed.
type clockOutcome int

const (
	clockFine clockOutcome = iota
	clockMissing
	clockPassed
)

// clockIn reads the clock from a failed write's Else branch (at index i;
// i < 0: the write had no clock condition).
func (s *Store) clockIn(ctx context.Context, resp *clientv3.TxnResponse, i int) clockOutcome {
	if i < 0 {
		return clockFine
	}
	kv := kvIn(resp, i)
	if kv == nil {
		return clockMissing
	}
	if d, ok := s.clockDeadline(ctx); ok && string(kv.Value) >= d {
		return clockPassed
	}
	return clockFine
}

// measureClock is what a write does when its clock condition failed while
// it still waited for the answer: the clock was missing (a new cluster
// whose replicas have not ticked yet, or someone deleted it), or it was
// past the deadline as this replica measured it, which means the
// measurement is off (this replica has not ticked yet, or a clock jumped).
// It writes the clock and measures its lead again.
func (s *Store) measureClock(ctx context.Context, why clockOutcome) error {
	reason := "past this call's deadline while the call still waits: measuring its lead again"
	if why == clockMissing {
		reason = "missing: starting it"
	}
	s.log.DebugContext(ctx, "the cluster clock is "+reason)
	return s.advanceClock(ctx)
}

// lateWrite is the error of a write etcd applied after its deadline.
func lateWrite(ctx context.Context) error {
	d, _ := ctx.Deadline()
	return apierrors.DeadlinePassed("when etcd applied this write (it reached etcd late): nothing was written", d)
}

// TickClock writes this replica's wall clock to ClockKey every ClockPeriod
// until ctx ends, only ever moving it forward, and measures the clock's
// lead over this replica's. Every API replica runs it.
func (s *Store) TickClock(ctx context.Context) {
	ticker := time.NewTicker(ClockPeriod)
	defer ticker.Stop()
	for {
		callCtx, cancel := context.WithTimeout(ctx, 2*ClockPeriod)
		err := s.advanceClock(callCtx)
		cancel()
		if err != nil && ctx.Err() == nil {
			s.log.DebugContext(ctx, "writing the cluster clock failed; trying again", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// advanceClock sets the clock to this replica's time if it is behind, or
// missing, and measures its lead from the value it has then.
func (s *Store) advanceClock(ctx context.Context) error {
	now := s.now()
	v := clockValue(now)
	put := clientv3.OpPut(ClockKey, v)
	get := clientv3.OpGet(ClockKey)
	resp, err := s.client.Txn(withLeader(ctx)).
		If(clientv3.Compare(clientv3.CreateRevision(ClockKey), "=", 0)).
		Then(put, get).
		Else(clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(ClockKey), "<", v)}, []clientv3.Op{put}, nil), get).
		Commit()
	if err != nil {
		return statusOf(err)
	}
	kv := kvIn(resp, 1)
	if kv == nil {
		return apierrors.Internal("the cluster clock %s is missing right after it was written", ClockKey)
	}
	ms, err := strconv.ParseInt(string(kv.Value), 10, 64)
	if err != nil {
		return apierrors.Internal("the cluster clock %s holds %q, not Unix milliseconds", ClockKey, kv.Value)
	}
	lead := time.UnixMilli(ms).Sub(now.Truncate(time.Millisecond))
	if old := time.Duration(s.clockLead.Swap(int64(lead))); (lead - old).Abs() > time.Second {
		s.log.WarnContext(ctx, "the cluster clock's lead over this replica's clock changed: a replica's wall clock runs ahead or jumped",
			"lead", lead, "was", old)
	}
	return nil
}
