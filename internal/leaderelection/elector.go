package leaderelection

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/utils/clock"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/events"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Defaults and limits of Config.
const (
	// DefaultTTL is the lease duration of the controller-manager and the
	// scheduler: a killed leader is replaced within about this long.
	DefaultTTL = 6 * time.Second
	// MinTTL is the shortest lease etcd grants with its default tick.
	MinTTL = 2 * time.Second
	// DefaultReleaseWait is how long Run waits for OnStartedLeading to
	// return, once the leadership ended, before saying it still waits.
	DefaultReleaseWait = 2 * time.Second
)

// Timings derived from the TTL. They are fractions so that a shorter TTL in
// a test keeps the same proportions; with the default TTL of 6 s the leader
// renews every second, bounds each attempt to a second, and stops acting 5 s
// after its last successful renewal was sent: four seconds of failed
// renewals — an etcd leader election (an election timeout of 1 s plus a
// campaign) and the move to another API replica after one frozen attempt —
// cost it nothing (ADR 0006).
const (
	// renewDivisor: the leader renews every TTL/renewDivisor.
	renewDivisor = 6
	// marginDivisor: the leader stops acting TTL/marginDivisor before the
	// earliest instant etcd could expire its lease, which covers the time
	// it takes to stop and any difference in clock rates.
	marginDivisor = 6
	// renewAttemptDivisor bounds one RenewLease call (TTL/6), so that a
	// frozen API replica costs one short attempt and the next renewal goes
	// elsewhere while there is still time.
	renewAttemptDivisor = 6
	// renewRetryDivisor paces renewals after a failed one (TTL/30).
	renewRetryDivisor = 30
)

// Back-off between AcquireLease attempts that failed without an answer.
const (
	acquireFirstBackoff = 50 * time.Millisecond
)

// leaseKind is the kind watched by candidates.
var leaseKind = resource.MustLookup("Lease")

// errFencedOff is the cause of a leading context cancelled because a fenced
// call was refused with LEASE_NOT_HELD.
var errFencedOff = errors.New("leaderelection: a fenced call was refused: the lease is no longer held at this epoch")

// Config is everything New needs.
type Config struct {
	// Client talks to the API servers. Required.
	Client *client.Client
	// Namespace of the lease; default wellknown.SystemNamespace.
	Namespace string
	// Name of the lease, for example wellknown.ControllerManagerLease.
	// Required.
	Name string
	// Identity of this candidate, unique among the candidates for the
	// lease (the local cluster uses the process name, a pod would use its
	// name). Required. The lease's holder identity is it followed by "_"
	// and a nonce of this process (see HolderIdentity), so a restarted
	// process never mistakes its predecessor's holding for its own.
	Identity string
	// TTL is the lease duration: whole seconds, at least MinTTL. Default
	// DefaultTTL.
	TTL time.Duration
	// ReleaseWait is how long Run waits for OnStartedLeading to return,
	// after the leadership ended, before it logs that it is still waiting
	// (and again after each further ReleaseWait). On shutdown the lease is
	// released first: writes the callback still makes are refused by then.
	// Default DefaultReleaseWait.
	ReleaseWait time.Duration
	// Logger receives one line per transition and the failures; it should
	// carry the component and identity. Default: discard.
	Logger *slog.Logger
	// Clock measures the leader's deadlines; it must be monotonic (the
	// real clock is: time.Time carries a monotonic reading). Tests inject
	// a fake one. Default: the real clock.
	Clock clock.WithTicker
	// Registerer, if set, gets the capstan_leader and capstan_leader_epoch
	// gauges and the capstan_lease_transitions_total counter of this lease.
	Registerer prometheus.Registerer
	// Events, if set, records a LeaseFenced event on the Lease when this
	// replica is fenced off (the API server records the other transitions).
	Events *events.Recorder
}

// ReasonFenced is the reason of the event of a leader fenced off.
const ReasonFenced = "LeaseFenced"

// Callbacks are what Run calls on transitions.
type Callbacks struct {
	// OnStartedLeading runs, on its own goroutine, each time this replica
	// becomes the leader. Its context is cancelled the moment leadership
	// may be lost, and carries the fence: every API call made with it is
	// fenced. It must return soon after its context ends. Required.
	OnStartedLeading func(ctx context.Context)
	// OnStoppedLeading is called after each leadership, once
	// OnStartedLeading has returned. Optional.
	OnStoppedLeading func()
	// OnNewLeader is called when a different holding of the lease is seen
	// (another holder or a new epoch), this replica's own included, with
	// the holder identity (IdentityOf gives the candidate's name).
	// Optional.
	OnNewLeader func(holder string, epoch int64)
}

