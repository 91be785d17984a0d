package etcd3

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/storage"
)

// watchBuffer is how many events a watch holds for a slow consumer before
// it stops reading from etcd (etcd's client buffers the rest).
const watchBuffer = 100

// Watch implements storage.Interface.
//
// From a ResourceVersion it streams every change after it. From 0 it first
// lists the prefix and sends an Added event for each matching object, then
// streams every change after the list's revision. The watch has its own etcd
// watch stream, so the progress requests behind bookmarks concern it alone.
// It ends when ctx is done, Stop is called, etcd reports the start revision
// compacted (Err: OUT_OF_RANGE) or the stream breaks (Err: UNAVAILABLE).
func (s *Store) Watch(ctx context.Context, prefix string, newObj storage.NewFunc, opts storage.WatchOptions) (storage.Watcher, error) {
	var initial []storage.Object
	from := opts.ResourceVersion
	if from < 0 {
		return nil, apierrors.Invalid(resource.FieldResourceVersion, "must not be negative")
	}
	if from == 0 {
		list, err := s.List(ctx, prefix, newObj, storage.ListOptions{Predicate: opts.Predicate})
		if err != nil {
			return nil, err
		}
		initial, from = list.Items, list.Revision
	}
	ctx, cancel := context.WithCancel(ctx)
	etcdWatcher := clientv3.NewWatcher(s.client)
	// The stream is keyed by ctx's metadata: progress requests must use the
	// same ctx as the watch to reach it.
	streamCtx := withLeader(ctx)
	w := &watcher{
		store:       s,
		prefix:      prefix,
		newObj:      newObj,
		opts:        opts,
		from:        from,
		events:      make(chan storage.Event, watchBuffer),
		done:        make(chan struct{}),
		ctx:         ctx,
		cancel:      cancel,
		etcdWatcher: etcdWatcher,
		streamCtx:   streamCtx,
	}
	// The etcd watch starts at from itself, not from+1, and run drops the
	// events of revision from: etcd answers progress requests only once its
	// revision has reached a watch's start, and an idle store may stay at
	// from for good.
	responses := w.open(from)
	go func() {
		defer close(w.done)
		defer close(w.events)
		defer func() {
			cancel()
			if err := etcdWatcher.Close(); err != nil {
				s.log.Debug("close etcd watcher", "prefix", prefix, "error", err)
			}
		}()
		w.run(initial, responses)
	}()
	return w, nil
}

// watcher is one open Watch. Its goroutine (run) is the only sender on
// events; err is written once, before events is closed.
type watcher struct {
	store  *Store
	prefix string
	newObj storage.NewFunc
	opts   storage.WatchOptions
	// from is the revision after which changes are streamed.
	from int64

	events chan storage.Event
	done   chan struct{}

	// ctx ends the watch: Stop cancels it, and so does the caller's context.
	ctx         context.Context
	cancel      context.CancelFunc
	etcdWatcher clientv3.Watcher
	streamCtx   context.Context

	mu  sync.Mutex
	err error
}

// open starts the etcd watch of the prefix at revision rev.
func (w *watcher) open(rev int64) clientv3.WatchChan {
	return w.etcdWatcher.Watch(w.streamCtx, w.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithPrevKV())
}

func (w *watcher) Events() <-chan storage.Event { return w.events }

// Stop ends the watch and returns once its goroutine and etcd stream are
// gone. It cancels the watch's context rather than only signalling the
// goroutine, because that may be blocked in an etcd call.
func (w *watcher) Stop() {
	w.cancel()
	<-w.done
}

func (w *watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *watcher) fail(err error) {
	w.mu.Lock()
	w.err = err
	w.mu.Unlock()
}

// send delivers ev unless the watch is ending, so a consumer that stops
// reading can never block the goroutine.
func (w *watcher) send(ev storage.Event) bool {
	select {
	case w.events <- ev:
		return true
	case <-w.ctx.Done():
		return false
	}
}

// stopped reports whether the watch was ended by Stop or its caller, in
// which case it ends without an error.
func (w *watcher) stopped() bool { return w.ctx.Err() != nil }

