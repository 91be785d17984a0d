package client

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/resource"
)

// Watch event types, for switching on WatchEvent.Type.
const (
	Added    = capstanv1.WatchEventType_WATCH_EVENT_TYPE_ADDED
	Modified = capstanv1.WatchEventType_WATCH_EVENT_TYPE_MODIFIED
	Deleted  = capstanv1.WatchEventType_WATCH_EVENT_TYPE_DELETED
	Bookmark = capstanv1.WatchEventType_WATCH_EVENT_TYPE_BOOKMARK
)

// initialListPageSize pages the List that starts a watch from version 0.
const initialListPageSize = 500

// WatchOptions select what a Watch sees.
type WatchOptions struct {
	// Namespace; empty means "default", resource.AllNamespaces ("*") every
	// namespace. Ignored for cluster-scoped kinds.
	Namespace string
	// LabelSelector in Kubernetes syntax.
	LabelSelector string
	// FieldSelector, as for List.
	FieldSelector string
	// ResourceVersion: deliver every change after it. 0 means "now": first
	// an ADDED event for each existing object (read with a List), then every
	// later change.
	ResourceVersion int64
	// Bookmarks asks for BOOKMARK events to be delivered too. The watcher
	// resumes from them either way.
	Bookmarks bool
}

// WatchEvent is one change.
type WatchEvent struct {
	Type capstanv1.WatchEventType
	// Object after the change; for Deleted the last state before it. Nil
	// for Bookmark.
	Object resource.Object
	// ResourceVersion of the change; for Bookmark, the version up to which
	// every change has been delivered. The initial ADDED events of a watch
	// from version 0 carry their object's version and are followed, if
	// Bookmarks is set, by a BOOKMARK at the version of the List.
	ResourceVersion int64
}

// Watcher is a watch that survives the loss of its replica. Its events are
// delivered in order on one unbuffered channel, which is closed when the
// watch ends: after Stop or the cancellation of its context (Err is nil
// then), or on an error that resuming cannot fix (Err says which; an
// OUT_OF_RANGE apierrors.IsExpired error means "list again"). The owner must
// call Stop or cancel the context, or the watch goroutine lives on.
type Watcher struct {
	c      *Client
	kind   *resource.Kind
	opts   WatchOptions
	log    *slog.Logger
	events chan WatchEvent
	cancel context.CancelFunc
	done   chan struct{}

	// lastVersion is where the watch resumes: the version of the last event
	// or bookmark delivered.
	lastVersion atomic.Int64
	// resumes counts re-opened streams (tests look at it).
	resumes atomic.Int64

	mu  sync.Mutex
	err error
}