// HolderIdentity is the identity a candidate holds a lease under: its
// Identity, "_", and 8 hex digits drawn once per process. An elector adopts
// a holding under its holder identity after an attempt whose answer was
// lost; with a fixed name it would adopt the holding of an earlier process
// of the same name that is still alive, and two would lead.
func HolderIdentity(identity string) string { return identity + "_" + processNonce }

// IdentityOf is the candidate Identity of a holder identity: the holder
// identity without its nonce.
func IdentityOf(holder string) string {
	if i := strings.LastIndexByte(holder, '_'); i >= 0 && len(holder)-i-1 == nonceDigits {
		if _, err := hex.DecodeString(holder[i+1:]); err == nil {
			return holder[:i]
		}
	}
	return holder
}

const nonceDigits = 8

// processNonce tells this process's holdings from those of any other
// process with the same identity.
var processNonce = func() string {
	b := make([]byte, nonceDigits/2)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}()

// Elector campaigns for one lease on behalf of one identity. See the
// package doc.
type Elector struct {
	client      *client.Client
	namespace   string
	name        string
	identity    string
	ttl         time.Duration
	releaseWait time.Duration
	log         *slog.Logger
	clock       clock.WithTicker

	renewInterval time.Duration
	margin        time.Duration
	renewTimeout  time.Duration

	running atomic.Bool
	leading atomic.Bool
	epoch   atomic.Int64
	// leader is the holding last observed, for Leader.
	leader atomic.Pointer[observedHolding]

	leaderGauge prometheus.Gauge
	epochGauge  prometheus.Gauge
	// transitions counts this replica's leaderships by how they began or
	// ended (acquired, released, fenced, gave-up).
	transitions *prometheus.CounterVec

	// Touched only by Run's goroutine.
	events           *events.Recorder
	callbacks        Callbacks
	observedIdentity string
	observedEpoch    int64
	// lastOwnEpoch is the epoch of this elector's last holding: a holding
	// under its identity at that epoch is still its own.
	lastOwnEpoch int64
}

// New validates cfg and returns an Elector; nothing happens until Run.
func New(cfg Config) (*Elector, error) {
	if cfg.Client == nil {
		return nil, errors.New("leaderelection: Config.Client is nil")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = wellknown.SystemNamespace
	}
	if cfg.Name == "" {
		return nil, errors.New("leaderelection: Config.Name (the lease name) is empty")
	}
	if strings.Contains(cfg.Name, "/") || strings.Contains(cfg.Namespace, "/") {
		return nil, fmt.Errorf("leaderelection: lease %s/%s: namespace and name must not contain '/'", cfg.Namespace, cfg.Name)
	}
	if cfg.Identity == "" {
		return nil, errors.New("leaderelection: Config.Identity is empty")
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < MinTTL || cfg.TTL%time.Second != 0 {
		return nil, fmt.Errorf("leaderelection: Config.TTL must be whole seconds and at least %v (etcd's minimum lease), not %v", MinTTL, cfg.TTL)
	}
	if cfg.TTL/time.Second > 1<<30 {
		return nil, fmt.Errorf("leaderelection: Config.TTL %v is too long", cfg.TTL)
	}
	if cfg.ReleaseWait < 0 {
		return nil, fmt.Errorf("leaderelection: Config.ReleaseWait must not be negative, not %v", cfg.ReleaseWait)
	}
	if cfg.ReleaseWait == 0 {
		cfg.ReleaseWait = DefaultReleaseWait
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	lease := cfg.Namespace + "/" + cfg.Name
	e := &Elector{
		client:        cfg.Client,
		namespace:     cfg.Namespace,
		name:          cfg.Name,
		identity:      HolderIdentity(cfg.Identity),
		events:        cfg.Events,
		ttl:           cfg.TTL,
		releaseWait:   cfg.ReleaseWait,
		log:           cfg.Logger.With("lease", lease),
		clock:         cfg.Clock,
		renewInterval: cfg.TTL / renewDivisor,
		margin:        cfg.TTL / marginDivisor,
		renewTimeout:  cfg.TTL / renewAttemptDivisor,
		leaderGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "capstan_leader",
			Help:        "1 while this replica holds the lease and acts as its leader, else 0.",
			ConstLabels: prometheus.Labels{"lease": lease},
		}),
		epochGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "capstan_leader_epoch",
			Help:        "Epoch (fencing token) of the lease's holding this replica last saw; its own while it leads.",
			ConstLabels: prometheus.Labels{"lease": lease},
		}),
	}
	e.transitions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "capstan_lease_transitions_total",
		Help:        "This replica's leaderships by how they began or ended: acquired, released (a clean stop), fenced (the API refused its epoch), gave-up (no renewal succeeded in time).",
		ConstLabels: prometheus.Labels{"lease": lease},
	}, []string{"reason"})
	if cfg.Registerer != nil {
		for _, g := range []prometheus.Collector{e.leaderGauge, e.epochGauge, e.transitions} {
			if err := cfg.Registerer.Register(g); err != nil {
				return nil, fmt.Errorf("leaderelection: register the metrics of lease %s: %w", lease, err)
			}
		}
	}
	return e, nil
}

