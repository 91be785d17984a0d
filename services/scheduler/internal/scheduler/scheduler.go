// Package scheduler assigns pending pods to nodes: it watches the pods that
// have no node (and every bound pod, to know what each node already runs),
// decides for one pod at a time with package framework, and binds it with a
// compare-and-swap PodService/BindPod, writing a Scheduled or FailedScheduling
// event.
//
// The decision for a pod is made on the scheduler's cache (package cache),
// and the pod is assumed on its node in the same step; the bind call then runs
// in the background (at most Options.MaxBindsInFlight at once) while the next
// pod is decided, which already counts the previous one. A failed bind
// forgets the assumption; a bind refused because the pod was bound meanwhile
// (by someone else, or deleted) drops the pod: the bind never overrides
// another placement.
//
// Pods no node can take wait in the queue (package queue) until the cluster
// changes: a node is added or changes, a bound pod goes away or finishes, an
// assumption is dropped.
//
// A Scheduler is meant to run while its replica holds the scheduler lease:
// Run's ctx carries the fence, so every write (binds, events) is refused once
// the lease is lost, and the scheduler stops when that ctx ends. It owns its
// informers, started by Run and stopped when Run returns, so a new leader
// starts from a fresh list of pods and nodes.
//
// # Concurrency
//
// New, then Run once. Decisions are made on Run's goroutine, one at a time;
// informer handlers (two goroutines) update the cache and the queue, which
// have their own locks; bind calls run on goroutines of their own that Run
// waits for before it returns.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"k8s.io/utils/clock"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/events"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/scheduler/internal/cache"
	"github.com/capstan-dev/capstan/services/scheduler/internal/framework"
	"github.com/capstan-dev/capstan/services/scheduler/internal/queue"
)

// Component is the event source component of the scheduler.
const Component = "scheduler"

// Event reasons, as kube-scheduler's.
const (
	ReasonScheduled        = "Scheduled"
	ReasonFailedScheduling = "FailedScheduling"
)

// Defaults of Options.
const (
	DefaultMaxBindsInFlight = 32
	DefaultAssumeTTL        = cache.DefaultAssumeTTL
	// expireInterval is how often assumptions are checked for expiry.
	expireInterval = time.Second
)

// Options configure a Scheduler; the zero value (with defaults) is fine.
type Options struct {
	// Identity names this replica, as the host of its events. Default: the
	// host name.
	Identity string
	// Recorder writes the Scheduled and FailedScheduling events. Default: a
	// Recorder of the Scheduler's own (source component "scheduler", host
	// Identity). Run does not wait for events still pending when it returns
	// (a clean stop hands the lease over without waiting for them); the
	// Recorder writes them in the background, fenced like every write.
	Recorder *events.Recorder
	// Logger; default discard.
	Logger *slog.Logger
	// Clock, for tests; default real.
	Clock clock.WithTicker
	// MaxBindsInFlight bounds the BindPod calls running at once;
	// default 32.
	MaxBindsInFlight int
	// AssumeTTL is how long a pod whose bind succeeded counts as placed
	// without the watch confirming it; default 30 s.
	AssumeTTL time.Duration
	// InitialBackoff and MaxBackoff bound the wait of a pod after a failed
	// attempt (doubling per attempt); defaults 1 s and 10 s.
	InitialBackoff, MaxBackoff time.Duration
	// MaxUnschedulable is the longest an unschedulable pod waits for a
	// cluster change before it is tried again anyway; default 60 s.
	MaxUnschedulable time.Duration
}

// Scheduler binds pending pods to nodes. See the package doc.
type Scheduler struct {
	client   *client.Client
	opts     Options
	log      *slog.Logger
	recorder *events.Recorder

	pods  *informer.Typed[*capstanv1.Pod]
	nodes *informer.Typed[*capstanv1.Node]
	cache *cache.Cache
	queue *queue.Queue
	// rng breaks ties; used by Run's goroutine only.
	rng *rand.Rand

	bindSlots chan struct{}
	binds     sync.WaitGroup
	started   atomic.Bool
}

