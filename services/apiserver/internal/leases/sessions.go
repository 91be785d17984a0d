package leases

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Sessions (LeaseService/HoldLease, ADR 0006).
//
// A holder keeps a stream open to one API replica for as long as it holds
// the lease. Opening it records the session's id under SessionPrefix (a key
// attached to the holding's etcd lease, so it goes with the holding) and the
// replica in the Lease's status.session_replica. When the stream ends:
//
//   - the holder closed its side (io.EOF): it ends the session on purpose
//     (it moves it, or gives the lease up with ReleaseLease): nothing;
//   - this replica is stopping, or was frozen while it held the session:
//     whatever it saw of the holder is not the holder's death: nothing;
//   - otherwise the holder's connection broke — its process died and the
//     kernel closed its sockets, or it gave the stream up without a word —
//     and the holding is released at once, in one transaction conditional on
//     the epoch and on this session still being the holding's newest. A
//     holder that is alive and moved its session elsewhere has a newer
//     session, so a stale end releases nothing.
//
// A paused or cut-off holder keeps its connection open as far as this
// replica can tell until gRPC's keepalive gives up on it (40 s): by then
// the lease's TTL has long ended the holding, and the release, conditional
// on the epoch, finds nothing to release.

// SessionPrefix is the prefix of the keys that hold each holding's newest
// session id: SessionPrefix/<namespace>/<name>.
const SessionPrefix = "/capstan-internal/lease-sessions/"

// sessionOpenTimeout bounds recording a session.
const sessionOpenTimeout = 5 * time.Second

// closeAfterCancel is how long a cancelled session's handler waits for the
// holder's close that may precede the cancellation.
const closeAfterCancel = 200 * time.Millisecond

// frozenWindow: a session found ended within this long after this replica
// noticed it had been frozen, or while it is only just running again, says
// nothing about its holder — the holder's client may have closed the
// connection to the frozen replica (its keep-alive gave up), and the
// replica, running again, reads that close within milliseconds, about when
// its pause watch notices the freeze (within 100 ms). A session whose
// holder dies later is released as usual.
const frozenWindow = 500 * time.Millisecond

// releaseOnLossTimeout bounds the release of a holding whose session was lost.
const releaseOnLossTimeout = 5 * time.Second

func (r ref) sessionKey() string { return SessionPrefix + r.namespace + "/" + r.name }

// Hold serves LeaseService/HoldLease on ss. See the section above.
func (s *Service) Hold(ss grpc.ServerStream) error {
	ctx := ss.Context()
	var req capstanv1.HoldLeaseRequest
	if err := ss.RecvMsg(&req); err != nil {
		if errors.Is(err, io.EOF) {
			return apierrors.Invalid("holder_identity", "HoldLease needs its request before the stream is closed")
		}
		return err
	}
	r, err := s.checkRef(req.GetNamespace(), req.GetName(), req.GetHolderIdentity())
	if err != nil {
		return err
	}
	openCtx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), sessionOpenTimeout)
	session, err := s.openSession(openCtx, r, req.GetEpoch())
	cancel()
	if err != nil {
		return err
	}
	log := s.log.With("lease", r.namespace+"/"+r.name, "holder", r.holder, "epoch", req.GetEpoch(), "session", session)
	log.Debug("lease session opened")
	if err := ss.SendMsg(&capstanv1.HoldLeaseResponse{Session: session, Replica: s.opts.Replica}); err != nil {
		return err
	}

	// Wait for the holder's side to end, or the stream's context to.
	ended := make(chan error, 1)
	go func() {
		var next capstanv1.HoldLeaseRequest
		for {
			if err := ss.RecvMsg(&next); err != nil {
				ended <- err
				return
			}
		}
	}()
	var why error
	// Whether this replica was frozen just before it saw the session end is
	// judged the moment it sees that, before anything else waits.
	var frozen bool
	select {
	case why = <-ended:
		frozen = s.opts.FrozenWithin(frozenWindow)
	case <-ctx.Done():
		frozen = s.opts.FrozenWithin(frozenWindow)
		// The stream was cancelled, or this replica is stopping. A holder
		// that closed its side just before cancelling (it gave up waiting
		// for this replica) has its close queued first: look for it.
		t := time.NewTimer(closeAfterCancel)
		select {
		case why = <-ended:
		case <-t.C:
			why = ctx.Err()
		}
		t.Stop()
	}
	switch {
	case errors.Is(why, io.EOF):
		log.Debug("lease session closed by its holder")
		return nil
	case s.opts.Stopping():
		return apierrors.ShuttingDown()
	case frozen || s.opts.FrozenWithin(frozenWindow):
		log.Warn("this replica was frozen just before the lease session ended: not taking the session's end for the holder's death")
		return apierrors.Paused(0)
	}
	releaseCtx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.WithoutCancel(ctx)), releaseOnLossTimeout)
	defer cancel()
	released, err := s.releaseLostSession(releaseCtx, r, req.GetEpoch(), session)
	switch {
	case err != nil:
		log.Warn("the holder's session ended, but releasing the lease failed; it expires with its TTL", "why", why, "error", err)
	case released:
		log.Info("lease released: its holder's session ended (the holder died)", "why", why)
	default:
		log.Debug("a lease session ended after the holding moved on", "why", why)
	}
	return nil
}