// IsLeader reports whether this replica leads now: from the moment it
// acquired the lease until the moment it decided it may have lost it.
func (e *Elector) IsLeader() bool { return e.leading.Load() }

// Epoch is the epoch (fencing token) of the current leadership, 0 when not
// leading.
func (e *Elector) Epoch() int64 {
	if !e.leading.Load() {
		return 0
	}
	return e.epoch.Load()
}

// Identity is the holder identity this elector campaigns under: its
// Config.Identity with this process's nonce (HolderIdentity).
func (e *Elector) Identity() string { return e.identity }

// Leader is the holding of the lease this elector last saw — its own
// while it leads — as a holder identity and epoch, or "", 0 before it saw
// any. A standby that reports the
// current holding has asked for the lease and is watching it.
func (e *Elector) Leader() (identity string, epoch int64) {
	if h := e.leader.Load(); h != nil {
		return h.identity, h.epoch
	}
	return "", 0
}

type observedHolding struct {
	identity string
	epoch    int64
}

// Run campaigns for the lease and leads whenever it holds it, until ctx
// ends. If it leads then, it cancels the leading context, releases the
// lease, and returns once OnStartedLeading has returned. It returns nil after ctx
// ends, and an error only for a misuse (a second Run, no OnStartedLeading).
func (e *Elector) Run(ctx context.Context, cb Callbacks) error {
	if cb.OnStartedLeading == nil {
		return errors.New("leaderelection: Callbacks.OnStartedLeading is nil")
	}
	if !e.running.CompareAndSwap(false, true) {
		return errors.New("leaderelection: Run may be called only once per Elector")
	}
	e.callbacks = cb
	var pause time.Duration
	for {
		h, ok := e.campaign(ctx, pause)
		if !ok {
			return nil
		}
		pause = e.lead(ctx, h)
		if ctx.Err() != nil {
			return nil
		}
	}
}

// holding is a lease this elector holds.
type holding struct {
	epoch int64
	// sent is when the request that last started or extended the holding
	// was sent, by e.clock: etcd cannot expire it before sent + TTL.
	sent time.Time
}

