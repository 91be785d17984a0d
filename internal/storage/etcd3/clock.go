package etcd3

import (
	"context"
	"fmt"
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
// A transaction etcd applies more than about ClockPeriod (plus the clock
// difference between replicas) after its deadline finds the clock past it
// and writes nothing. The clock is etcd's own order of events, so it holds
// however long the member was frozen.
const (
	// ClockKey holds the newest wall-clock time an API replica wrote, in
	// Unix milliseconds, zero-padded to clockDigits digits so that etcd's
	// byte-wise comparison of values is numeric.
	ClockKey = "/capstan-internal/clock"
	// ClockPeriod is how often each API replica writes the clock.
	ClockPeriod = 250 * time.Millisecond

	clockDigits = 16
)

func clockValue(t time.Time) string { return fmt.Sprintf("%0*d", clockDigits, t.UnixMilli()) }

// clockCompare is the condition a write with ctx's deadline adds, if ctx
// has one: the cluster clock has not reached it. It fails when the clock
// key is missing too (etcd compares no value with a key that does not
// exist); the write then starts the clock and tries again (clockStopped).
func clockCompare(ctx context.Context) (clientv3.Cmp, bool) {
	d, ok := ctx.Deadline()
	if !ok {
		return clientv3.Cmp{}, false
	}
	return clientv3.Compare(clientv3.Value(ClockKey), "<", clockValue(d)), true
}

// clockOutcome says why a failed write's clock condition failed, from the
// clock read in its Else branch (at index i; i < 0: the write had none).
type clockOutcome int

const (
	clockFine clockOutcome = iota
	clockMissing
	clockPassed
)

func clockIn(ctx context.Context, resp *clientv3.TxnResponse, i int) clockOutcome {
	if i < 0 {
		return clockFine
	}
	kv := kvIn(resp, i)
	if kv == nil {
		return clockMissing
	}
	if d, ok := ctx.Deadline(); ok && string(kv.Value) >= clockValue(d) {
		return clockPassed
	}
	return clockFine
}

// lateWrite is the error of a write etcd applied after its deadline.
func lateWrite(ctx context.Context) error {
	d, _ := ctx.Deadline()
	return apierrors.DeadlinePassed("when etcd applied this write (it reached etcd late): nothing was written", d)
}

// TickClock writes this replica's wall clock to ClockKey every ClockPeriod
// until ctx ends, only ever moving it forward. Every API replica runs it.
func (s *Store) TickClock(ctx context.Context) {
	ticker := time.NewTicker(ClockPeriod)
	defer ticker.Stop()
	for {
		callCtx, cancel := context.WithTimeout(ctx, 2*ClockPeriod)
		err := s.advanceClock(callCtx, time.Now())
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

// advanceClock sets the clock to now if it is behind, or missing.
func (s *Store) advanceClock(ctx context.Context, now time.Time) error {
	v := clockValue(now)
	put := clientv3.OpPut(ClockKey, v)
	_, err := s.client.Txn(withLeader(ctx)).
		If(clientv3.Compare(clientv3.CreateRevision(ClockKey), "=", 0)).
		Then(put).
		Else(clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(ClockKey), "<", v)}, []clientv3.Op{put}, nil)).
		Commit()
	if err != nil {
		return statusOf(err)
	}
	return nil
}

// startClock is what a write does when it finds the clock missing (a new
// cluster whose replicas have not ticked yet, or someone deleted it): it
// writes it once and tries again.
func (s *Store) startClock(ctx context.Context) error {
	s.log.DebugContext(ctx, "the cluster clock is missing: starting it")
	return s.advanceClock(ctx, time.Now())
}
