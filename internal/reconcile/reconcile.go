// Package reconcile is the one worker loop of every Capstan controller and
// of the node agent: a rate-limited work queue of keys ("namespace/name", a
// pod uid, ...), workers that call the loop's sync function for each key,
// and one policy for what a sync's error means. A controller built on it
// holds only its reconcile logic: what a key means and how to bring it in
// line.
//
// # What an error means
//
//   - nil: done; the key's back-off is forgotten.
//   - The loop's context has ended: nothing; whoever runs next (the next
//     leader, the next agent) starts from a full resync.
//   - FAILED_PRECONDITION with reason LEASE_NOT_HELD: the leadership is
//     over. The loop stops acting at once — every worker stops taking keys
//     and Run returns nil — and does not retry: the client has already told
//     the elector (client.WithFence), and the next leader syncs everything.
//   - ABORTED, ALREADY_EXISTS, NOT_FOUND: the sync raced a change its cache
//     had not shown yet. Retried with back-off, logged at debug: routine.
//   - UNAVAILABLE, DEADLINE_EXCEEDED: no API replica answered in time (the
//     client has already tried every one). Retried with back-off, logged at
//     debug: while the API is away every key fails like this, and the
//     component's own health and lease loops say so once.
//   - Anything else: retried with back-off and logged at warn with the
//     number of retries so far.
//
// Back-off is per key, exponential on the loop's clock (DefaultRateLimiter
// unless Config.RateLimiter says otherwise); a key added again while it
// waits is synced at once.
//
// # Starting
//
// Run waits until every informer in Config.WaitFor has synced before the
// first sync, then runs Config.Prepare, if any, then starts the workers and
// the Config.Resync timer (Started is closed then). If its context ends
// first, Run returns nil: the loop was stopped, it did not fail.
//
// # Concurrency
//
// Add, AddAfter, AddRateLimited and Len are safe for concurrent use and may be called
// before Run (the keys wait for the workers) and after it (they are
// dropped). The queue never hands one key to two workers at once, and a key
// added while it is being synced is synced again afterwards. A Loop runs
// once.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"

	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/informer"
)

// Back-off of DefaultRateLimiter.
const (
	DefaultRetryBaseDelay = 5 * time.Millisecond
	DefaultRetryMaxDelay  = 60 * time.Second
)

// DefaultRateLimiter is the back-off of a key whose sync failed: 5 ms,
// doubling with every failure, up to 60 s.
func DefaultRateLimiter() workqueue.TypedRateLimiter[string] {
	return workqueue.NewTypedItemExponentialFailureRateLimiter[string](DefaultRetryBaseDelay, DefaultRetryMaxDelay)
}

// SyncFunc brings the state named by key in line with what it should be.
// It must be idempotent: a key is synced again after a failure, after any
// change, and after a failover, whatever happened before.
type SyncFunc func(ctx context.Context, key string) error

// Options are the settings a component passes to each of its loops; a
// controller's own Options carry them as a field (Loop), and the controller
// uses the same logger and clock for its own work.
type Options struct {
	// Workers is the number of keys synced at once; default 1.
	Workers int
	// Logger; it should say which loop this is (the controllers add
	// "controller"). Default discard.
	Logger *slog.Logger
	// Clock paces back-off and AddAfter; default the real clock.
	Clock clock.WithTicker
	// Metrics, if set, receives the queue's and the syncs' metrics.
	Metrics *Metrics
}