// campaign tries to acquire the lease until it does (true) or ctx ends
// (false). The first attempt comes after pause.
func (e *Elector) campaign(ctx context.Context, pause time.Duration) (holding, bool) {
	var watcher *client.Watcher
	defer func() {
		if watcher != nil {
			watcher.Stop()
		}
	}()
	// A fake clock fires no timer, not even one of zero duration, until it
	// is stepped: the first attempt without a pause is made at once.
	attemptNow := pause <= 0
	retry := e.clock.NewTimer(max(pause, e.ttl))
	defer retry.Stop()
	backoff := acquireFirstBackoff
	// ambiguous: an attempt failed without an answer since the last
	// answer, so a holding under our identity may be one it made.
	ambiguous := false
	warnedOwnIdentity := false
	for {
		var events <-chan client.WatchEvent
		if watcher != nil {
			events = watcher.Events()
		}
		if !attemptNow {
			select {
			case <-ctx.Done():
				return holding{}, false
			case <-retry.C():
			case ev, open := <-events:
				if !open {
					if err := watcher.Err(); err != nil {
						e.log.Warn("watch on the lease ended; watching again after the next attempt", "error", err)
					}
					watcher = nil
					resetTimer(retry, backoff)
					continue
				}
				if ev.Type != client.Deleted {
					if lease, ok := ev.Object.(*capstanv1.Lease); ok {
						e.observe(lease.GetSpec().GetHolderIdentity(), lease.GetStatus().GetEpoch())
					}
					continue
				}
				e.log.Debug("lease deleted: trying to acquire it")
			}
		}
		attemptNow = false

		sent := e.clock.Now()
		// Not cancelled with ctx: an acquisition that lands as we shut
		// down must be known, to be handed back at once.
		callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.renewInterval)
		resp, err := e.client.Leases().AcquireLease(callCtx, &capstanv1.AcquireLeaseRequest{
			Namespace:            e.namespace,
			Name:                 e.name,
			HolderIdentity:       e.identity,
			LeaseDurationSeconds: int32(e.ttl / time.Second),
		})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return holding{}, false
			}
			if mayHaveApplied(err) {
				ambiguous = true
			}
			e.log.Warn("acquiring the lease failed; trying again", "error", err, "retry-in", backoff)
			resetTimer(retry, backoff)
			backoff = min(2*backoff, e.renewInterval)
			continue
		}
		backoff = acquireFirstBackoff
		lease := resp.GetLease()
		if resp.GetAcquired() {
			h := holding{epoch: lease.GetStatus().GetEpoch(), sent: sent}
			if ctx.Err() != nil {
				// Shutting down: hand the lease straight back.
				e.release(ctx, h.epoch)
				return holding{}, false
			}
			return h, true
		}
		holder, epoch := lease.GetSpec().GetHolderIdentity(), lease.GetStatus().GetEpoch()
		switch {
		case holder != e.identity:
			// A definite answer naming another holder: no attempt of
			// ours took the lease (or its holding is gone).
			ambiguous = false
		case ambiguous || (epoch != 0 && epoch == e.lastOwnEpoch):
			if h, ok := e.adopt(ctx, epoch); ok {
				return h, true
			}
			// Ours or not, it ends with its TTL; the watch sees that.
		case !warnedOwnIdentity:
			warnedOwnIdentity = true
			e.log.Warn("the lease is held under this process's identity by a holding it did not make; waiting for it to end", "epoch", epoch)
		}
		if lease != nil {
			e.observe(holder, epoch)
		}
		if watcher == nil {
			// From the version the holder's lease was read at, so that a
			// deletion after this answer is never missed.
			watcher = e.client.Watch(ctx, leaseKind, client.WatchOptions{
				Namespace:       e.namespace,
				FieldSelector:   "metadata.name=" + e.name,
				ResourceVersion: lease.GetMetadata().GetResourceVersion(),
			})
		}
		// The fallback attempt, which also keeps us listed as a standby.
		resetTimer(retry, e.ttl)
	}
}

// adopt takes over a holding under our identity that an attempt whose
// answer was lost made (or our own earlier one): a renewal proves it is
// still there and tells when it was last extended.
func (e *Elector) adopt(ctx context.Context, epoch int64) (holding, bool) {
	sent := e.clock.Now()
	callCtx, cancel := context.WithTimeout(ctx, e.renewTimeout)
	defer cancel()
	_, err := e.client.Leases().RenewLease(callCtx, e.renewRequest(epoch))
	if err != nil {
		e.log.Info("a holding under this identity could not be renewed, so it is not taken over", "epoch", epoch, "error", err)
		return holding{}, false
	}
	e.log.Info("taking over the holding an earlier attempt made", "epoch", epoch)
	return holding{epoch: epoch, sent: sent}, true
}

