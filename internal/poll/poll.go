// Package poll waits for a condition to hold. It is how tests, benchmarks
// and the cluster harness wait for a state: never by sleeping, always by
// asking again until a deadline, and a wait that times out says what it
// waited for and what the condition answered last.
//
// The looping is apimachinery's wait.PollUntilContextTimeout; this package
// adds the deadline every wait must have and the last answer in the error.
//
// Concurrency: the functions call cond from the calling goroutine only.
package poll

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// Interval is how often a condition is asked again.
const Interval = 50 * time.Millisecond

// Condition reports nil once the awaited state holds, and otherwise an
// error that says why not yet; ctx bounds the call and ends with the wait.
type Condition func(ctx context.Context) error

// Until asks cond at once and then every Interval until it returns nil (Until
// returns nil), timeout passes or ctx ends. The error then names what was
// awaited, how long, and cond's last answer, and wraps ctx's error.
func Until(ctx context.Context, timeout time.Duration, what string, cond Condition) error {
	return UntilEvery(ctx, Interval, timeout, what, cond)
}

// UntilEvery is Until asking every interval: for a benchmark, whose figure
// must not carry a polling delay of up to Interval.
func UntilEvery(ctx context.Context, interval, timeout time.Duration, what string, cond Condition) error {
	if timeout <= 0 {
		return fmt.Errorf("poll: waiting for %s: timeout is %v: every wait needs a positive deadline", what, timeout)
	}
	var last error
	err := wait.PollUntilContextTimeout(ctx, interval, timeout, true, func(ctx context.Context) (bool, error) {
		answer := cond(ctx)
		// A condition that calls out with the wait's own context answers
		// the wait's end on its last look; the answer before says more.
		if answer == nil || last == nil || ctx.Err() == nil {
			last = answer
		}
		return answer == nil, nil
	})
	if err == nil {
		return nil
	}
	if last == nil {
		last = errors.New("not asked yet")
	}
	return fmt.Errorf("waited %v for %s: %w (last: %v)", timeout, what, err, last)
}

// T is the part of testing.TB that For needs.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Context() context.Context
}

// For is Until for tests: it fails t if the state does not come within
// timeout. The wait ends early when the test does.
func For(t T, timeout time.Duration, what string, cond Condition) {
	t.Helper()
	if err := Until(t.Context(), timeout, what, cond); err != nil {
		t.Fatalf("%v", err)
	}
}

// True adapts a predicate to a Condition; not holding is reported as
// "not yet".
func True(pred func() bool) Condition {
	return func(context.Context) error {
		if pred() {
			return nil
		}
		return errNotYet
	}
}

var errNotYet = errors.New("not yet")

// Reported adapts a check that says whether the state holds and, when it
// does not, what it saw instead.
func Reported(check func() (ok bool, saw string)) Condition {
	return func(context.Context) error {
		if ok, saw := check(); !ok {
			return errors.New(saw)
		}
		return nil
	}
}