// New checks opts and builds a Scheduler on c; nothing happens until Run.
func New(c *client.Client, opts Options) (*Scheduler, error) {
	if c == nil {
		return nil, errors.New("scheduler: a client is required")
	}
	for name, d := range map[string]time.Duration{
		"AssumeTTL": opts.AssumeTTL, "InitialBackoff": opts.InitialBackoff,
		"MaxBackoff": opts.MaxBackoff, "MaxUnschedulable": opts.MaxUnschedulable,
	} {
		if d < 0 {
			return nil, fmt.Errorf("scheduler: Options.%s is %v; it must not be negative", name, d)
		}
	}
	if opts.InitialBackoff > 0 && opts.MaxBackoff > 0 && opts.InitialBackoff > opts.MaxBackoff {
		return nil, fmt.Errorf("scheduler: Options.InitialBackoff (%v) is longer than Options.MaxBackoff (%v)", opts.InitialBackoff, opts.MaxBackoff)
	}
	if opts.MaxBindsInFlight < 0 {
		return nil, fmt.Errorf("scheduler: Options.MaxBindsInFlight is %d; it must not be negative", opts.MaxBindsInFlight)
	}
	if opts.MaxBindsInFlight == 0 {
		opts.MaxBindsInFlight = DefaultMaxBindsInFlight
	}
	if opts.AssumeTTL == 0 {
		opts.AssumeTTL = DefaultAssumeTTL
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Identity == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("scheduler: no Options.Identity and no host name: %w", err)
		}
		opts.Identity = host
	}
	s := &Scheduler{
		client:    c,
		opts:      opts,
		log:       opts.Logger,
		recorder:  opts.Recorder,
		cache:     cache.New(opts.Clock, opts.AssumeTTL),
		rng:       rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		bindSlots: make(chan struct{}, opts.MaxBindsInFlight),
		queue: queue.New(queue.Options{
			Clock:            opts.Clock,
			InitialBackoff:   opts.InitialBackoff,
			MaxBackoff:       opts.MaxBackoff,
			MaxUnschedulable: opts.MaxUnschedulable,
		}),
	}
	if s.recorder == nil {
		s.recorder = events.NewRecorder(c, &capstanv1.EventSource{Component: Component, Host: opts.Identity}, opts.Logger)
	}
	var err error
	// Every namespace, bound pods included: they are what the nodes run.
	s.pods, err = informer.NewTyped[*capstanv1.Pod](c, informer.Options{
		Namespace: resource.AllNamespaces, Logger: opts.Logger.With("informer", "pods"),
	})
	if err != nil {
		return nil, fmt.Errorf("scheduler: pod informer: %w", err)
	}
	s.nodes, err = informer.NewTyped[*capstanv1.Node](c, informer.Options{Logger: opts.Logger.With("informer", "nodes")})
	if err != nil {
		return nil, fmt.Errorf("scheduler: node informer: %w", err)
	}
	s.pods.AddEventHandler(informer.TypedHandler[*capstanv1.Pod]{
		OnAdd: s.onPodAdd, OnUpdate: s.onPodUpdate, OnDelete: s.onPodDelete,
	})
	s.nodes.AddEventHandler(informer.TypedHandler[*capstanv1.Node]{
		OnAdd: s.onNodeAdd, OnUpdate: s.onNodeUpdate, OnDelete: s.onNodeDelete,
	})
	return s, nil
}

// Run schedules pods until ctx ends, then waits for the bind calls in flight
// (which fail with ctx) and its informers, and returns nil. Every write uses
// ctx, so a fenced ctx fences them all. Run may be called once; it returns an
// error if called again or if its informers fail.
func (s *Scheduler) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("scheduler: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var background sync.WaitGroup
	var informerErr error
	var errOnce sync.Once
	for _, inf := range []*informer.Informer{s.pods.Informer, s.nodes.Informer} {
		background.Go(func() {
			if err := inf.Run(ctx); err != nil {
				errOnce.Do(func() { informerErr = fmt.Errorf("scheduler: %s informer: %w", inf.Kind().Name, err) })
				cancel()
			}
		})
	}
	background.Go(func() { s.queue.Run(ctx) })
	background.Go(func() { s.expireAssumptions(ctx) })

	if informer.WaitForCacheSync(ctx, s.pods.Informer, s.nodes.Informer) {
		s.log.Info("scheduling", "identity", s.opts.Identity,
			"nodes", len(s.nodes.List()), "pending-pods", s.queue.Stats().Active)
		for {
			item, ok := s.queue.Pop(ctx)
			if !ok {
				break
			}
			s.scheduleOne(ctx, item)
		}
	}
	s.binds.Wait()
	cancel()
	background.Wait()
	s.log.Info("stopped scheduling", "identity", s.opts.Identity)
	return informerErr
}