// lead runs one leadership and returns, after OnStartedLeading has
// returned, how long to wait before campaigning again.
func (e *Elector) lead(ctx context.Context, h holding) (pause time.Duration) {
	leadCtx, cancelLead := context.WithCancelCause(ctx)
	defer cancelLead(nil)
	fenced := client.WithFence(leadCtx, client.Fence{Namespace: e.namespace, Name: e.name, Epoch: h.epoch}, func() {
		cancelLead(errFencedOff)
	})

	e.lastOwnEpoch = h.epoch
	e.epoch.Store(h.epoch)
	e.leading.Store(true)
	e.leaderGauge.Set(1)
	e.log.Info("became leader", "epoch", h.epoch)
	e.observe(e.identity, h.epoch)

	callbackDone := make(chan struct{})
	go func() {
		defer close(callbackDone)
		e.callbacks.OnStartedLeading(fenced)
	}()
	renewals := make(chan renewal)
	renewDone := make(chan struct{})
	go func() {
		defer close(renewDone)
		e.renewLoop(leadCtx, h, renewals)
	}()
	// The session outlives the leadership's context: it is closed cleanly
	// once the lease is released (or lost), never cancelled by it, since an
	// API replica takes a session cancelled without a word for this
	// process's death and releases the lease.
	sessionCtx, endSession := context.WithCancel(context.WithoutCancel(ctx))
	defer endSession()
	sessionDone := make(chan struct{})
	go func() {
		defer close(sessionDone)
		KeepSession(sessionCtx, e.client, Holding{Namespace: e.namespace, Name: e.name, Holder: e.identity, Epoch: h.epoch},
			e.log.With("subsystem", "lease-session"))
	}()
	e.transitions.WithLabelValues("acquired").Inc()

	deadline := h.sent.Add(e.ttl - e.margin)
	timer := e.clock.NewTimer(deadline.Sub(e.clock.Now()))
	defer timer.Stop()
	var reason string
	var cause error
	// mayStillHold: the lease may still be ours in etcd, so releasing it
	// hands over sooner than its expiry would.
	mayStillHold := true
	shutdown := false
	transition := "gave-up"
wait:
	for {
		select {
		case <-leadCtx.Done():
			cause = context.Cause(leadCtx)
			if errors.Is(cause, errFencedOff) {
				reason, mayStillHold, transition = "a fenced call was refused with LEASE_NOT_HELD", false, "fenced"
			} else {
				reason, shutdown, transition = "shutting down", true, "released"
			}
			break wait
		case <-timer.C():
			reason = fmt.Sprintf("no renewal succeeded within %v of the last one sent (TTL %v minus a %v margin); stopping before the lease can expire", e.ttl-e.margin, e.ttl, e.margin)
			break wait
		case r := <-renewals:
			if r.err == nil {
				deadline = r.sent.Add(e.ttl - e.margin)
				resetTimer(timer, deadline.Sub(e.clock.Now()))
				continue
			}
			if apierrors.Is(r.err, apierrors.ReasonLeaseNotHeld) {
				reason, mayStillHold, transition = "the renewal was refused with LEASE_NOT_HELD", false, "fenced"
				cause = r.err
				break wait
			}
			e.log.Warn("renewing the lease failed; retrying", "epoch", h.epoch, "error", r.err,
				"time-left", deadline.Sub(e.clock.Now()).Round(time.Millisecond))
		case <-callbackDone:
			reason, pause = "OnStartedLeading returned while leading; releasing the lease", e.ttl
			break wait
		}
	}

	// Stop acting first; everything after is clean-up.
	e.leading.Store(false)
	e.leaderGauge.Set(0)
	if cause == nil {
		cause = errors.New("leaderelection: " + reason)
	}
	cancelLead(cause)
	logLevel := slog.LevelWarn
	if shutdown {
		logLevel = slog.LevelInfo
	}
	e.log.Log(context.Background(), logLevel, "stopped leading", "epoch", h.epoch, "reason", reason)
	e.transitions.WithLabelValues(transition).Inc()
	if transition == "fenced" {
		e.events.Eventf(context.Background(), &capstanv1.Lease{Metadata: &capstanv1.ObjectMeta{Namespace: e.namespace, Name: e.name}},
			wellknown.EventWarning, ReasonFenced, "%s was fenced off at epoch %d (%s): it stopped acting", e.identity, h.epoch, reason)
	}
	<-renewDone

	if shutdown {
		// Hand over at once, without waiting for the callback to stop: the
		// fence refuses whatever it still writes once the lease is
		// released, and a write it made before is in etcd before the
		// release, so the successor's first List sees it. (Waiting first
		// added the callback's stop to every SIGTERM handover.)
		e.release(ctx, h.epoch)
		endSession()
		e.waitCallback(callbackDone)
	} else {
		if !mayStillHold {
			endSession()
		}
		e.waitCallback(callbackDone)
		if mayStillHold {
			e.release(ctx, h.epoch)
		}
	}
	endSession()
	<-sessionDone
	if e.callbacks.OnStoppedLeading != nil {
		e.callbacks.OnStoppedLeading()
	}
	return pause
}

