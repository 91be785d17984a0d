package agent

import (
	"context"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/leaderelection"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// releaseTimeout bounds the release of the node lease on shutdown.
const releaseTimeout = 2 * time.Second

// Timings of the node lease, fractions of its TTL (6 s by default: renewed
// every 2 s, each attempt bounded to 1 s, a failed one retried after 200
// ms). Failed renewals — a killed, stopped or frozen API replica, an etcd
// leader election — are retried on the next replica well within the TTL,
// so an API fault never makes the node look dead.
const (
	leaseRenewDivisor   = 3
	leaseAttemptDivisor = 6
	leaseRetryDivisor   = 30
)

// runLease holds the node lease capstan-node-lease/<node> until ctx ends,
// then releases it. A node lease is a heartbeat, not a leadership: losing
// it (LEASE_NOT_HELD, or no renewal within its TTL while the API was away)
// means only that the node looked dead for a while, so the agent takes it
// again as soon as it can and goes on running its pods meanwhile.
//
// While it holds the lease the agent keeps a session with one API replica
// (leaderelection.KeepSession): if the agent dies — SIGKILL, OOM kill, its
// machine's container killed — the kernel closes the session's connection
// and the replica releases the lease at once, so the node is seen dead
// without waiting for the TTL. A paused or partitioned agent keeps its
// connection open: its lease is governed by the TTL.
func (a *Agent) runLease(ctx context.Context) {
	a.holder = leaderelection.HolderIdentity(a.cfg.NodeName)
	ttl := a.cfg.LeaseDuration
	period, retry := ttl/leaseRenewDivisor, ttl/leaseRetryDivisor
	var (
		epoch     int64
		renewedAt time.Time // when the last successful acquire or renew was sent
		failing   bool      // the last attempt failed (logged once per episode)
		session   *nodeLeaseSession
	)
	failed := func(what string, err error) {
		if !failing {
			a.log.Warn("node lease: "+what+" failed; retrying", "error", err)
		} else {
			a.log.Debug("node lease: "+what+" failed again", "error", err)
		}
		failing = true
	}
	for {
		attempt := a.clock.Now()
		if epoch == 0 {
			got, holder, err := a.acquireLease(ctx)
			switch {
			case ctx.Err() != nil:
			case err != nil:
				failed("acquire", err)
			case got == 0:
				failed("acquire", errHeldBy(holder))
			default:
				epoch, renewedAt, failing = got, attempt, false
				a.log.Info("holding the node lease", "lease", wellknown.NodeLeaseNamespace+"/"+a.cfg.NodeName, "epoch", epoch)
				session.end()
				session = a.startLeaseSession(ctx, epoch)
				// The node may have been marked Ready=Unknown while the
				// lease was missing: say Ready again now.
				a.pokeNodeStatus(true)
			}
		} else {
			err := a.renewLease(ctx, epoch)
			switch {
			case ctx.Err() != nil:
			case err == nil:
				if failing {
					a.log.Info("node lease renewed again", "epoch", epoch)
				}
				renewedAt, failing = attempt, false
			case apierrors.Is(err, apierrors.ReasonLeaseNotHeld):
				a.log.Warn("node lease lost (the node looked dead for a while); acquiring it again", "epoch", epoch)
				epoch, failing = 0, false
				session.end()
				session = nil
				continue
			case a.clock.Since(renewedAt) >= ttl:
				a.log.Warn("node lease not renewed within its TTL: it has expired; acquiring it again", "epoch", epoch, "error", err)
				epoch, failing = 0, true
				session.end()
				session = nil
			default:
				failed("renew", err)
			}
		}
		next := attempt.Add(period)
		if failing {
			next = a.clock.Now().Add(retry)
		}
		if !a.sleepCtx(ctx, next.Sub(a.clock.Now())) {
			break
		}
	}
	if epoch != 0 {
		a.releaseLease(context.WithoutCancel(ctx), epoch)
	}
	// Closed after the release: a clean close releases nothing by itself.
	session.end()
}

// nodeLeaseSession is the session kept for one holding of the node lease.
type nodeLeaseSession struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startLeaseSession keeps a session for the holding at epoch until end is
// called. Its context is not ctx's child: ending the agent closes the
// session cleanly (after the release), never by cancelling it.
func (a *Agent) startLeaseSession(ctx context.Context, epoch int64) *nodeLeaseSession {
	sessionCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &nodeLeaseSession{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		leaderelection.KeepSession(sessionCtx, a.client,
			leaderelection.Holding{Namespace: wellknown.NodeLeaseNamespace, Name: a.cfg.NodeName, Holder: a.holder, Epoch: epoch},
			a.log.With("subsystem", "node-lease-session"))
	}()
	return s
}

// end closes the session and waits for it; a nil session is a no-op.
func (s *nodeLeaseSession) end() {
	if s == nil {
		return
	}
	s.cancel()
	<-s.done
}

type errHeldBy string

func (e errHeldBy) Error() string { return "the node lease is held by " + string(e) }

// acquireLease takes the node lease and returns its epoch; 0 and the holder
// if another holder has it. The lease is held under the node's name and
// this process's nonce (leaderelection.HolderIdentity), so a holding under
// that identity can only be this process's own — an acquisition whose
// answer was lost — and is taken over: renewing it proves it is still
// there. A previous run of the agent that is still alive keeps its holding
// until it stops or the lease expires; one that was killed leaves it to
// expire within the TTL.
func (a *Agent) acquireLease(ctx context.Context) (epoch int64, holder string, err error) {
	callCtx, cancel := context.WithTimeout(ctx, a.cfg.LeaseDuration/leaseAttemptDivisor)
	defer cancel()
	resp, err := a.client.Leases().AcquireLease(callCtx, &capstanv1.AcquireLeaseRequest{
		Namespace:            wellknown.NodeLeaseNamespace,
		Name:                 a.cfg.NodeName,
		HolderIdentity:       a.holder,
		LeaseDurationSeconds: int32(a.cfg.LeaseDuration / time.Second),
	})
	if err != nil {
		return 0, "", err
	}
	lease := resp.GetLease()
	if resp.GetAcquired() {
		return lease.GetStatus().GetEpoch(), a.holder, nil
	}
	if holder = lease.GetSpec().GetHolderIdentity(); holder != a.holder {
		return 0, holder, nil
	}
	epoch = lease.GetStatus().GetEpoch()
	if err := a.renewLease(ctx, epoch); err != nil {
		return 0, "", err
	}
	return epoch, holder, nil
}

func (a *Agent) renewLease(ctx context.Context, epoch int64) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.LeaseDuration/leaseAttemptDivisor)
	defer cancel()
	_, err := a.client.Leases().RenewLease(ctx, &capstanv1.RenewLeaseRequest{
		Namespace:      wellknown.NodeLeaseNamespace,
		Name:           a.cfg.NodeName,
		HolderIdentity: a.holder,
		Epoch:          epoch,
	})
	return err
}

// releaseLease gives the lease up, so that the node is seen stopped at once
// rather than one TTL later.
func (a *Agent) releaseLease(ctx context.Context, epoch int64) {
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	_, err := a.client.Leases().ReleaseLease(ctx, &capstanv1.ReleaseLeaseRequest{
		Namespace:      wellknown.NodeLeaseNamespace,
		Name:           a.cfg.NodeName,
		HolderIdentity: a.holder,
		Epoch:          epoch,
	})
	switch {
	case err == nil:
		a.log.Info("released the node lease", "epoch", epoch)
	case apierrors.Is(err, apierrors.ReasonLeaseNotHeld):
		a.log.Info("the node lease was already gone at shutdown", "epoch", epoch)
	default:
		a.log.Warn("could not release the node lease; it expires by itself", "epoch", epoch, "error", err)
	}
}
