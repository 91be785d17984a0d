// Package leases serves LeaseService's own methods — AcquireLease,
// RenewLease, ReleaseLease — directly on etcd, because a Lease is more than
// a stored object: its key is attached to an etcd lease, so expiry is etcd's
// decision and no wall clock is trusted, and its key's create revision is the
// holding's epoch, the fencing token that every fenced write is checked
// against in its own transaction (see registry and storage.Fence).
//
// The epoch is not stored in the Lease's value: like resource_version it is
// a revision of the key, set on every read. This package is the one place
// that knows it: its own answers set it, and StampEpoch sets it on the
// objects the storage layer returns (the API server hands it to the store as
// etcd3.Options.StampCreateRevision).
//
// Keys:
//
//	/capstan/leases/<ns>/<name>                        the Lease (attached to an etcd lease)
//	/capstan-internal/lease-history/<ns>/<name>        transitions, last holder, how its holding ended (no TTL)
//	/capstan-internal/lease-candidates/<ns>/<name>/<id> standbys (TTL: two lease durations)
//	/capstan-internal/lease-sessions/<ns>/<name>       the holding's newest session (with the holding)
//
// Every transition is an Event on the Lease (reasons LeaseAcquired,
// LeaseReleased, LeaseExpired, LeaseSessionLost), recorded by the replica
// that saw it: an expiry, which etcd decides alone, is recorded by the
// replica that serves the next acquisition.
//
// A Service is safe for concurrent use; it keeps no state of its own.
package leases

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/events"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/storage"
	"github.com/capstan-dev/capstan/internal/storage/etcd3"
	"github.com/capstan-dev/capstan/internal/validation"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// MinDurationSeconds is the shortest lease: etcd's minimum TTL with its
// default tick is about 2 s.
const MinDurationSeconds = 2

// MaxDurationSeconds bounds a lease's duration (an hour).
const MaxDurationSeconds = 3600

// Key prefixes of the bookkeeping next to each Lease.
const (
	HistoryPrefix   = "/capstan-internal/lease-history/"
	CandidatePrefix = "/capstan-internal/lease-candidates/"
)

// CandidateKeyPrefix is the prefix of the standbys of one lease.
func CandidateKeyPrefix(namespace, name string) string {
	return CandidatePrefix + namespace + "/" + name + "/"
}

var leaseKind = resource.MustLookup("Lease")

// Options configure a Service; the zero value is usable.
type Options struct {
	// Logger; default discard.
	Logger *slog.Logger
	// Replica names this API replica in the sessions it holds.
	Replica string
	// Events, if set, records the lease transitions this replica makes.
	Events *events.Recorder
	// Stopping reports whether this replica is stopping: a session that
	// ends then was ended by the replica, not by its holder. Default: never.
	Stopping func() bool
	// FrozenWithin reports whether this replica was frozen within the
	// last window (or is only just running again): a session found ended
	// right after a freeze may have been given up by a holder that is
	// alive. Default: never.
	FrozenWithin func(window time.Duration) bool
}

// Service implements the lease methods of LeaseService.
type Service struct {
	client *clientv3.Client
	log    *slog.Logger
	now    func() time.Time
	opts   Options
}

// New returns a Service over client.
func New(client *clientv3.Client, opts Options) *Service {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Stopping == nil {
		opts.Stopping = func() bool { return false }
	}
	if opts.FrozenWithin == nil {
		opts.FrozenWithin = func(time.Duration) bool { return false }
	}
	return &Service{client: client, log: opts.Logger, now: time.Now, opts: opts}
}

type ref struct{ namespace, name, holder string }

func (s *Service) checkRef(namespace, name, holder string) (ref, error) {
	r := ref{namespace: leaseKind.Namespace(namespace), name: name, holder: holder}
	if err := validation.Namespace(resource.FieldNamespace, namespace); err != nil {
		return r, err
	}
	if err := validation.Name(leaseKind, resource.FieldName, name); err != nil {
		return r, err
	}
	if holder == "" || len(holder) > 253 {
		return r, apierrors.Invalid("holder_identity", "required, at most 253 characters")
	}
	return r, nil
}

func (r ref) key() string        { return leaseKind.Key(r.namespace, r.name) }
func (r ref) historyKey() string { return HistoryPrefix + r.namespace + "/" + r.name }
func (r ref) candidateKey() string {
	return CandidateKeyPrefix(r.namespace, r.name) + r.holder
}

