package api_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

func acquire(t *testing.T, leases capstanv1.LeaseServiceClient, ctx context.Context, holder string, ttl int32) *capstanv1.AcquireLeaseResponse {
	t.Helper()
	resp, err := leases.AcquireLease(ctx, &capstanv1.AcquireLeaseRequest{
		Namespace: wellknown.SystemNamespace, Name: "ctl", HolderIdentity: holder, LeaseDurationSeconds: ttl,
	})
	if err != nil {
		t.Fatalf("acquire by %s: %v", holder, err)
	}
	return resp
}

func fencedCtx(ctx context.Context, epoch int64) context.Context {
	return metadata.AppendToOutgoingContext(ctx,
		wellknown.MetadataLease, wellknown.SystemNamespace+"/ctl",
		wellknown.MetadataLeaseEpoch, strconv.FormatInt(epoch, 10))
}

func TestLeaseAcquireRenewReleaseAndStandbys(t *testing.T) {
	e := newEnv(t, 2)
	ctx := ctxT(t)
	leases := capstanv1.NewLeaseServiceClient(e.conns[0])
	other := capstanv1.NewLeaseServiceClient(e.conns[1])

	a := acquire(t, leases, ctx, "a", 10)
	if !a.GetAcquired() || a.GetLease().GetStatus().GetEpoch() <= 0 || a.GetLease().GetSpec().GetHolderIdentity() != "a" {
		t.Fatalf("first acquire: %v", a)
	}
	epoch := a.GetLease().GetStatus().GetEpoch()
	b := acquire(t, other, ctx, "b", 10)
	if b.GetAcquired() || b.GetLease().GetSpec().GetHolderIdentity() != "a" || b.GetLease().GetStatus().GetEpoch() != epoch {
		t.Fatalf("second candidate: %v", b)
	}
	st, err := capstanv1.NewClusterServiceClient(e.conns[1]).GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetLeases()) != 1 || st.GetLeases()[0].GetHolderIdentity() != "a" || st.GetLeases()[0].GetEpoch() != epoch ||
		len(st.GetLeases()[0].GetStandbys()) != 1 || st.GetLeases()[0].GetStandbys()[0] != "b" {
		t.Fatalf("cluster status leases: %v", st.GetLeases())
	}
	got, err := other.GetLease(ctx, &capstanv1.GetLeaseRequest{Namespace: wellknown.SystemNamespace, Name: "ctl"})
	if err != nil || got.GetLease().GetStatus().GetEpoch() != epoch {
		t.Fatalf("GetLease: %v %v", got, err)
	}

	// Renew through the other replica; a wrong epoch or identity is LEASE_NOT_HELD.
	if _, err := other.RenewLease(ctx, &capstanv1.RenewLeaseRequest{Namespace: wellknown.SystemNamespace, Name: "ctl", HolderIdentity: "a", Epoch: epoch}); err != nil {
		t.Fatalf("renew: %v", err)
	}
	for _, bad := range []*capstanv1.RenewLeaseRequest{
		{Namespace: wellknown.SystemNamespace, Name: "ctl", HolderIdentity: "a", Epoch: epoch + 1},
		{Namespace: wellknown.SystemNamespace, Name: "ctl", HolderIdentity: "b", Epoch: epoch},
	} {
		if _, err := leases.RenewLease(ctx, bad); !apierrors.Is(err, apierrors.ReasonLeaseNotHeld) {
			t.Fatalf("renew %v: %v, want LEASE_NOT_HELD", bad, err)
		}
	}

	if _, err := leases.ReleaseLease(ctx, &capstanv1.ReleaseLeaseRequest{Namespace: wellknown.SystemNamespace, Name: "ctl", HolderIdentity: "a", Epoch: epoch}); err != nil {
		t.Fatalf("release: %v", err)
	}
	b = acquire(t, other, ctx, "b", 10)
	if !b.GetAcquired() || b.GetLease().GetStatus().GetEpoch() <= epoch || b.GetLease().GetStatus().GetLeaseTransitions() != 1 {
		t.Fatalf("acquire after release: %v (old epoch %d)", b, epoch)
	}

	// Leases are not written through the generic methods.
	_, err = leases.CreateLease(ctx, &capstanv1.CreateLeaseRequest{Lease: &capstanv1.Lease{Metadata: &capstanv1.ObjectMeta{Name: "x"}}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("CreateLease: %v, want FAILED_PRECONDITION", err)
	}
}

