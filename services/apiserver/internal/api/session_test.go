package api_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// holder is a lease holder's connection to one API replica: closing it
// without a word is what the kernel does when the holder's process dies.
type holder struct {
	conn   *grpc.ClientConn
	stream grpc.BidiStreamingClient[capstanv1.HoldLeaseRequest, capstanv1.HoldLeaseResponse]
	opened *capstanv1.HoldLeaseResponse
}

// openSession opens a HoldLease session of holder at epoch through a
// connection of its own to addr.
func openSession(t *testing.T, addr, holderIdentity string, epoch int64) *holder {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	stream, err := capstanv1.NewLeaseServiceClient(conn).HoldLease(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&capstanv1.HoldLeaseRequest{Namespace: wellknown.SystemNamespace, Name: "ctl", HolderIdentity: holderIdentity, Epoch: epoch}); err != nil {
		t.Fatal(err)
	}
	opened, err := stream.Recv()
	if err != nil {
		t.Fatalf("HoldLease: %v", err)
	}
	return &holder{conn: conn, stream: stream, opened: opened}
}

func getCtl(ctx context.Context, leases capstanv1.LeaseServiceClient) (*capstanv1.Lease, error) {
	resp, err := leases.GetLease(ctx, &capstanv1.GetLeaseRequest{Namespace: wellknown.SystemNamespace, Name: "ctl"})
	return resp.GetLease(), err
}

func waitReleased(t *testing.T, leases capstanv1.LeaseServiceClient, why string) {
	t.Helper()
	poll.For(t, 10*time.Second, "the lease released "+why, func(ctx context.Context) error {
		l, err := getCtl(ctx, leases)
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still held: %v %v", l.GetSpec(), err)
	})
}

func leaseEventReasons(t *testing.T, ctx context.Context, e *env) []string {
	t.Helper()
	resp, err := capstanv1.NewEventServiceClient(e.conns[0]).ListEvents(ctx, &capstanv1.ListEventsRequest{Namespace: wellknown.SystemNamespace})
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, ev := range resp.GetEvents() {
		if ev.GetInvolvedObject().GetKind() == "Lease" && ev.GetInvolvedObject().GetName() == "ctl" {
			reasons = append(reasons, ev.GetReason())
		}
	}
	return reasons
}

// A holder that dies — its connection closes without a word — loses its
// lease at once; one that closes its session releases nothing.
func TestSessionLostReleasesTheLeaseAtOnce(t *testing.T) {
	e := newEnv(t, 2)
	ctx := ctxT(t)
	leases := capstanv1.NewLeaseServiceClient(e.conns[0])
	held := acquire(t, leases, ctx, "a", 60).GetLease()
	epoch := held.GetStatus().GetEpoch()

	h := openSession(t, e.cluster.Addrs()[1], "a", epoch)
	if h.opened.GetReplica() != "apiserver-2" || h.opened.GetSession() == "" {
		t.Fatalf("HoldLease answered %v", h.opened)
	}
	l, err := getCtl(ctx, leases)
	if err != nil || l.GetStatus().GetSessionReplica() != "apiserver-2" {
		t.Fatalf("lease after the session opened: %v, %v; want session_replica apiserver-2", l.GetStatus(), err)
	}
	// A renewal keeps the session's replica.
	if resp, err := leases.RenewLease(ctx, &capstanv1.RenewLeaseRequest{Namespace: wellknown.SystemNamespace, Name: "ctl", HolderIdentity: "a", Epoch: epoch}); err != nil ||
		resp.GetLease().GetStatus().GetSessionReplica() != "apiserver-2" {
		t.Fatalf("renew: %v, %v", resp.GetLease().GetStatus(), err)
	}

	// Closing the session on purpose releases nothing.
	if err := h.stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.stream.Recv(); err == nil {
		t.Fatal("the session stream did not end after CloseSend")
	}
	if _, err := getCtl(ctx, leases); err != nil {
		t.Fatalf("lease after a clean session end: %v", err)
	}

	// The holder dies: its connection closes under the session.
	h = openSession(t, e.cluster.Addrs()[1], "a", epoch)
	h.conn.Close()
	waitReleased(t, leases, "when its holder's connection closed")
	poll.For(t, 10*time.Second, "the session-lost event", func(ctx context.Context) error {
		if reasons := leaseEventReasons(t, ctx, e); !slices.Contains(reasons, "LeaseSessionLost") || !slices.Contains(reasons, "LeaseAcquired") {
			return fmt.Errorf("events %v", reasons)
		}
		return nil
	})
}