// Acquire takes the lease if its key is absent.
func (s *Service) Acquire(ctx context.Context, req *capstanv1.AcquireLeaseRequest) (*capstanv1.AcquireLeaseResponse, error) {
	r, err := s.checkRef(req.GetNamespace(), req.GetName(), req.GetHolderIdentity())
	if err != nil {
		return nil, err
	}
	ttl := req.GetLeaseDurationSeconds()
	if ttl < MinDurationSeconds || ttl > MaxDurationSeconds {
		return nil, apierrors.Invalid("lease_duration_seconds", fmt.Sprintf("must be between %d and %d", MinDurationSeconds, MaxDurationSeconds))
	}
	ctx = clientv3.WithRequireLeader(ctx)

	// Fast path: held by someone: no etcd lease is granted for nothing.
	if held, err := s.current(ctx, r); err != nil {
		return nil, err
	} else if held != nil {
		return s.notAcquired(ctx, r, held, ttl)
	}

	history, historyRev, err := s.history(ctx, r)
	if err != nil {
		return nil, err
	}
	grant, err := s.client.Grant(ctx, int64(ttl))
	if err != nil {
		return nil, storageError(err)
	}
	now := timestamppb.New(s.now())
	transitions := history.GetStatus().GetLeaseTransitions()
	grantTerm := grant.ResponseHeader.GetRaftTerm()
	if prev := history.GetSpec().GetHolderIdentity(); prev != "" && prev != r.holder {
		transitions++
	}
	lease := &capstanv1.Lease{
		Metadata: &capstanv1.ObjectMeta{Name: r.name, Namespace: r.namespace, Uid: uuid.NewString(), CreateTime: now, Generation: 1},
		Spec:     &capstanv1.LeaseSpec{HolderIdentity: r.holder, LeaseDurationSeconds: ttl},
		Status:   &capstanv1.LeaseStatus{AcquireTime: now, RenewTime: now, LeaseTransitions: transitions, EtcdLeaseTerm: grantTerm},
	}
	data, err := proto.Marshal(lease)
	if err != nil {
		return nil, apierrors.Internal("encode lease: %v", err)
	}
	historyData, err := proto.Marshal(&capstanv1.Lease{
		Spec:   &capstanv1.LeaseSpec{HolderIdentity: r.holder},
		Status: &capstanv1.LeaseStatus{LeaseTransitions: transitions},
	}) // no "ended" yet: this holding has just begun
	if err != nil {
		return nil, apierrors.Internal("encode lease history: %v", err)
	}
	resp, err := s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(r.key()), "=", 0),
			clientv3.Compare(clientv3.ModRevision(r.historyKey()), "=", historyRev)).
		Then(clientv3.OpPut(r.key(), string(data), clientv3.WithLease(grant.ID)),
			clientv3.OpPut(r.historyKey(), string(historyData)),
			clientv3.OpDelete(r.candidateKey())).
		Else(clientv3.OpGet(r.key())).
		Commit()
	if err != nil {
		s.revoke(grant.ID)
		return nil, storageError(err)
	}
	if !resp.Succeeded {
		s.revoke(grant.ID)
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			held, err := decodeLease(kvs[0])
			if err != nil {
				return nil, err
			}
			return s.notAcquired(ctx, r, held, ttl)
		}
		// Only the history moved: another acquisition came and went. Ask
		// the caller to try again rather than loop here.
		return nil, apierrors.Conflict("Lease", r.namespace, r.name, "the lease changed hands during the acquisition")
	}
	// This transaction created the key: both revisions are its own.
	lease.Metadata.ResourceVersion = resp.Header.Revision
	StampEpoch(lease, resp.Header.Revision)
	s.log.Info("lease acquired", "lease", r.namespace+"/"+r.name, "holder", r.holder, "epoch", lease.Status.Epoch, "ttl-seconds", ttl)
	if prev := history.GetSpec().GetHolderIdentity(); prev != "" && history.GetMetadata().GetAnnotations()[historyEnded] == "" {
		// The last holding ended neither by a release nor by a lost
		// session: etcd expired it.
		s.event(ctx, lease, wellknown.EventWarning, ReasonExpired,
			fmt.Sprintf("the holding of %s expired: it was not renewed within its duration", prev))
	}
	s.event(ctx, lease, wellknown.EventNormal, ReasonAcquired, fmt.Sprintf("%s acquired the lease at epoch %d", r.holder, lease.Status.Epoch))
	return &capstanv1.AcquireLeaseResponse{Acquired: true, Lease: lease}, nil
}

