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

// clockConds are the conditions a write with ctx's deadline adds, if ctx
// has one, and that deadline in the cluster clock's time: the clock has not
// reached it. The condition fails when the clock key is missing too (etcd
// compares no value with a key that does not exist); the write then starts
// the clock and tries again. The same deadline judges the answer
// (clockIn): the lead may change meanwhile.
func (s *Store) clockConds(ctx context.Context) (deadline string, conds []clientv3.Cmp) {
	d, ok := ctx.Deadline()
	if !ok {
		return "", nil
	}
	deadline = clockValue(d.Add(time.Duration(s.clockLead.Load()) + clockMargin))
	return deadline, []clientv3.Cmp{clientv3.Compare(clientv3.Value(ClockKey), "<", deadline)}
}

// clockOutcome says why a failed write's clock condition failed.
type clockOutcome int

const (
	clockFine clockOutcome = iota
	clockMissing
	clockPassed
)

// clockIn reads the clock from a failed write's Else branch (at index i;
// i < 0: the write had no clock condition) and judges it against the
// deadline the condition stated.
func clockIn(resp *clientv3.TxnResponse, i int, deadline string) clockOutcome {
	if i < 0 {
		return clockFine
	}
	kv := kvIn(resp, i)
	if kv == nil {
		return clockMissing
	}
	if string(kv.Value) >= deadline {
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

// advanceClock moves the clock forward to this replica's time, or to the
// newest value it read plus the time elapsed since (by the monotonic
// clock), whichever is later, and measures the clock's lead from the value
// it has then. The second keeps the clock going at the pace of real time
// when the replica whose clock ran fastest goes away: without it the clock
// would stand still until the others' clocks reached it, and late
// transactions would not be caught meanwhile.
func (s *Store) advanceClock(ctx context.Context) error {
	target := s.now()
	s.clockMu.Lock()
	if !s.clockSeenAt.IsZero() {
		if pace := s.clockSeen.Add(time.Since(s.clockSeenAt)); pace.After(target) {
			target = pace
		}
	}
	s.clockMu.Unlock()
	v := clockValue(target)
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
	// Measured after the answer: a lead measured from before the call
	// would be too large by the round trip, and let late writes through
	// for that much longer.
	seenAt, now := time.Now(), s.now()
	kv := kvIn(resp, 1)
	if kv == nil {
		return apierrors.Internal("the cluster clock %s is missing right after it was written", ClockKey)
	}
	ms, err := strconv.ParseInt(string(kv.Value), 10, 64)
	if err != nil {
		return apierrors.Internal("the cluster clock %s holds %q, not Unix milliseconds", ClockKey, kv.Value)
	}
	seen := time.UnixMilli(ms)
	s.clockMu.Lock()
	s.clockSeen, s.clockSeenAt = seen, seenAt
	s.clockMu.Unlock()
	lead := seen.Sub(now)
	if old := time.Duration(s.clockLead.Swap(int64(lead))); (lead - old).Abs() > time.Second {
		s.log.WarnContext(ctx, "the cluster clock's lead over this replica's clock changed: a replica's wall clock runs ahead or jumped",
			"lead", lead.Round(time.Millisecond), "was", old.Round(time.Millisecond))
	}
	return nil
}