// Complete returns o with its defaults filled in.
func (o Options) Complete() Options {
	if o.Workers == 0 {
		o.Workers = 1
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	return o
}

// Config is everything a Loop needs.
type Config struct {
	// Name names the loop in metrics ("name") and errors. Required.
	Name string
	// Sync is called for each key. Required.
	Sync SyncFunc
	// WaitFor are the informers that must have synced before the first
	// sync. They may be shared; the Loop does not run them.
	WaitFor []*informer.Informer
	// Prepare, if set, runs after the caches have synced and before the
	// first sync: what a controller must know before it acts. An error
	// ends Run with that error, unless Run's context has ended.
	Prepare func(ctx context.Context) error
	// Resync, if set, is called every ResyncPeriod on the loop's clock
	// while the workers run (the first time one period after they start):
	// it queues what time alone makes due, or everything, as a safety net
	// for a missed event.
	Resync       func(ctx context.Context)
	ResyncPeriod time.Duration
	// RateLimiter is the per-key back-off; default DefaultRateLimiter().
	RateLimiter workqueue.TypedRateLimiter[string]
	// Options: workers, logger, clock, metrics.
	Options
}

// Loop is one work queue and its workers. See the package doc.
type Loop struct {
	name         string
	workers      int
	sync         SyncFunc
	waitFor      []*informer.Informer
	prepare      func(ctx context.Context) error
	resync       func(ctx context.Context)
	resyncPeriod time.Duration
	log          *slog.Logger
	clock        clock.WithTicker
	metrics      *Metrics
	queue        workqueue.TypedRateLimitingInterface[string]
	started      atomic.Bool
	workersUp    chan struct{} // closed once the workers run
}

// New validates cfg and returns a Loop whose queue accepts keys at once;
// nothing is synced before Run.
func New(cfg Config) (*Loop, error) {
	cfg.Options = cfg.Options.Complete()
	switch {
	case cfg.Name == "":
		return nil, errors.New("reconcile: Config.Name is empty")
	case cfg.Sync == nil:
		return nil, fmt.Errorf("reconcile: loop %s: Config.Sync is nil", cfg.Name)
	case cfg.Workers < 1:
		return nil, fmt.Errorf("reconcile: loop %s: Options.Workers is %d: at least 1 is needed", cfg.Name, cfg.Workers)
	}
	if cfg.Resync != nil && cfg.ResyncPeriod <= 0 {
		return nil, fmt.Errorf("reconcile: loop %s: Config.ResyncPeriod is %v: a Resync needs a positive period", cfg.Name, cfg.ResyncPeriod)
	}
	for i, inf := range cfg.WaitFor {
		if inf == nil {
			return nil, fmt.Errorf("reconcile: loop %s: Config.WaitFor[%d] is nil", cfg.Name, i)
		}
	}
	if cfg.RateLimiter == nil {
		cfg.RateLimiter = DefaultRateLimiter()
	}
	// A queue without a name reports no metrics (and starts no goroutine
	// for them); the workqueue's process-wide default provider is never used.
	queueConfig := workqueue.TypedRateLimitingQueueConfig[string]{Clock: cfg.Clock}
	if cfg.Metrics != nil {
		queueConfig.Name, queueConfig.MetricsProvider = cfg.Name, cfg.Metrics
	}
	return &Loop{
		name:         cfg.Name,
		workers:      cfg.Workers,
		sync:         cfg.Sync,
		waitFor:      cfg.WaitFor,
		prepare:      cfg.Prepare,
		resync:       cfg.Resync,
		resyncPeriod: cfg.ResyncPeriod,
		log:          cfg.Logger,
		clock:        cfg.Clock,
		metrics:      cfg.Metrics,
		queue:        workqueue.NewTypedRateLimitingQueueWithConfig(cfg.RateLimiter, queueConfig),
		workersUp:    make(chan struct{}),
	}, nil
}

// Add asks for key to be synced.
func (l *Loop) Add(key string) { l.queue.Add(key) }

// AddAfter asks for key to be synced once d has passed on the loop's clock.
func (l *Loop) AddAfter(key string, d time.Duration) { l.queue.AddAfter(key, d) }

// AddRateLimited asks for key to be synced again once its back-off has
// passed: for work the sync started but that failed later (a process that
// would not stop).
func (l *Loop) AddRateLimited(key string) { l.queue.AddRateLimited(key) }

// Len is the number of keys waiting to be synced.
func (l *Loop) Len() int { return l.queue.Len() }

// Started is closed once the caches have synced, Prepare has run, and the
// workers (and the resync timer) are running.
func (l *Loop) Started() <-chan struct{} { return l.workersUp }

// Run waits for the caches, runs Prepare, and syncs keys with the
// configured workers (and calls Resync) until ctx ends or a sync finds the
// lease lost. It returns nil once the workers have stopped; an error if
// Prepare failed or Run was called before.
func (l *Loop) Run(ctx context.Context) error {
	if !l.started.CompareAndSwap(false, true) {
		return fmt.Errorf("reconcile: loop %s: Run called twice", l.name)
	}
	defer l.queue.ShutDown()
	defer l.metrics.stopped(l.name)

	if len(l.waitFor) > 0 {
		l.log.Info("waiting for the caches to sync")
		if !informer.WaitForCacheSync(ctx, l.waitFor...) {
			l.log.Info("stopped before the caches synced")
			return nil
		}
	}
	if l.prepare != nil {
		if err := l.prepare(ctx); err != nil {
			if ctx.Err() != nil {
				l.log.Info("stopped while preparing")
				return nil
			}
			return fmt.Errorf("reconcile: loop %s: %w", l.name, err)
		}
	}

	workCtx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	var wg sync.WaitGroup
	if l.resync != nil {
		ticker := l.clock.NewTicker(l.resyncPeriod)
		defer ticker.Stop()
		wg.Go(func() {
			for {
				select {
				case <-workCtx.Done():
					return
				case <-ticker.C():
					l.resync(workCtx)
				}
			}
		})
	}
	for range l.workers {
		wg.Go(func() {
			for l.processNext(workCtx, stopWork) {
			}
		})
	}
	l.log.Info("started", "workers", l.workers)
	close(l.workersUp)
	<-workCtx.Done()
	l.queue.ShutDown() // the workers drain what is left without syncing
	wg.Wait()
	l.log.Info("stopped")
	return nil
}

// outcome is what a sync's result means for its key; see the package doc.
type outcome string

const (
	outcomeDone        outcome = "done"
	outcomeStopping    outcome = "stopping"
	outcomeLeaseLost   outcome = "lease-lost"
	outcomeRaced       outcome = "raced"
	outcomeUnreachable outcome = "unreachable"
	outcomeFailed      outcome = "failed"
)

func classify(ctx context.Context, err error) outcome {
	switch {
	case err == nil:
		return outcomeDone
	case ctx.Err() != nil:
		return outcomeStopping
	case apierrors.Is(err, apierrors.ReasonLeaseNotHeld):
		return outcomeLeaseLost
	}
	switch apierrors.Code(err) {
	case codes.Aborted, codes.AlreadyExists, codes.NotFound:
		return outcomeRaced
	case codes.Unavailable, codes.DeadlineExceeded:
		return outcomeUnreachable
	}
	return outcomeFailed
}

// processNext syncs one key; false once the queue is shut down and empty.
func (l *Loop) processNext(ctx context.Context, stopWork context.CancelFunc) bool {
	key, quit := l.queue.Get()
	if quit {
		return false
	}
	defer l.queue.Done(key)
	if ctx.Err() != nil {
		return true // stopping: drain without acting
	}
	err := l.sync(ctx, key)
	out := classify(ctx, err)
	l.metrics.synced(l.name, out)
	switch out {
	case outcomeDone:
		l.queue.Forget(key)
	case outcomeStopping:
		// The next run starts from a full resync.
	case outcomeLeaseLost:
		l.log.Warn("the lease is no longer held: this replica stops acting", "key", key, "error", err)
		stopWork()
	case outcomeRaced:
		l.log.Debug("sync raced a change; retrying", "key", key, "error", err)
		l.queue.AddRateLimited(key)
	case outcomeUnreachable:
		l.log.Debug("the API did not answer; retrying", "key", key, "retries", l.queue.NumRequeues(key), "error", err)
		l.queue.AddRateLimited(key)
	default:
		l.log.Warn("sync failed; retrying", "key", key, "retries", l.queue.NumRequeues(key), "error", err)
		l.queue.AddRateLimited(key)
	}
	return true
}