// openSession records a new session of the holding at epoch and returns its
// id: the session key, and this replica in the Lease's status.
func (s *Service) openSession(ctx context.Context, r ref, epoch int64) (string, error) {
	session := uuid.NewString()
	for attempt := 1; ; attempt++ {
		kv, held, err := s.held(ctx, r, epoch)
		if err != nil {
			return "", err
		}
		held.Status.SessionReplica = s.opts.Replica
		data, err := proto.Marshal(held)
		if err != nil {
			return "", apierrors.Internal("encode lease: %v", err)
		}
		resp, err := s.client.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(r.key()), "=", epoch),
				clientv3.Compare(clientv3.ModRevision(r.key()), "=", kv.ModRevision)).
			Then(clientv3.OpPut(r.sessionKey(), session, clientv3.WithLease(clientv3.LeaseID(kv.Lease))),
				clientv3.OpPut(r.key(), string(data), clientv3.WithIgnoreLease())).
			Commit()
		if err != nil {
			return "", storageError(err)
		}
		if resp.Succeeded {
			return session, nil
		}
		if attempt == maxRaceAttempts {
			return "", apierrors.Conflict("Lease", r.namespace, r.name, "the lease kept changing while the session was recorded")
		}
	}
}

// releaseLostSession releases the holding at epoch if session is still its
// newest; released reports whether it did.
func (s *Service) releaseLostSession(ctx context.Context, r ref, epoch int64, session string) (released bool, err error) {
	kv, held, err := s.held(ctx, r, epoch)
	if apierrors.Is(err, apierrors.ReasonLeaseNotHeld) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	ended, err := s.endedHistory(ctx, r, endedSessionLost)
	if err != nil {
		return false, err
	}
	resp, err := s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(r.key()), "=", epoch),
			clientv3.Compare(clientv3.Value(r.sessionKey()), "=", session)).
		Then(clientv3.OpDelete(r.key()), clientv3.OpDelete(r.sessionKey()), ended).
		Commit()
	if err != nil {
		return false, storageError(err)
	}
	if !resp.Succeeded {
		return false, nil
	}
	s.revoke(clientv3.LeaseID(kv.Lease))
	s.event(ctx, held, wellknown.EventWarning, ReasonSessionLost,
		fmt.Sprintf("%s's session on %s ended without a word (the holder died): released at epoch %d", r.holder, s.opts.Replica, epoch))
	return true, nil
}

// maxRaceAttempts bounds the retries of a read-modify-write of a Lease that
// lost a race with another (a renewal).
const maxRaceAttempts = 5

// Reasons of the events of lease transitions.
const (
	ReasonAcquired    = "LeaseAcquired"
	ReasonReleased    = "LeaseReleased"
	ReasonExpired     = "LeaseExpired"
	ReasonSessionLost = "LeaseSessionLost"
)

// How a holding ended, recorded in its history (historyEnded).
const (
	endedReleased    = "released"
	endedSessionLost = "session-lost"
)

// historyEnded is the annotation of a lease's history that says how its
// last holding ended; none means it has not ended, or expired.
const historyEnded = "capstan.dev/ended"

// endedHistory returns the put that records, in the lease's history, that
// its current holding ended as how.
func (s *Service) endedHistory(ctx context.Context, r ref, how string) (clientv3.Op, error) {
	history, _, err := s.history(ctx, r)
	if err != nil {
		return clientv3.Op{}, err
	}
	if history.Metadata == nil {
		history.Metadata = &capstanv1.ObjectMeta{}
	}
	if history.Metadata.Annotations == nil {
		history.Metadata.Annotations = map[string]string{}
	}
	history.Metadata.Annotations[historyEnded] = how
	data, err := proto.Marshal(history)
	if err != nil {
		return clientv3.Op{}, apierrors.Internal("encode lease history: %v", err)
	}
	return clientv3.OpPut(r.historyKey(), string(data)), nil
}

// event records an event about lease, if the service has a recorder.
func (s *Service) event(ctx context.Context, lease *capstanv1.Lease, eventType, reason, message string) {
	if s.opts.Events != nil {
		s.opts.Events.Eventf(ctx, lease, eventType, reason, "%s", message)
	}
}