// A session the holder has since replaced — it moved its session to
// another replica — releases nothing when it ends.
func TestStaleSessionReleasesNothing(t *testing.T) {
	e := newEnv(t, 2)
	ctx := ctxT(t)
	leases := capstanv1.NewLeaseServiceClient(e.conns[0])
	epoch := acquire(t, leases, ctx, "a", 60).GetLease().GetStatus().GetEpoch()
	old := openSession(t, e.cluster.Addrs()[0], "a", epoch)
	newer := openSession(t, e.cluster.Addrs()[1], "a", epoch)
	old.conn.Close()
	// The old session's end is handled by its replica right away; the
	// lease must still be there once the replica has looked.
	poll.For(t, 10*time.Second, "the old session's end to be handled", func(ctx context.Context) error {
		if _, err := old.stream.Recv(); err == nil {
			return errors.New("the old stream still answers")
		}
		return nil
	})
	if l, err := getCtl(ctx, leases); err != nil || l.GetStatus().GetSessionReplica() != "apiserver-2" {
		t.Fatalf("lease after a stale session ended: %v, %v", l.GetStatus(), err)
	}
	newer.conn.Close()
	waitReleased(t, leases, "when the newest session's connection closed")
}

// A replica that stops (or is killed) with a session open releases
// nothing: its stop is not the holder's death.
func TestReplicaStopReleasesNothing(t *testing.T) {
	e := newEnv(t, 2)
	ctx := ctxT(t)
	leases := capstanv1.NewLeaseServiceClient(e.conns[0])
	epoch := acquire(t, leases, ctx, "a", 60).GetLease().GetStatus().GetEpoch()
	h := openSession(t, e.cluster.Addrs()[1], "a", epoch)
	e.cluster.StopReplica(1)
	if _, err := h.stream.Recv(); err == nil {
		t.Fatal("the session outlived its replica")
	}
	if _, err := getCtl(ctx, leases); err != nil {
		t.Fatalf("lease after its session's replica stopped: %v", err)
	}
}

// A session of a holding that is not the caller's is refused; an expired
// holding is an event when the lease is next acquired.
func TestSessionOfAnotherHoldingIsRefusedAndExpiryIsAnEvent(t *testing.T) {
	e := newEnv(t, 1)
	ctx := ctxT(t)
	leases := capstanv1.NewLeaseServiceClient(e.conns[0])
	epoch := acquire(t, leases, ctx, "a", 2).GetLease().GetStatus().GetEpoch()
	stream, err := leases.HoldLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&capstanv1.HoldLeaseRequest{Namespace: wellknown.SystemNamespace, Name: "ctl", HolderIdentity: "b", Epoch: epoch}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !apierrors.Is(err, apierrors.ReasonLeaseNotHeld) {
		t.Fatalf("a session for another holder: %v, want LEASE_NOT_HELD", err)
	}
	waitReleased(t, leases, "by etcd when its TTL ran out")
	acquire(t, leases, ctx, "b", 60)
	poll.For(t, 10*time.Second, "the expiry event", func(ctx context.Context) error {
		if reasons := leaseEventReasons(t, ctx, e); !slices.Contains(reasons, "LeaseExpired") {
			return fmt.Errorf("events %v", reasons)
		}
		return nil
	})
}