// scheduleOne makes the decision for one popped pod and starts its bind.
func (s *Scheduler) scheduleOne(ctx context.Context, item queue.Item) {
	namespace, name := informer.SplitKey(item.Key)
	pod, ok := s.pods.Get(namespace, name)
	if !ok || !pending(pod) || s.cache.IsAssumed(item.Key) {
		// Gone, bound, finished, or its bind is on its way: nothing to do.
		s.queue.Done(item)
		return
	}
	info, err := framework.NewPodInfo(pod)
	if err != nil {
		s.log.Warn("pod has invalid requests", "pod", item.Key, "err", err)
		s.recorder.Eventf(ctx, pod, wellknown.EventWarning, ReasonFailedScheduling, "Invalid resource requests: %v", err)
		s.queue.Requeue(item, true)
		return
	}
	nodeName, err := s.cache.Place(info, func(nodes []*framework.NodeInfo) (string, error) {
		d, err := framework.Schedule(info, nodes, s.rng)
		return d.Node, err
	})
	if err != nil {
		var fit *framework.FitError
		if !errors.As(err, &fit) {
			s.log.Error("scheduling failed", "pod", item.Key, "err", err)
			s.queue.Requeue(item, false)
			return
		}
		s.log.Debug("unschedulable", "pod", item.Key, "attempts", item.Attempts+1, "reason", err.Error())
		s.recorder.Eventf(ctx, pod, wellknown.EventWarning, ReasonFailedScheduling, "%s", err.Error())
		s.queue.Requeue(item, true)
		return
	}
	select {
	case s.bindSlots <- struct{}{}:
	case <-ctx.Done():
		s.cache.Forget(item.Key)
		s.queue.Done(item)
		return
	}
	s.binds.Go(func() {
		defer func() { <-s.bindSlots }()
		s.bind(ctx, item, pod, nodeName)
	})
}

// bind binds pod, assumed on nodeName, and settles the assumption and the
// queue by the answer.
func (s *Scheduler) bind(ctx context.Context, item queue.Item, pod *capstanv1.Pod, nodeName string) {
	meta := pod.GetMetadata()
	// BindPod binds only an unbound pod, and with the uid and
	// resource_version only the pod as the decision saw it: a late or
	// repeated bind can neither move a bound pod, nor bind a new pod of the
	// same name, nor one whose spec changed after the decision.
	_, err := s.client.Pods().BindPod(ctx, &capstanv1.BindPodRequest{
		Namespace: meta.GetNamespace(), Name: meta.GetName(), NodeName: nodeName,
		Uid: meta.GetUid(), ResourceVersion: meta.GetResourceVersion(),
	})
	switch {
	case err == nil:
		s.cache.FinishBinding(item.Key)
		s.queue.Done(item)
		s.log.Debug("bound", "pod", item.Key, "node", nodeName)
		s.recorder.Eventf(ctx, pod, wellknown.EventNormal, ReasonScheduled,
			"Successfully assigned %s/%s to %s", meta.GetNamespace(), meta.GetName(), nodeName)
		return
	case apierrors.Is(err, apierrors.ReasonLeaseNotHeld) || ctx.Err() != nil:
		// Deposed or stopping: whether the pod is bound is for the next
		// leader to find out from a fresh list.
		s.log.Info("bind abandoned", "pod", item.Key, "node", nodeName, "err", err)
		s.forget(item.Key)
		s.queue.Done(item)
	case apierrors.Code(err) == codes.FailedPrecondition || apierrors.IsNotFound(err) || apierrors.IsConflict(err):
		// Bound elsewhere meanwhile, deleted, or deleted and re-created (the
		// uid no longer matches): never bind over it. The watch brings the
		// pod's real state, and a new incarnation is queued by it.
		s.log.Info("pod changed before its bind: dropped", "pod", item.Key, "node", nodeName, "err", err)
		s.forget(item.Key)
		s.queue.Done(item)
	default:
		s.log.Warn("bind failed; will retry", "pod", item.Key, "node", nodeName, "err", err)
		s.recorder.Eventf(ctx, pod, wellknown.EventWarning, ReasonFailedScheduling, "Binding rejected: %v", err)
		s.forget(item.Key)
		s.queue.Requeue(item, false)
	}
}

// forget drops an assumption; the room it frees may let waiting pods fit.
func (s *Scheduler) forget(key string) {
	if s.cache.Forget(key) {
		s.queue.MoveAll()
	}
}

