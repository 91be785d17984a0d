package queue_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/services/scheduler/internal/queue"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start returns a queue on a fake clock whose Run goroutine ends with the test.
func start(t *testing.T) (*queue.Queue, *clocktesting.FakeClock) {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	q := queue.New(queue.Options{Clock: clk})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		q.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	// Run's ticker must exist before the test moves the clock.
	poll.For(t, 10*time.Second, "Run to start its ticker", func(context.Context) error {
		if !clk.HasWaiters() {
			return errors.New("nothing waits on the clock")
		}
		return nil
	})
	return q, clk
}

func pop(t *testing.T, q *queue.Queue) queue.Item {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	item, ok := q.Pop(ctx)
	if !ok {
		t.Fatalf("Pop: nothing active; stats %+v", q.Stats())
	}
	return item
}

// step advances the fake clock and waits until the queue's stats are want:
// Run's ticker fires on its own goroutine.
func step(t *testing.T, q *queue.Queue, clk *clocktesting.FakeClock, d time.Duration, want queue.Stats) {
	t.Helper()
	// Step in ticks, so that Run sees each one whatever the tick interval.
	for end := clk.Now().Add(d); clk.Now().Before(end); {
		clk.Step(50 * time.Millisecond)
	}
	poll.For(t, 10*time.Second, fmt.Sprintf("stats %+v after %v", want, d), func(context.Context) error {
		if got := q.Stats(); got != want {
			clk.Step(0)
			return fmt.Errorf("stats %+v", got)
		}
		return nil
	})
}

func wantStats(t *testing.T, q *queue.Queue, want queue.Stats) {
	t.Helper()
	if got := q.Stats(); got != want {
		t.Fatalf("stats %+v, want %+v", got, want)
	}
}

func TestFIFO(t *testing.T) {
	q, _ := start(t)
	for _, k := range []string{"ns/a", "ns/b", "ns/a", "ns/c"} {
		q.Add(k)
	}
	q.Delete("ns/b")
	wantStats(t, q, queue.Stats{Active: 2})
	for _, want := range []string{"ns/a", "ns/c"} {
		if got := pop(t, q); got.Key != want {
			t.Errorf("Pop = %q, want %q", got.Key, want)
		}
	}
	wantStats(t, q, queue.Stats{InFlight: 2})

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if item, ok := q.Pop(ctx); ok {
		t.Errorf("Pop on an empty queue with a cancelled ctx = %+v", item)
	}
}

func TestBackoffDoubles(t *testing.T) {
	q, clk := start(t)
	q.Add("ns/p")
	for i, wait := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second} {
		item := pop(t, q)
		if item.Attempts != i {
			t.Fatalf("attempt %d: Item.Attempts = %d", i, item.Attempts)
		}
		q.Requeue(item, false)
		step(t, q, clk, wait-100*time.Millisecond, queue.Stats{Backoff: 1})
		step(t, q, clk, 200*time.Millisecond, queue.Stats{Active: 1})
	}
}

func TestUnschedulableWaitsForAChange(t *testing.T) {
	q, clk := start(t)
	q.Add("ns/p")
	q.Requeue(pop(t, q), true)
	step(t, q, clk, 5*time.Second, queue.Stats{Unschedulable: 1})

	// A change after the back-off is over: straight to active.
	q.MoveAll()
	wantStats(t, q, queue.Stats{Active: 1})

	// A change during the back-off: backoff first.
	q.Requeue(pop(t, q), true)
	wantStats(t, q, queue.Stats{Unschedulable: 1})
	q.MoveAll()
	wantStats(t, q, queue.Stats{Backoff: 1})
	step(t, q, clk, 2*time.Second, queue.Stats{Active: 1})

	// An update of the pod itself moves it too.
	q.Requeue(pop(t, q), true)
	step(t, q, clk, 5*time.Second, queue.Stats{Unschedulable: 1})
	q.Update("ns/p")
	wantStats(t, q, queue.Stats{Active: 1})

	// Nothing changes for MaxUnschedulable: tried again anyway.
	q.Requeue(pop(t, q), true)
	step(t, q, clk, queue.DefaultMaxUnschedulable-time.Second, queue.Stats{Unschedulable: 1})
	step(t, q, clk, 2*time.Second, queue.Stats{Active: 1})
}

func TestChangesDuringAnAttempt(t *testing.T) {
	q, clk := start(t)
	q.Add("ns/moved")
	q.Add("ns/updated")
	q.Add("ns/deleted")
	q.Add("ns/bound")
	moved, updated, deleted, bound := pop(t, q), pop(t, q), pop(t, q), pop(t, q)

	q.MoveAll() // the cluster changed while moved was being decided
	q.Requeue(moved, true)
	wantStats(t, q, queue.Stats{Backoff: 1, InFlight: 3})

	q.Update(updated.Key)
	q.Update(updated.Key)
	q.Delete(deleted.Key)
	q.Requeue(deleted, true)
	wantStats(t, q, queue.Stats{Backoff: 1, InFlight: 2})

	// Done after an update during the attempt: looked at again.
	q.Done(updated)
	wantStats(t, q, queue.Stats{Active: 1, Backoff: 1, InFlight: 1})
	if again := pop(t, q); again.Key != updated.Key || again.Attempts != 0 {
		t.Errorf("Pop = %+v, want %s with 0 attempts", again, updated.Key)
	}

	q.Done(bound)
	q.Add(bound.Key) // a stale event of the pod as unbound
	if again := pop(t, q); again.Key != bound.Key {
		t.Errorf("Pop = %+v, want %s", again, bound.Key)
	}
	step(t, q, clk, time.Second, queue.Stats{Active: 1, InFlight: 2})
}