// notAcquired records the caller as a standby and answers with the holder.
func (s *Service) notAcquired(ctx context.Context, r ref, held *capstanv1.Lease, ttl int32) (*capstanv1.AcquireLeaseResponse, error) {
	if held.GetSpec().GetHolderIdentity() != r.holder {
		if grant, err := s.client.Grant(ctx, int64(2*ttl)); err == nil {
			if _, err := s.client.Put(ctx, r.candidateKey(), r.holder, clientv3.WithLease(grant.ID)); err != nil {
				s.log.Debug("cannot record a standby", "lease", r.namespace+"/"+r.name, "holder", r.holder, "error", err)
			}
		}
	}
	return &capstanv1.AcquireLeaseResponse{Acquired: false, Lease: held}, nil
}

// Renew extends the holding's etcd lease and records the renewal. The
// record is a read-modify-write of the Lease conditional on its version, so
// that it never writes over what a session recorded meanwhile.
func (s *Service) Renew(ctx context.Context, req *capstanv1.RenewLeaseRequest) (*capstanv1.RenewLeaseResponse, error) {
	r, err := s.checkRef(req.GetNamespace(), req.GetName(), req.GetHolderIdentity())
	if err != nil {
		return nil, err
	}
	ctx = clientv3.WithRequireLeader(ctx)
	kv, held, term, err := s.heldAtTerm(ctx, r, req.GetEpoch())
	if err != nil {
		return nil, err
	}
	if term > held.GetStatus().GetEtcdLeaseTerm() {
		return s.renewOnFreshLease(ctx, r, req.GetEpoch())
	}
	if _, err := s.client.KeepAliveOnce(ctx, clientv3.LeaseID(kv.Lease)); err != nil {
		if isLeaseGone(err) {
			return nil, apierrors.LeaseNotHeld(r.namespace, r.name, req.GetEpoch())
		}
		return nil, storageError(err)
	}
	for attempt := 1; ; attempt++ {
		held.Status.RenewTime = timestamppb.New(s.now())
		data, err := proto.Marshal(held)
		if err != nil {
			return nil, apierrors.Internal("encode lease: %v", err)
		}
		resp, err := s.client.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(r.key()), "=", req.GetEpoch()),
				clientv3.Compare(clientv3.ModRevision(r.key()), "=", kv.ModRevision)).
			Then(clientv3.OpPut(r.key(), string(data), clientv3.WithIgnoreLease())).
			Commit()
		if err != nil {
			return nil, storageError(err)
		}
		if resp.Succeeded {
			held.Metadata.ResourceVersion = resp.Header.Revision
			return &capstanv1.RenewLeaseResponse{Lease: held}, nil
		}
		if attempt == maxRaceAttempts {
			return nil, apierrors.Conflict("Lease", r.namespace, r.name, "the lease kept changing while its renewal was recorded")
		}
		// A session was recorded (or another renewal) since the read.
		if kv, held, err = s.held(ctx, r, req.GetEpoch()); err != nil {
			return nil, err
		}
	}
}

// Release deletes the holding's key and revokes its etcd lease.
func (s *Service) Release(ctx context.Context, req *capstanv1.ReleaseLeaseRequest) (*capstanv1.ReleaseLeaseResponse, error) {
	r, err := s.checkRef(req.GetNamespace(), req.GetName(), req.GetHolderIdentity())
	if err != nil {
		return nil, err
	}
	ctx = clientv3.WithRequireLeader(ctx)
	kv, held, err := s.held(ctx, r, req.GetEpoch())
	if err != nil {
		return nil, err
	}
	ended, err := s.endedHistory(ctx, r, endedReleased)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(r.key()), "=", req.GetEpoch())).
		Then(clientv3.OpDelete(r.key()), clientv3.OpDelete(r.sessionKey()), ended).
		Commit()
	if err != nil {
		return nil, storageError(err)
	}
	if !resp.Succeeded {
		return nil, apierrors.LeaseNotHeld(r.namespace, r.name, req.GetEpoch())
	}
	s.revoke(clientv3.LeaseID(kv.Lease))
	s.log.Info("lease released", "lease", r.namespace+"/"+r.name, "holder", r.holder, "epoch", req.GetEpoch())
	s.event(ctx, held, wellknown.EventNormal, ReasonReleased, fmt.Sprintf("%s released the lease at epoch %d", r.holder, req.GetEpoch()))
	return &capstanv1.ReleaseLeaseResponse{}, nil
}