// expireAssumptions drops, every second until ctx ends, the assumptions the
// watch never confirmed.
func (s *Scheduler) expireAssumptions(ctx context.Context) {
	ticker := s.opts.Clock.NewTicker(expireInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
			if expired := s.cache.Expire(); len(expired) > 0 {
				s.log.Warn("bound pods never confirmed by the watch: assumptions dropped", "pods", expired)
				s.queue.MoveAll()
			}
		}
	}
}

// pending reports whether pod waits for a node: unbound, not being deleted,
// not finished.
func pending(pod *capstanv1.Pod) bool {
	return pod.GetSpec().GetNodeName() == "" && pod.GetMetadata().GetDeleteTime() == nil && !terminal(pod)
}

// terminal reports whether pod has finished: it holds no resources.
func terminal(pod *capstanv1.Pod) bool {
	phase := pod.GetStatus().GetPhase()
	return phase == wellknown.PodSucceeded || phase == wellknown.PodFailed
}

// setBoundPod records a bound pod in the cache, or takes a finished one out.
func (s *Scheduler) setBoundPod(pod *capstanv1.Pod) {
	key := informer.Key(pod)
	if terminal(pod) {
		if s.cache.RemovePod(key) {
			s.queue.MoveAll()
		}
		return
	}
	info, err := framework.NewPodInfo(pod)
	if err != nil {
		s.log.Warn("bound pod has invalid requests; they count 0", "pod", key, "err", err)
	}
	if s.cache.SetPod(info, pod.GetSpec().GetNodeName()) {
		s.queue.MoveAll()
	}
}

func (s *Scheduler) onPodAdd(pod *capstanv1.Pod) {
	key := informer.Key(pod)
	if pod.GetSpec().GetNodeName() != "" {
		s.setBoundPod(pod)
		s.queue.Delete(key)
		return
	}
	if pending(pod) {
		s.queue.Add(key)
	}
}

func (s *Scheduler) onPodUpdate(old, pod *capstanv1.Pod) {
	key := informer.Key(pod)
	if node := pod.GetSpec().GetNodeName(); node != "" {
		unchanged := old.GetSpec().GetNodeName() == node && terminal(old) == terminal(pod) &&
			old.GetMetadata().GetGeneration() == pod.GetMetadata().GetGeneration()
		if !unchanged {
			s.setBoundPod(pod)
		}
		s.queue.Delete(key)
		return
	}
	switch {
	case !pending(pod):
		s.queue.Delete(key)
	case old.GetMetadata().GetResourceVersion() == pod.GetMetadata().GetResourceVersion():
		s.queue.Add(key) // a resync
	default:
		s.queue.Update(key)
	}
}

func (s *Scheduler) onPodDelete(pod *capstanv1.Pod) {
	key := informer.Key(pod)
	s.queue.Delete(key)
	if s.cache.RemovePod(key) {
		s.queue.MoveAll()
	}
}

func (s *Scheduler) onNodeAdd(node *capstanv1.Node) {
	if err := s.cache.SetNode(node); err != nil {
		s.log.Warn("node has invalid allocatable resources; they count 0", "node", node.GetMetadata().GetName(), "err", err)
	}
	s.queue.MoveAll()
}

func (s *Scheduler) onNodeUpdate(old, node *capstanv1.Node) {
	if err := s.cache.SetNode(node); err != nil {
		s.log.Warn("node has invalid allocatable resources; they count 0", "node", node.GetMetadata().GetName(), "err", err)
	}
	// A heartbeat changes nothing a filter looks at; only a change that may
	// let a pod fit wakes the unschedulable ones.
	if !maps.Equal(old.GetMetadata().GetLabels(), node.GetMetadata().GetLabels()) ||
		!proto.Equal(old.GetSpec(), node.GetSpec()) ||
		!maps.Equal(old.GetStatus().GetAllocatable(), node.GetStatus().GetAllocatable()) ||
		ready(old) != ready(node) {
		s.queue.MoveAll()
	}
}

func (s *Scheduler) onNodeDelete(node *capstanv1.Node) {
	s.cache.RemoveNode(node.GetMetadata().GetName())
}

func ready(node *capstanv1.Node) bool {
	for _, c := range node.GetStatus().GetConditions() {
		if c.GetType() == wellknown.NodeReady {
			return c.GetStatus() == wellknown.ConditionTrue
		}
	}
	return false
}