func TestLeaseExpiresByEtcdTTL(t *testing.T) {
	e := newEnv(t, 1)
	ctx := ctxT(t)
	leases := capstanv1.NewLeaseServiceClient(e.conns[0])
	a := acquire(t, leases, ctx, "a", 2)
	poll.For(t, 15*time.Second, "the unrenewed lease expires and b acquires it", func(context.Context) error {
		b := acquire(t, leases, ctx, "b", 2)
		if !b.GetAcquired() {
			return fmt.Errorf("held by %s", b.GetLease().GetSpec().GetHolderIdentity())
		}
		if b.GetLease().GetStatus().GetEpoch() <= a.GetLease().GetStatus().GetEpoch() {
			t.Fatalf("epoch did not grow: %d then %d", a.GetLease().GetStatus().GetEpoch(), b.GetLease().GetStatus().GetEpoch())
		}
		return nil
	})
	_, err := leases.RenewLease(ctx, &capstanv1.RenewLeaseRequest{Namespace: wellknown.SystemNamespace, Name: "ctl", HolderIdentity: "a", Epoch: a.GetLease().GetStatus().GetEpoch()})
	if !apierrors.Is(err, apierrors.ReasonLeaseNotHeld) {
		t.Fatalf("renew of an expired holding: %v", err)
	}
}