// held reads the lease and checks that holder holds it at epoch.
func (s *Service) held(ctx context.Context, r ref, epoch int64) (*mvccpb.KeyValue, *capstanv1.Lease, error) {
	kv, lease, _, err := s.heldAtTerm(ctx, r, epoch)
	return kv, lease, err
}

// heldAtTerm is held, with the raft term of the etcd member that answered.
func (s *Service) heldAtTerm(ctx context.Context, r ref, epoch int64) (*mvccpb.KeyValue, *capstanv1.Lease, uint64, error) {
	resp, err := s.client.Get(ctx, r.key())
	if err != nil {
		return nil, nil, 0, storageError(err)
	}
	lease, err := s.holding(r, epoch, resp.Kvs)
	if err != nil {
		return nil, nil, 0, err
	}
	return resp.Kvs[0], lease, resp.Header.GetRaftTerm(), nil
}

// holding decodes the holding at epoch from the lease key's read.
func (s *Service) holding(r ref, epoch int64, kvs []*mvccpb.KeyValue) (*capstanv1.Lease, error) {
	if len(kvs) == 0 || kvs[0].CreateRevision != epoch {
		return nil, apierrors.LeaseNotHeld(r.namespace, r.name, epoch)
	}
	lease, err := decodeLease(kvs[0])
	if err != nil {
		return nil, err
	}
	if lease.GetSpec().GetHolderIdentity() != r.holder {
		return nil, apierrors.LeaseNotHeld(r.namespace, r.name, epoch)
	}
	return lease, nil
}

// heldWithSession is held, with the session key (nil if there is none), in
// one read.
func (s *Service) heldWithSession(ctx context.Context, r ref, epoch int64) (*mvccpb.KeyValue, *capstanv1.Lease, *mvccpb.KeyValue, error) {
	resp, err := s.client.Txn(ctx).Then(clientv3.OpGet(r.key()), clientv3.OpGet(r.sessionKey())).Commit()
	if err != nil {
		return nil, nil, nil, storageError(err)
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	lease, err := s.holding(r, epoch, kvs)
	if err != nil {
		return nil, nil, nil, err
	}
	var session *mvccpb.KeyValue
	if skvs := resp.Responses[1].GetResponseRange().GetKvs(); len(skvs) > 0 {
		session = skvs[0]
	}
	return kvs[0], lease, session, nil
}

// renewOnFreshLease renews the holding at epoch by moving its key, and its
// session key, to a newly granted etcd lease: the renewal after an etcd
// leader change. A deposed etcd leader keeps, in memory, when it last saw
// each etcd lease renewed; frozen (SIGSTOP, docker pause) for longer than
// the TTL and thawed, it finds them expired and revokes them — and etcd
// 3.7 carries that out (its stale-leader guard is skipped while the
// member's raft ticks look recent, which they do right after a freeze, and
// a revocation proposed once the member is a follower is forwarded to the
// new leader). It never knew the etcd lease granted here, in the new term,
// so it can only revoke the old one, to which nothing is attached any
// more. A Put keeps the key's create revision: the epoch does not change.
// The session key moves with the holding, so it is read here, not on every
// renewal.
func (s *Service) renewOnFreshLease(ctx context.Context, r ref, epoch int64) (*capstanv1.RenewLeaseResponse, error) {
	for attempt := 1; ; attempt++ {
		kv, held, session, err := s.heldWithSession(ctx, r, epoch)
		if err != nil {
			return nil, err
		}
		grant, err := s.client.Grant(ctx, int64(held.GetSpec().GetLeaseDurationSeconds()))
		if err != nil {
			return nil, storageError(err)
		}
		held.Status.RenewTime = timestamppb.New(s.now())
		held.Status.EtcdLeaseTerm = grant.ResponseHeader.GetRaftTerm()
		data, err := proto.Marshal(held)
		if err != nil {
			s.revoke(grant.ID)
			return nil, apierrors.Internal("encode lease: %v", err)
		}
		cmps := []clientv3.Cmp{
			clientv3.Compare(clientv3.CreateRevision(r.key()), "=", epoch),
			clientv3.Compare(clientv3.ModRevision(r.key()), "=", kv.ModRevision),
		}
		ops := []clientv3.Op{clientv3.OpPut(r.key(), string(data), clientv3.WithLease(grant.ID))}
		if session != nil {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(r.sessionKey()), "=", session.ModRevision))
			ops = append(ops, clientv3.OpPut(r.sessionKey(), string(session.Value), clientv3.WithLease(grant.ID)))
		} else {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(r.sessionKey()), "=", 0))
		}
		resp, err := s.client.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			// The transaction may have been applied: the holding may now
			// ride on grant, so it must not be revoked. If it was not
			// applied, nothing is attached to grant and it expires by its
			// TTL.
			return nil, storageError(err)
		}
		if resp.Succeeded {
			// The old etcd lease, with nothing attached, expires by its TTL.
			s.log.Debug("lease moved to a fresh etcd lease after an etcd leader change", "lease", r.namespace+"/"+r.name, "holder", r.holder, "epoch", epoch, "term", held.Status.EtcdLeaseTerm)
			held.Metadata.ResourceVersion = resp.Header.Revision
			return &capstanv1.RenewLeaseResponse{Lease: held}, nil
		}
		s.revoke(grant.ID)
		if attempt == maxRaceAttempts {
			return nil, apierrors.Conflict("Lease", r.namespace, r.name, "the lease kept changing while its renewal was recorded")
		}
		// A session was recorded (or another renewal) since the read:
		// read again.
	}
}