// waitCallback waits for OnStartedLeading to return, complaining while it
// does not: a new leadership must not start beside the old one.
func (e *Elector) waitCallback(done <-chan struct{}) {
	for {
		t := e.clock.NewTimer(e.releaseWait)
		select {
		case <-done:
			t.Stop()
			return
		case <-t.C():
			e.log.Warn("OnStartedLeading has not returned after its context ended; waiting for it before campaigning again")
		}
	}
}

// release gives the lease up, so a standby takes over at once. Failure is
// logged: the lease then expires by itself.
func (e *Elector) release(ctx context.Context, epoch int64) {
	callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.ttl)
	defer cancel()
	_, err := e.client.Leases().ReleaseLease(callCtx, &capstanv1.ReleaseLeaseRequest{
		Namespace:      e.namespace,
		Name:           e.name,
		HolderIdentity: e.identity,
		Epoch:          epoch,
	})
	switch {
	case err == nil:
		e.log.Info("released the lease", "epoch", epoch)
	case apierrors.Is(err, apierrors.ReasonLeaseNotHeld):
		e.log.Info("the lease was already gone; nothing to release", "epoch", epoch)
	default:
		e.log.Warn("releasing the lease failed; it expires by itself within its TTL", "epoch", epoch, "error", err)
	}
}

// renewal is the outcome of one RenewLease.
type renewal struct {
	sent time.Time
	err  error
}

// renewLoop renews every TTL/3 after the last successful renewal was sent,
// and soon again after a failed one, reporting each outcome until ctx ends
// or the lease is not held.
func (e *Elector) renewLoop(ctx context.Context, h holding, out chan<- renewal) {
	next := h.sent.Add(e.renewInterval)
	for {
		if wait := next.Sub(e.clock.Now()); wait > 0 {
			t := e.clock.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C():
			}
		}
		sent := e.clock.Now()
		callCtx, cancel := context.WithTimeout(ctx, e.renewTimeout)
		_, err := e.client.Leases().RenewLease(callCtx, e.renewRequest(h.epoch))
		cancel()
		if ctx.Err() != nil {
			return
		}
		select {
		case out <- renewal{sent: sent, err: err}:
		case <-ctx.Done():
			return
		}
		if err == nil {
			next = sent.Add(e.renewInterval)
			continue
		}
		if apierrors.Is(err, apierrors.ReasonLeaseNotHeld) {
			return
		}
		next = e.clock.Now().Add(e.ttl / renewRetryDivisor)
	}
}

func (e *Elector) renewRequest(epoch int64) *capstanv1.RenewLeaseRequest {
	return &capstanv1.RenewLeaseRequest{
		Namespace:      e.namespace,
		Name:           e.name,
		HolderIdentity: e.identity,
		Epoch:          epoch,
	}
}

// observe notes the lease's holder and tells OnNewLeader about a new one.
func (e *Elector) observe(identity string, epoch int64) {
	if identity == "" || (identity == e.observedIdentity && epoch == e.observedEpoch) {
		return
	}
	e.observedIdentity, e.observedEpoch = identity, epoch
	e.leader.Store(&observedHolding{identity: identity, epoch: epoch})
	e.epochGauge.Set(float64(epoch))
	if identity != e.identity {
		e.log.Info("new leader observed", "leader", identity, "epoch", epoch)
	}
	if e.callbacks.OnNewLeader != nil {
		e.callbacks.OnNewLeader(identity, epoch)
	}
}

// mayHaveApplied reports whether a failed AcquireLease may nevertheless
// have been carried out: every failure but a refusal before any write.
func mayHaveApplied(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.Unimplemented, codes.PermissionDenied, codes.Unauthenticated, codes.FailedPrecondition:
		return false
	}
	return true
}

// resetTimer re-arms t to fire after d, dropping a tick it already fired
// and nobody read.
func resetTimer(t clock.Timer, d time.Duration) {
	if !t.Stop() {
		select {
		case <-t.C():
		default:
		}
	}
	t.Reset(d)
}