// run sends the initial objects, then turns etcd watch responses into
// events until the watch ends.
func (w *watcher) run(initial []storage.Object, responses clientv3.WatchChan) {
	for _, obj := range initial {
		if !w.send(storage.Event{Type: storage.Added, Object: obj, Revision: resource.Meta(obj).GetResourceVersion()}) {
			return
		}
	}
	// idle fires when no event was sent for BookmarkInterval.
	var idle <-chan time.Time
	resetIdle := func() {}
	if interval := w.opts.BookmarkInterval; interval > 0 {
		timer := time.NewTimer(interval)
		defer timer.Stop()
		idle = timer.C
		resetIdle = func() { timer.Reset(interval) }
	}
	reopened := false
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-idle:
			// etcd answers with a progress notification once the stream has
			// sent everything up to its revision; it becomes a bookmark.
			if err := w.etcdWatcher.RequestProgress(w.streamCtx); err != nil && !w.stopped() {
				w.store.log.Debug("watch progress request failed", "error", err)
			}
			resetIdle()
		case resp, ok := <-responses:
			if !ok {
				if !w.stopped() {
					w.fail(apierrors.NoQuorum(errors.New("the etcd watch stream closed")))
				}
				return
			}
			if resp.CompactRevision != 0 {
				if resp.CompactRevision == w.from+1 && !reopened {
					// Only revision from itself, which is not sent, is
					// gone: every change after it can still be streamed.
					responses, reopened = w.open(w.from+1), true
					continue
				}
				w.fail(apierrors.Expired(w.from, resp.CompactRevision))
				return
			}
			if err := resp.Err(); err != nil {
				if !w.stopped() {
					w.fail(statusOf(err))
				}
				return
			}
			if resp.IsProgressNotify() {
				if idle != nil {
					if !w.send(storage.Event{Type: storage.Bookmark, Revision: resp.Header.Revision}) {
						return
					}
					resetIdle()
				}
				continue
			}
			sent := false
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision <= w.from {
					continue
				}
				out, ok, err := w.translate(ev)
				if err != nil {
					w.fail(err)
					return
				}
				if !ok {
					continue
				}
				if !w.send(out) {
					return
				}
				sent = true
			}
			if sent {
				resetIdle()
			}
		}
	}
}

// translate turns an etcd event into the event a watcher with the
// predicate sees, if any: an object that starts matching is Added, one that
// stops matching is Deleted (with its new state).
func (w *watcher) translate(ev *clientv3.Event) (storage.Event, bool, error) {
	rev := ev.Kv.ModRevision
	pred := w.opts.Predicate
	if ev.Type == mvccpb.DELETE {
		if ev.PrevKv == nil {
			// Without the previous value (compacted away) the object is
			// known only by its key.
			obj := w.newObj()
			meta := resource.Meta(obj)
			_, meta.Namespace, meta.Name = objectRef(string(ev.Kv.Key))
			meta.ResourceVersion = rev
			return storage.Event{Type: storage.Deleted, Object: obj, Revision: rev}, true, nil
		}
		prev, err := w.store.decode(ev.PrevKv, w.newObj)
		if err != nil {
			return storage.Event{}, false, err
		}
		if !pred.Matches(prev) {
			return storage.Event{}, false, nil
		}
		resource.Meta(prev).ResourceVersion = rev
		return storage.Event{Type: storage.Deleted, Object: prev, Revision: rev}, true, nil
	}
	cur, err := w.store.decode(ev.Kv, w.newObj)
	if err != nil {
		return storage.Event{}, false, err
	}
	curMatches := pred.Matches(cur)
	if ev.IsCreate() {
		if !curMatches {
			return storage.Event{}, false, nil
		}
		return storage.Event{Type: storage.Added, Object: cur, Revision: rev}, true, nil
	}
	// An unknown previous state (compacted away) counts as matching: a
	// consumer treats Modified of an unknown object as an add, and Deleted of
	// one as nothing.
	prevMatches := true
	if pred != nil && ev.PrevKv != nil {
		prev, err := w.store.decode(ev.PrevKv, w.newObj)
		if err != nil {
			return storage.Event{}, false, err
		}
		prevMatches = pred.Matches(prev)
	}
	switch {
	case curMatches && prevMatches:
		return storage.Event{Type: storage.Modified, Object: cur, Revision: rev}, true, nil
	case curMatches:
		return storage.Event{Type: storage.Added, Object: cur, Revision: rev}, true, nil
	case prevMatches:
		return storage.Event{Type: storage.Deleted, Object: cur, Revision: rev}, true, nil
	default:
		return storage.Event{}, false, nil
	}
}
