// Package informer keeps a local, indexed cache of one kind of object in step
// with the API servers and tells handlers about every change: the Kubernetes
// list + watch pattern on top of package client.
//
// Run lists the objects, fills the cache, then watches from the list's
// resource_version. The client's Watcher already survives the loss of a
// replica; when a resume is refused because the version was compacted
// (apierrors.IsExpired), the informer lists again and delivers the
// difference with its cache as adds, updates and deletes, so handlers never
// miss the end state of an object even across a compaction.
//
// # Concurrency
//
// Get, GetByKey, List, ByIndex, HasSynced and ResourceVersion are safe for
// concurrent use at any time. Handlers are called from a single goroutine,
// in the order of the changes, after the cache already holds the change (a
// handler reading the cache sees that state or a newer one); a slow handler
// delays later notifications but never the watch. Objects returned by the
// cache and passed to handlers are shared: never modify one; clone it first
// (resource.Clone).
package informer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
)

// listPageSize pages the informer's lists.
const listPageSize = 500

// Back-off between failed list/watch rounds.
const (
	retryFirstDelay = 200 * time.Millisecond
	retryMaxDelay   = 5 * time.Second
)

// Options select what an informer caches.
type Options struct {
	// Namespace; empty means "default", resource.AllNamespaces ("*") every
	// namespace. Ignored for cluster-scoped kinds.
	Namespace string
	// LabelSelector in Kubernetes syntax.
	LabelSelector string
	// FieldSelector, as for List.
	FieldSelector string
	// ResyncPeriod, if positive, calls every handler's OnUpdate(obj, obj)
	// for each cached object this often, so level-triggered controllers
	// revisit everything.
	ResyncPeriod time.Duration
	// Logger; default discard.
	Logger *slog.Logger
}

// Handler is told about changes. Nil functions are skipped.
type Handler struct {
	// OnAdd: an object appeared (or the handler was added after the cache
	// was filled: once for each cached object).
	OnAdd func(obj resource.Object)
	// OnUpdate: an object changed; also a resync (old == new then).
	OnUpdate func(old, new resource.Object)
	// OnDelete: an object is gone. obj is its last known state.
	OnDelete func(obj resource.Object)
}

// Informer caches one kind. See the package doc.
type Informer struct {
	client *client.Client
	kind   *resource.Kind
	opts   Options
	log    *slog.Logger

	started atomic.Bool
	synced  chan struct{} // closed once handlers have seen the first list
	version atomic.Int64

	// mu guards the cache and the handler list. Notifications are queued
	// under it, so their order is the order of the cache changes.
	mu       sync.RWMutex
	cache    *store
	handlers []*Handler // replaced, never changed in place
	queue    notificationQueue
}

