package poll_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/capstan-dev/capstan/internal/poll"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestUntilReturnsOnceTheConditionHolds(t *testing.T) {
	calls := 0
	err := poll.Until(t.Context(), time.Minute, "the third call", func(context.Context) error {
		calls++
		if calls < 3 {
			return errors.New("too early")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("Until: %v after %d calls, want nil after 3", err, calls)
	}
}

func TestUntilNamesWhatItWaitedForAndTheLastAnswer(t *testing.T) {
	err := poll.Until(t.Context(), 3*poll.Interval, "the moon", func(context.Context) error {
		return errors.New("still night")
	})
	if err == nil || !strings.Contains(err.Error(), "the moon") || !strings.Contains(err.Error(), "still night") ||
		!errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Until: %v, want a deadline error naming the moon and the last answer", err)
	}
}

func TestUntilRefusesAWaitWithoutDeadline(t *testing.T) {
	if err := poll.Until(t.Context(), 0, "nothing", poll.True(func() bool { return true })); err == nil {
		t.Fatal("Until with a zero timeout returned nil")
	}
}

func TestUntilEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := poll.Until(ctx, time.Hour, "a cancelled wait", poll.True(func() bool { return false }))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Until: %v, want context.Canceled", err)
	}
}
