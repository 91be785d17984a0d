package etcdendpoints_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/capstan-dev/capstan/internal/etcdtest"
	"github.com/capstan-dev/capstan/services/apiserver/internal/etcdendpoints"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.IgnoredGoroutines()...) }

// TestTracksReadyMembers starts the client on one member: Track finds the
// others, drops a stopped one and takes it back when it returns.
func TestTracksReadyMembers(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	client := cluster.Client(t)
	client.SetEndpoints(cluster.Member(0).ClientURL)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		etcdendpoints.Track(ctx, client, etcdendpoints.Options{Interval: 50 * time.Millisecond, MemberListInterval: 100 * time.Millisecond})
	}()
	t.Cleanup(func() { cancel(); <-done })

	want := func(urls ...string) {
		t.Helper()
		slices.Sort(urls)
		deadline := time.Now().Add(20 * time.Second)
		for {
			got := slices.Sorted(slices.Values(client.Endpoints()))
			if slices.Equal(got, urls) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("endpoints %v, want %v", got, urls)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	m := func(i int) string { return cluster.Member(i).ClientURL }
	want(m(0), m(1), m(2))
	cluster.Stop(2)
	want(m(0), m(1))
	if err := cluster.Member(2).Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	want(m(0), m(1), m(2))
}