// TestEveryLeaseReadCarriesItsEpoch: the epoch is not stored in a Lease's
// value, so every way of reading one — Get, List, Watch from now, Watch from
// a version (the renewal's Modified, the release's Deleted) — must set it.
func TestEveryLeaseReadCarriesItsEpoch(t *testing.T) {
	e := newEnv(t, 1)
	ctx := ctxT(t)
	leases := capstanv1.NewLeaseServiceClient(e.conns[0])
	held := acquire(t, leases, ctx, "a", 10).GetLease()
	epoch := held.GetStatus().GetEpoch()
	check := func(what string, l *capstanv1.Lease) {
		t.Helper()
		if got := l.GetStatus().GetEpoch(); got != epoch {
			t.Errorf("%s: epoch %d, want %d", what, got, epoch)
		}
	}
	ref := &capstanv1.GetLeaseRequest{Namespace: wellknown.SystemNamespace, Name: "ctl"}
	got, err := leases.GetLease(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	check("GetLease", got.GetLease())
	list, err := leases.ListLeases(ctx, &capstanv1.ListLeasesRequest{Namespace: wellknown.SystemNamespace})
	if err != nil || len(list.GetLeases()) != 1 {
		t.Fatalf("ListLeases = %v, %v", list, err)
	}
	check("ListLeases", list.GetLeases()[0])

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	now, err := leases.WatchLeases(wctx, &capstanv1.WatchLeasesRequest{Namespace: wellknown.SystemNamespace})
	if err != nil {
		t.Fatal(err)
	}
	since, err := leases.WatchLeases(wctx, &capstanv1.WatchLeasesRequest{Namespace: wellknown.SystemNamespace, ResourceVersion: held.GetMetadata().GetResourceVersion()})
	if err != nil {
		t.Fatal(err)
	}
	next := func(stream capstanv1.LeaseService_WatchLeasesClient) *capstanv1.WatchLeasesResponse {
		t.Helper()
		for {
			ev, err := stream.Recv()
			if err != nil {
				t.Fatalf("watch: %v", err)
			}
			if ev.GetType() != capstanv1.WatchEventType_WATCH_EVENT_TYPE_BOOKMARK {
				return ev
			}
		}
	}
	if ev := next(now); ev.GetType() != capstanv1.WatchEventType_WATCH_EVENT_TYPE_ADDED {
		t.Fatalf("first event of a watch from now: %v", ev)
	} else {
		check("watch from now, ADDED", ev.GetLease())
	}
	renewed, err := leases.RenewLease(ctx, &capstanv1.RenewLeaseRequest{Namespace: wellknown.SystemNamespace, Name: "ctl", HolderIdentity: "a", Epoch: epoch})
	if err != nil {
		t.Fatal(err)
	}
	check("RenewLease", renewed.GetLease())
	if _, err := leases.ReleaseLease(ctx, &capstanv1.ReleaseLeaseRequest{Namespace: wellknown.SystemNamespace, Name: "ctl", HolderIdentity: "a", Epoch: epoch}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []capstanv1.WatchEventType{capstanv1.WatchEventType_WATCH_EVENT_TYPE_MODIFIED, capstanv1.WatchEventType_WATCH_EVENT_TYPE_DELETED} {
		ev := next(since)
		if ev.GetType() != want {
			t.Fatalf("event %v, want %v", ev.GetType(), want)
		}
		check("watch from a version, "+want.String(), ev.GetLease())
	}
}

// TestStaleEpochChangesNothing drives the fence through the API directly:
// a deposed holder's writes, of every kind of write, are refused with
// LEASE_NOT_HELD and leave no trace.
func TestStaleEpochChangesNothing(t *testing.T) {
	e := newEnv(t, 1)
	ctx := ctxT(t)
	leases := capstanv1.NewLeaseServiceClient(e.conns[0])
	pods := e.pods(0)

	old := acquire(t, leases, ctx, "old", 10).GetLease().GetStatus().GetEpoch()
	oldCtx := fencedCtx(ctx, old)
	// While held, fenced writes work.
	created, err := pods.CreatePod(oldCtx, &capstanv1.CreatePodRequest{Pod: testPod("kept")})
	if err != nil {
		t.Fatalf("fenced create with the current epoch: %v", err)
	}
	if _, err := leases.ReleaseLease(ctx, &capstanv1.ReleaseLeaseRequest{Namespace: wellknown.SystemNamespace, Name: "ctl", HolderIdentity: "old", Epoch: old}); err != nil {
		t.Fatal(err)
	}
	current := acquire(t, leases, ctx, "new", 10).GetLease().GetStatus().GetEpoch()

	stale := []struct {
		name string
		call func() error
	}{
		{"create", func() error {
			_, err := pods.CreatePod(oldCtx, &capstanv1.CreatePodRequest{Pod: testPod("ghost")})
			return err
		}},
		{"update", func() error {
			p := created.GetPod()
			p.Metadata.Labels["by"] = "old"
			_, err := pods.UpdatePod(oldCtx, &capstanv1.UpdatePodRequest{Pod: p})
			return err
		}},
		{"update status", func() error {
			p := created.GetPod()
			p.Status.Phase = "Failed"
			_, err := pods.UpdatePodStatus(oldCtx, &capstanv1.UpdatePodStatusRequest{Pod: p})
			return err
		}},
		{"bind", func() error {
			_, err := pods.BindPod(oldCtx, &capstanv1.BindPodRequest{Name: "kept", NodeName: "n1"})
			return err
		}},
		{"delete", func() error { _, err := pods.DeletePod(oldCtx, &capstanv1.DeletePodRequest{Name: "kept"}); return err }},
	}
	for _, s := range stale {
		err := s.call()
		if status.Code(err) != codes.FailedPrecondition || !apierrors.Is(err, apierrors.ReasonLeaseNotHeld) {
			t.Errorf("%s with a stale epoch: %v, want FAILED_PRECONDITION LEASE_NOT_HELD", s.name, err)
		}
	}
	got, err := pods.GetPod(ctx, &capstanv1.GetPodRequest{Name: "kept"})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetPod().GetMetadata().GetResourceVersion() != created.GetPod().GetMetadata().GetResourceVersion() {
		t.Fatalf("a stale write landed: %v", got.GetPod())
	}
	if _, err := pods.GetPod(ctx, &capstanv1.GetPodRequest{Name: "ghost"}); status.Code(err) != codes.NotFound {
		t.Fatalf("a stale create landed: %v", err)
	}
	// The current holder's writes go through.
	if _, err := pods.BindPod(fencedCtx(ctx, current), &capstanv1.BindPodRequest{Name: "kept", NodeName: "n1"}); err != nil {
		t.Fatalf("bind with the current epoch: %v", err)
	}
	// Malformed fencing metadata is refused, not ignored.
	bad := metadata.AppendToOutgoingContext(ctx, wellknown.MetadataLease, "ctl", wellknown.MetadataLeaseEpoch, "x")
	if _, err := pods.DeletePod(bad, &capstanv1.DeletePodRequest{Name: "kept"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("malformed epoch: %v, want INVALID_ARGUMENT", err)
	}
}