// current returns the holding, or nil if the lease is free.
func (s *Service) current(ctx context.Context, r ref) (*capstanv1.Lease, error) {
	resp, err := s.client.Get(ctx, r.key())
	if err != nil {
		return nil, storageError(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return decodeLease(resp.Kvs[0])
}

// history returns the last holder and transitions, and the key's revision.
func (s *Service) history(ctx context.Context, r ref) (*capstanv1.Lease, int64, error) {
	resp, err := s.client.Get(ctx, r.historyKey())
	if err != nil {
		return nil, 0, storageError(err)
	}
	if len(resp.Kvs) == 0 {
		return &capstanv1.Lease{}, 0, nil
	}
	var h capstanv1.Lease
	if err := proto.Unmarshal(resp.Kvs[0].Value, &h); err != nil {
		return nil, 0, apierrors.Internal("lease history %s: %v", r.historyKey(), err)
	}
	return &h, resp.Kvs[0].ModRevision, nil
}

func (s *Service) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := s.client.Revoke(ctx, id); err != nil && !isLeaseGone(err) {
		s.log.Warn("cannot revoke an etcd lease; it expires by its TTL", "etcd-lease", fmt.Sprintf("%x", int64(id)), "error", err)
	}
}

func decodeLease(kv *mvccpb.KeyValue) (*capstanv1.Lease, error) {
	var lease capstanv1.Lease
	if err := proto.Unmarshal(kv.Value, &lease); err != nil {
		return nil, apierrors.Internal("stored lease %s: %v", kv.Key, err)
	}
	resource.Meta(&lease).ResourceVersion = kv.ModRevision
	StampEpoch(&lease, kv.CreateRevision)
	return &lease, nil
}

// StampEpoch sets a Lease's epoch from its key's create revision: every
// holding creates the key anew, so each one gets a larger epoch, never
// reused. Objects of other kinds are left alone. It has the signature of
// etcd3.Options.StampCreateRevision, so that every Lease the storage layer
// returns (Get, List, watch events, write results) carries its epoch.
func StampEpoch(obj storage.Object, createRevision int64) {
	lease, ok := obj.(*capstanv1.Lease)
	if !ok {
		return
	}
	if lease.Status == nil {
		lease.Status = &capstanv1.LeaseStatus{}
	}
	lease.Status.Epoch = createRevision
}

// isLeaseGone reports whether etcd says the etcd lease does not exist
// (expired or revoked).
func isLeaseGone(err error) bool {
	return errors.Is(err, rpctypes.ErrLeaseNotFound) || rpctypes.ErrorDesc(err) == rpctypes.ErrorDesc(rpctypes.ErrGRPCLeaseNotFound)
}

// storageError maps an etcd error like the storage layer does.
func storageError(err error) error { return etcd3.StatusOf(err) }
