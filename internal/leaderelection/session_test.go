package leaderelection_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

// The leader keeps a session with one API replica. When that replica stops,
// the session is opened on another one and the holding is untouched: an API
// fault is not a leadership change.
func TestSessionMovesWhenItsReplicaStops(t *testing.T) {
	api := apiservertest.Start(t, 3)
	ctx := testContext(t)
	observer := newClient(t, api.Addrs())
	a := startCandidate(t, newClient(t, api.Addrs()), "a", nil, nil)
	waitForLeader(t, a)
	epoch := a.elector.Epoch()

	var first string
	poll.For(t, 30*time.Second, "the leader's session", func(context.Context) error {
		first = getLease(t, ctx, observer).GetStatus().GetSessionReplica()
		if first == "" {
			return fmt.Errorf("no session recorded")
		}
		return nil
	})
	i, err := strconv.Atoi(strings.TrimPrefix(first, "apiserver-"))
	if err != nil {
		t.Fatalf("session replica %q is not one of the test's", first)
	}
	api.StopReplica(i - 1)

	poll.For(t, 30*time.Second, "the session on another replica", func(context.Context) error {
		l := getLease(t, ctx, observer)
		if got := l.GetStatus().GetEpoch(); got != epoch {
			t.Fatalf("the lease changed hands (epoch %d, was %d) when the session's replica stopped", got, epoch)
		}
		if got := l.GetStatus().GetSessionReplica(); got == "" || got == first {
			return fmt.Errorf("session replica %q", got)
		}
		return nil
	})
	if !a.elector.IsLeader() || a.elector.Epoch() != epoch {
		t.Fatalf("leader %v at epoch %d after its session moved; want still leading at %d", a.elector.IsLeader(), a.elector.Epoch(), epoch)
	}
}

// A holder whose connections break without a word (here: its client is
// closed under it, as the kernel closes a killed process's sockets) loses
// the lease at once to a standby, long before the TTL could run out.
func TestBrokenSessionHandsOverBeforeTheTTL(t *testing.T) {
	api := apiservertest.Start(t, 2)
	ctx := testContext(t)
	const longTTL = 60 * time.Second
	leaderClient := newClient(t, api.Addrs())
	a := startCandidateTTL(t, leaderClient, "a", longTTL)
	waitForLeader(t, a)
	poll.For(t, 30*time.Second, "the leader's session", func(context.Context) error {
		if getLease(t, ctx, newClient(t, api.Addrs())).GetStatus().GetSessionReplica() == "" {
			return fmt.Errorf("no session recorded")
		}
		return nil
	})
	b := startCandidateTTL(t, newClient(t, api.Addrs()), "b", longTTL)

	_ = leaderClient.Close()
	// Far less than the TTL: only the released session can hand over.
	poll.For(t, 20*time.Second, "the standby to lead", poll.True(b.elector.IsLeader))
	a.stop()
}
