package etcdtest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/capstan-dev/capstan/internal/etcdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.IgnoredGoroutines()...) }

func TestSingleMemberServes(t *testing.T) {
	c := etcdtest.Start(t, 1)
	client := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	resp, err := client.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("get = %v, %v; want k=v", resp, err)
	}
}

func TestQuorumLossAndRestart(t *testing.T) {
	c := etcdtest.Start(t, 3)
	client := c.Client(t)
	put := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_, err := client.Put(ctx, "k", "v")
		return err
	}
	if err := put(10 * time.Second); err != nil {
		t.Fatalf("put with three members: %v", err)
	}
	c.Stop(1)
	if err := put(10 * time.Second); err != nil {
		t.Fatalf("put with two of three members: %v", err)
	}
	c.Stop(2)
	if err := put(500 * time.Millisecond); err == nil {
		t.Fatal("put with one of three members succeeded")
	}
	if err := c.Member(2).Restart(context.Background()); err != nil {
		t.Fatalf("restart member 2: %v", err)
	}
	// The restarted member needs a moment to rejoin and elect a leader.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := put(2 * time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("put after restart: %v", err)
		}
	}
	if err := c.Member(0).Restart(context.Background()); err == nil || errors.Is(err, context.Canceled) {
		t.Fatalf("restart of a running member = %v, want an error", err)
	}
}

func TestFreePortIsNotRepeated(t *testing.T) {
	seen := map[int]bool{}
	for i := 0; i < 50; i++ {
		p := etcdtest.FreePort(t)
		if seen[p] {
			t.Fatalf("port %d returned twice", p)
		}
		seen[p] = true
	}
}
