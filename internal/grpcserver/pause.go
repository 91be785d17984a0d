package grpcserver

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// pauseWatch notices that this process was frozen — SIGSTOP, `docker
// pause`, a VM that was suspended — by its monotonic clock jumping between
// two ticks, and then cancels every unary call it was holding: a call read
// before the freeze may be one its caller gave up on long ago, and whatever
// the handler read before the freeze (the object it is about to update) is
// stale. The caller, if it is still there, retries elsewhere with the same
// request id. Calls read after the freeze are judged by their deadline (see
// deadlineCapInterceptor).
//
// A freeze is seen only once the process runs again, and its goroutines
// resume in no particular order: a handler may commit before the watch
// ticks. The deadline checked just before every etcd transaction (storage)
// and the request record in it are what make a late write impossible or
// harmless; the watch drops what can still be dropped.
type pauseWatch struct {
	interval  time.Duration // how often the clock is looked at
	threshold time.Duration // a gap longer than this is a freeze
	logger    *slog.Logger

	mu    sync.Mutex
	calls map[*heldCall]struct{}
	// lastNoticed is when the watch last noticed a freeze (zero: never).
	lastNoticed time.Time
	// lastLook is when the watch last looked at the clock (zero: it is not
	// running).
	lastLook time.Time
}

type heldCall struct{ cancel context.CancelCauseFunc }

// pausedError is the cause of a call cancelled by the watch.
type pausedError struct{ pause time.Duration }

func (e pausedError) Error() string {
	return fmt.Sprintf("this replica was frozen for %v while it held the call", e.pause.Round(time.Millisecond))
}

func newPauseWatch(interval, threshold time.Duration, logger *slog.Logger) *pauseWatch {
	return &pauseWatch{interval: interval, threshold: threshold, logger: logger, calls: map[*heldCall]struct{}{}}
}

// admit registers a call; release must be called when it ends.
func (w *pauseWatch) admit(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	c := &heldCall{cancel: cancel}
	w.mu.Lock()
	w.calls[c] = struct{}{}
	w.mu.Unlock()
	return ctx, func() {
		w.mu.Lock()
		delete(w.calls, c)
		w.mu.Unlock()
		cancel(nil)
	}
}

// run looks at the monotonic clock every interval until ctx ends; since
// returns the time elapsed since a reading (time.Since, injected by tests).
func (w *pauseWatch) run(ctx context.Context, since func(time.Time) time.Duration) {
	ticker := time.NewTicker(w.interval)
	defer ticker.Stop()
	last := time.Now()
	w.looked(last)
	defer w.looked(time.Time{})
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		gap := since(last)
		last = time.Now()
		if gap > w.threshold {
			w.frozen(gap)
		}
		w.looked(last)
	}
}

// looked records when the watch last looked at the clock.
func (w *pauseWatch) looked(t time.Time) {
	w.mu.Lock()
	w.lastLook = t
	w.mu.Unlock()
}

// frozen cancels every call held now: all were read before the freeze was
// noticed.
func (w *pauseWatch) frozen(gap time.Duration) {
	w.mu.Lock()
	w.lastNoticed = time.Now()
	held := make([]*heldCall, 0, len(w.calls))
	for c := range w.calls {
		held = append(held, c)
	}
	w.mu.Unlock()
	w.logger.Warn("this replica was frozen: dropping the calls it held", "pause", gap.Round(time.Millisecond), "calls", len(held))
	for _, c := range held {
		c.cancel(pausedError{pause: gap})
	}
}

// frozenWithin reports whether, as of now, the process was frozen within
// the last window: a freeze was noticed no longer ago than that, or one is
// ending right now — the watch has not looked at the clock for longer than
// the threshold, so the process is only just running again and the watch
// will notice the freeze at its next look.
func (w *pauseWatch) frozenWithin(now time.Time, window time.Duration) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.lastNoticed.IsZero() && now.Sub(w.lastNoticed) <= window {
		return true
	}
	return !w.lastLook.IsZero() && now.Sub(w.lastLook) > w.threshold
}