// Watch starts watching kind. It returns at once; events arrive on the
// Watcher's channel. The watch runs until ctx is cancelled, Stop is called,
// or it meets an error that a resume cannot fix.
func (c *Client) Watch(ctx context.Context, kind *resource.Kind, opts WatchOptions) *Watcher {
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher{
		c:      c,
		kind:   kind,
		opts:   opts,
		log:    c.log.With("kind", kind.Name, "namespace", opts.Namespace),
		events: make(chan WatchEvent),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	w.lastVersion.Store(opts.ResourceVersion)
	go w.run(ctx)
	return w
}

// Events delivers the watch's events in order; closed when the watch ends.
func (w *Watcher) Events() <-chan WatchEvent { return w.events }

// Stop ends the watch and waits for its goroutine to exit. Safe to call more
// than once and from any goroutine.
func (w *Watcher) Stop() {
	w.cancel()
	<-w.done
}

// Err says why the watch ended: nil after Stop or cancellation, otherwise
// the error that ended it. Nil while the watch runs.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// ResourceVersion is the version the watch has delivered everything up to:
// a new watch from it continues where this one stands.
func (w *Watcher) ResourceVersion() int64 { return w.lastVersion.Load() }

func (w *Watcher) run(ctx context.Context) {
	defer close(w.done)
	err := w.watch(ctx)
	if ctx.Err() != nil {
		err = nil
	}
	w.mu.Lock()
	w.err = err
	w.mu.Unlock()
	close(w.events)
}

// watch delivers events until ctx ends or an error that a resume cannot fix.
func (w *Watcher) watch(ctx context.Context) error {
	delay := retryFirstDelay
	backOff := func(err error) bool {
		w.log.Info("watch interrupted, resuming", "resource-version", w.lastVersion.Load(), "error", err)
		ok := sleepCtx(ctx, jitter(delay))
		delay = min(2*delay, retryMaxDelay)
		return ok
	}
	if w.opts.ResourceVersion == 0 {
		for {
			err := w.deliverInitial(ctx)
			if err == nil {
				break
			}
			if ctx.Err() != nil || !w.resumable(err) {
				return err
			}
			if !backOff(err) {
				return ctx.Err()
			}
		}
	}
	for {
		delivered, err := w.stream(ctx, w.lastVersion.Load())
		if ctx.Err() != nil || !w.resumable(err) {
			return err
		}
		if delivered {
			delay = retryFirstDelay
		}
		if !backOff(err) {
			return ctx.Err()
		}
		w.resumes.Add(1)
	}
}

// deliverInitial lists every object and delivers each as ADDED; the watch
// then continues from the list's version.
func (w *Watcher) deliverInitial(ctx context.Context) error {
	res, err := w.c.ListAll(ctx, w.kind, ListOptions{
		Namespace:     w.opts.Namespace,
		LabelSelector: w.opts.LabelSelector,
		FieldSelector: w.opts.FieldSelector,
		PageSize:      initialListPageSize,
	})
	if err != nil {
		return err
	}
	for _, obj := range res.Items {
		if !w.emit(ctx, WatchEvent{Type: Added, Object: obj, ResourceVersion: obj.GetMetadata().GetResourceVersion()}) {
			return ctx.Err()
		}
	}
	w.lastVersion.Store(res.ResourceVersion)
	if w.opts.Bookmarks && !w.emit(ctx, WatchEvent{Type: Bookmark, ResourceVersion: res.ResourceVersion}) {
		return ctx.Err()
	}
	return nil
}

// errStreamEnded stands for a watch stream the server closed without an
// error (a replica shutting down): resume elsewhere.
var errStreamEnded = status.Error(codes.Unavailable, "client: the server ended the watch stream")

// stream runs one watch stream from version from until it breaks; delivered
// reports whether it delivered any change.
func (w *Watcher) stream(ctx context.Context, from int64) (delivered bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m := w.kind.Method(resource.Watch)
	st, err := w.c.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, w.kind.FullMethod(resource.Watch))
	if err != nil {
		return false, err
	}
	req, err := resource.NewMessage(m.Input())
	if err != nil {
		return false, err
	}
	resource.SetField(req, resource.FieldNamespace, protoreflect.ValueOfString(w.opts.Namespace))
	resource.SetField(req, resource.FieldLabelSelector, protoreflect.ValueOfString(w.opts.LabelSelector))
	resource.SetField(req, resource.FieldFieldSelector, protoreflect.ValueOfString(w.opts.FieldSelector))
	resource.SetField(req, resource.FieldResourceVersion, protoreflect.ValueOfInt64(from))
	// A failed send returns io.EOF and leaves the reason to RecvMsg.
	if err := st.SendMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	if err := st.CloseSend(); err != nil {
		return false, err
	}
	for {
		resp, err := resource.NewMessage(m.Output())
		if err != nil {
			return delivered, err
		}
		if err := st.RecvMsg(resp); err != nil {
			if errors.Is(err, io.EOF) {
				return delivered, errStreamEnded
			}
			return delivered, err
		}
		ev := w.event(resp)
		if ev.Type == Bookmark {
			if ev.ResourceVersion > w.lastVersion.Load() {
				w.lastVersion.Store(ev.ResourceVersion)
			}
			if w.opts.Bookmarks && !w.emit(ctx, ev) {
				return delivered, ctx.Err()
			}
			continue
		}
		if ev.ResourceVersion <= from {
			// "After from" is the server's promise; a repeat would be a
			// duplicate for the consumer.
			w.log.Warn("watch dropped an event at or before its resume point", "resource-version", ev.ResourceVersion, "from", from)
			continue
		}
		if !w.emit(ctx, ev) {
			return delivered, ctx.Err()
		}
		w.lastVersion.Store(ev.ResourceVersion)
		delivered = true
	}
}

func (w *Watcher) event(resp proto.Message) WatchEvent {
	return WatchEvent{
		Type:            capstanv1.WatchEventType(resource.FieldValue(resp, resource.FieldType).Enum()),
		Object:          objectIn(w.kind, resp),
		ResourceVersion: resource.FieldValue(resp, resource.FieldResourceVersion).Int(),
	}
}

// emit hands ev to the consumer; false if ctx ended first.
func (w *Watcher) emit(ctx context.Context, ev WatchEvent) bool {
	select {
	case w.events <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

// resumable reports whether a watch that failed with err can continue by
// re-opening it: everything but a request the server rejects as such, an
// expired version, or a closed Client.
func (w *Watcher) resumable(err error) bool {
	if w.c.conn.GetState() == connectivity.Shutdown {
		return false
	}
	switch status.Code(err) {
	case codes.OutOfRange, codes.InvalidArgument, codes.NotFound, codes.AlreadyExists,
		codes.PermissionDenied, codes.Unauthenticated, codes.Unimplemented, codes.FailedPrecondition:
		return false
	}
	return true
}