// New returns an informer for kind through c; nothing happens until Run.
func New(c *client.Client, kind *resource.Kind, opts Options) (*Informer, error) {
	if c == nil {
		return nil, errors.New("informer: client is nil")
	}
	if kind == nil {
		return nil, errors.New("informer: kind is nil")
	}
	if opts.ResyncPeriod < 0 {
		return nil, fmt.Errorf("informer: Options.ResyncPeriod is %v: it must not be negative", opts.ResyncPeriod)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	inf := &Informer{
		client: c,
		kind:   kind,
		opts:   opts,
		log:    opts.Logger.With("informer", kind.Name, "namespace", opts.Namespace),
		synced: make(chan struct{}),
		cache:  newStore(),
	}
	inf.queue.init()
	if kind.Namespaced {
		inf.cache.addIndexer(NamespaceIndex, func(obj resource.Object) []string {
			return []string{obj.GetMetadata().GetNamespace()}
		})
	}
	return inf, nil
}

// Kind is the kind this informer caches.
func (inf *Informer) Kind() *resource.Kind { return inf.kind }

// AddIndexer adds an index; only before Run.
func (inf *Informer) AddIndexer(name string, fn IndexFunc) error {
	if inf.started.Load() {
		return fmt.Errorf("informer: AddIndexer(%q) after Run", name)
	}
	inf.mu.Lock()
	defer inf.mu.Unlock()
	if _, ok := inf.cache.indexers[name]; ok {
		return fmt.Errorf("informer: index %q already exists", name)
	}
	inf.cache.addIndexer(name, fn)
	return nil
}

// AddEventHandler registers h. Added while Run is going, h first gets
// OnAdd for every cached object, then the changes after them.
func (inf *Informer) AddEventHandler(h Handler) {
	inf.mu.Lock()
	defer inf.mu.Unlock()
	hp := &h
	inf.handlers = append(slices.Clip(inf.handlers), hp)
	if !inf.started.Load() {
		return
	}
	only := []*Handler{hp}
	for _, k := range sortedKeys(inf.cache.items) {
		inf.queue.push(notification{what: notifyAdd, obj: inf.cache.items[k], handlers: only})
	}
}

// Run fills the cache and keeps it current until ctx is cancelled; it then
// returns nil once its goroutines have ended. Handlers run on a goroutine of
// Run. Run may be called only once.
func (inf *Informer) Run(ctx context.Context) error {
	if !inf.started.CompareAndSwap(false, true) {
		return errors.New("informer: Run called twice")
	}
	var wg sync.WaitGroup
	wg.Go(func() { inf.dispatch(ctx) })
	if inf.opts.ResyncPeriod > 0 {
		wg.Go(func() { inf.resyncEvery(ctx, inf.opts.ResyncPeriod) })
	}
	inf.listAndWatch(ctx)
	wg.Wait()
	return nil
}

// HasSynced reports whether the first list is in the cache and every handler
// has been told about it.
func (inf *Informer) HasSynced() bool {
	select {
	case <-inf.synced:
		return true
	default:
		return false
	}
}

// WaitForSync waits until HasSynced or ctx ends, and reports HasSynced.
func (inf *Informer) WaitForSync(ctx context.Context) bool {
	select {
	case <-inf.synced:
		return true
	case <-ctx.Done():
		return inf.HasSynced()
	}
}

// WaitForCacheSync waits until every informer has synced or ctx ends; it
// reports whether all have.
func WaitForCacheSync(ctx context.Context, informers ...*Informer) bool {
	for _, inf := range informers {
		if !inf.WaitForSync(ctx) {
			return false
		}
	}
	return true
}

// ResourceVersion is the version the cache reflects: of the last list or
// watch event applied.
func (inf *Informer) ResourceVersion() int64 { return inf.version.Load() }

// Get returns the cached object namespace/name (namespace is ignored for a
// cluster-scoped kind; empty means "default" otherwise). The object is
// shared: clone it before changing it.
func (inf *Informer) Get(namespace, name string) (resource.Object, bool) {
	return inf.GetByKey(key(inf.kind.Namespace(namespace), name))
}

// GetByKey returns the cached object with this Key. The object is shared:
// clone it before changing it.
func (inf *Informer) GetByKey(k string) (resource.Object, bool) {
	inf.mu.RLock()
	defer inf.mu.RUnlock()
	obj, ok := inf.cache.items[k]
	return obj, ok
}

// List returns every cached object, in no particular order. The objects are
// shared: clone one before changing it.
func (inf *Informer) List() []resource.Object {
	inf.mu.RLock()
	defer inf.mu.RUnlock()
	out := make([]resource.Object, 0, len(inf.cache.items))
	for _, obj := range inf.cache.items {
		out = append(out, obj)
	}
	return out
}

// ByIndex returns the cached objects whose index name has value, in no
// particular order; nil for an unknown index. The objects are shared: clone
// one before changing it.
func (inf *Informer) ByIndex(name, value string) []resource.Object {
	inf.mu.RLock()
	defer inf.mu.RUnlock()
	out, ok := inf.cache.byIndex(name, value)
	if !ok {
		inf.log.Error("ByIndex on an unknown index", "index", name)
	}
	return out
}

// listAndWatch lists and watches until ctx ends, listing again whenever
// the watch cannot continue.
func (inf *Informer) listAndWatch(ctx context.Context) {
	delay := retryFirstDelay
	backOff := func() bool {
		ok := sleepCtx(ctx, delay)
		delay = min(2*delay, retryMaxDelay)
		return ok
	}
	for ctx.Err() == nil {
		version, err := inf.relist(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			inf.log.Warn("list failed, will retry", "error", err)
			if !backOff() {
				return
			}
			continue
		}
		err = inf.watch(ctx, version)
		if ctx.Err() != nil {
			return
		}
		if apierrors.IsExpired(err) {
			inf.log.Info("watch version compacted, listing again", "resource-version", inf.version.Load())
			delay = retryFirstDelay
			continue
		}
		inf.log.Warn("watch ended, listing again", "error", err)
		if !backOff() {
			return
		}
	}
}

// relist reads every object and makes the cache equal to the result,
// queueing the difference for the handlers. It returns the list's version.
func (inf *Informer) relist(ctx context.Context) (int64, error) {
	res, err := inf.client.ListAll(ctx, inf.kind, client.ListOptions{
		Namespace:     inf.opts.Namespace,
		LabelSelector: inf.opts.LabelSelector,
		FieldSelector: inf.opts.FieldSelector,
		PageSize:      listPageSize,
	})
	if err != nil {
		return 0, fmt.Errorf("informer: list %s: %w", inf.kind.Plural, err)
	}
	inf.mu.Lock()
	defer inf.mu.Unlock()
	handlers := inf.handlers
	seen := make(map[string]bool, len(res.Items))
	for _, obj := range res.Items {
		k := Key(obj)
		seen[k] = true
		if old, ok := inf.cache.items[k]; ok && old.GetMetadata().GetResourceVersion() == obj.GetMetadata().GetResourceVersion() {
			continue
		}
		if old, existed := inf.cache.put(k, obj); existed {
			inf.queue.push(notification{what: notifyUpdate, old: old, obj: obj, handlers: handlers})
		} else {
			inf.queue.push(notification{what: notifyAdd, obj: obj, handlers: handlers})
		}
	}
	for _, k := range sortedKeys(inf.cache.items) {
		if seen[k] {
			continue
		}
		old, _ := inf.cache.remove(k)
		inf.queue.push(notification{what: notifyDelete, obj: old, handlers: handlers})
	}
	inf.version.Store(res.ResourceVersion)
	if !inf.HasSynced() {
		inf.queue.push(notification{what: notifySynced, done: inf.synced})
	}
	return res.ResourceVersion, nil
}

// watch applies changes after version until the watch ends; it returns why.
func (inf *Informer) watch(ctx context.Context, version int64) error {
	w := inf.client.Watch(ctx, inf.kind, client.WatchOptions{
		Namespace:       inf.opts.Namespace,
		LabelSelector:   inf.opts.LabelSelector,
		FieldSelector:   inf.opts.FieldSelector,
		ResourceVersion: version,
	})
	defer w.Stop()
	for ev := range w.Events() {
		inf.apply(ev)
	}
	return w.Err()
}

func (inf *Informer) apply(ev client.WatchEvent) {
	if ev.Object == nil {
		return
	}
	k := Key(ev.Object)
	inf.mu.Lock()
	defer inf.mu.Unlock()
	handlers := inf.handlers
	switch ev.Type {
	case client.Added, client.Modified:
		if old, existed := inf.cache.put(k, ev.Object); existed {
			inf.queue.push(notification{what: notifyUpdate, old: old, obj: ev.Object, handlers: handlers})
		} else {
			inf.queue.push(notification{what: notifyAdd, obj: ev.Object, handlers: handlers})
		}
	case client.Deleted:
		if _, existed := inf.cache.remove(k); existed {
			inf.queue.push(notification{what: notifyDelete, obj: ev.Object, handlers: handlers})
		}
	default:
		inf.log.Warn("ignoring a watch event of unknown type", "type", ev.Type.String())
		return
	}
	inf.version.Store(ev.ResourceVersion)
}

// resyncEvery queues OnUpdate(obj, obj) for every cached object each period.
func (inf *Informer) resyncEvery(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		inf.mu.Lock()
		for _, k := range sortedKeys(inf.cache.items) {
			obj := inf.cache.items[k]
			inf.queue.push(notification{what: notifyUpdate, old: obj, obj: obj, handlers: inf.handlers})
		}
		inf.mu.Unlock()
	}
}

// dispatch calls the handlers for each queued notification, in order,
// until ctx ends.
func (inf *Informer) dispatch(ctx context.Context) {
	for {
		batch, ok := inf.queue.wait(ctx)
		if !ok {
			return
		}
		for _, n := range batch {
			if ctx.Err() != nil {
				return
			}
			n.deliver()
		}
	}
}

func sortedKeys(m map[string]resource.Object) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
