// Package events records Events: short, human-readable notes about what a
// component did to an object ("Created pod web-x7k2p", "0/3 nodes fit").
//
// A Recorder never makes its caller wait for the API and never fails it:
// Eventf formats the event and hands it to a bounded queue; one background
// goroutine writes the queue out and ends when it is empty, so a Recorder
// needs no Run and no Close. When the queue is full the event is dropped with
// a log line: events are for humans, the work they describe matters more.
//
// Repeats are aggregated as in Kubernetes: an event with the same involved
// object (by uid), type, reason and message as a stored one bumps that one's
// count and last_time instead of creating another. The event's name is
// derived from exactly those fields (<object-name>.<hash>), so any recorder,
// in any process, finds the event to bump; a small LRU of the events this
// Recorder last wrote saves the read before most bumps.
//
// Each write uses the values of the context given to Eventf (its gRPC
// metadata and so its lease fence, see client.WithFence) but not its
// cancellation, bounded by its own timeout: the events of a deposed leader
// are refused by the API server like its other writes.
//
// # Concurrency
//
// A Recorder is safe for concurrent use. Events from one Recorder are written
// in the order of the Eventf calls, one at a time.
package events

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
)

const (
	// MaxPending is how many events may wait to be written; more are dropped.
	MaxPending = 1000
	// WriteTimeout bounds the writing of one event, reads included.
	WriteTimeout = 5 * time.Second
	// MaxMessageLength is the longest message stored, in bytes, as in
	// Kubernetes; longer ones are cut.
	MaxMessageLength = 1024

	// recentEvents is the size of the LRU of events this Recorder wrote.
	recentEvents = 4096
	// hashLength is the number of hex digits of the name's hash: 64 bits,
	// so two different events of one object practically never share a name.
	hashLength = 16
	// maxNameLength is the longest object name (a DNS-1123 subdomain).
	maxNameLength = 253
)

// Store is where a Recorder writes: the Event calls of the API. A
// client.Client is one (NewRecorder); the API server, which records its own
// events, hands its registry in (NewRecorderWith).
type Store interface {
	CreateEvent(ctx context.Context, event *capstanv1.Event) (*capstanv1.Event, error)
	UpdateEvent(ctx context.Context, event *capstanv1.Event) (*capstanv1.Event, error)
	GetEvent(ctx context.Context, namespace, name string) (*capstanv1.Event, error)
}

// API is the part of an API client a Recorder writes through: a
// *client.Client is one. (This package does not import the client, so that
// the API server, which the client's tests start, can record events too.)
type API interface {
	Events() capstanv1.EventServiceClient
}

// apiStore is a Store over the API.
type apiStore struct{ api API }

func (s apiStore) CreateEvent(ctx context.Context, event *capstanv1.Event) (*capstanv1.Event, error) {
	resp, err := s.api.Events().CreateEvent(ctx, &capstanv1.CreateEventRequest{Event: event})
	return resp.GetEvent(), err
}

func (s apiStore) UpdateEvent(ctx context.Context, event *capstanv1.Event) (*capstanv1.Event, error) {
	resp, err := s.api.Events().UpdateEvent(ctx, &capstanv1.UpdateEventRequest{Event: event})
	return resp.GetEvent(), err
}

func (s apiStore) GetEvent(ctx context.Context, namespace, name string) (*capstanv1.Event, error) {
	resp, err := s.api.Events().GetEvent(ctx, &capstanv1.GetEventRequest{Namespace: namespace, Name: name})
	return resp.GetEvent(), err
}

// Recorder writes Events. See the package doc.
type Recorder struct {
	store  Store
	source *capstanv1.EventSource
	log    *slog.Logger
	now    func() time.Time
	// maxPending and writeTimeout are MaxPending and WriteTimeout, apart
	// from in tests.
	maxPending   int
	writeTimeout time.Duration

	mu       sync.Mutex
	pending  []pendingEvent
	draining bool
	drained  chan struct{} // closed when the current drain goroutine ends

	// recent is touched only by the drain goroutine; at most one runs at a
	// time, and mu orders one's end before the next one's start.
	recent *recentCache
}

// pendingEvent is an event waiting to be written, with the context whose
// values (fence, metadata) its write carries.
type pendingEvent struct {
	ctx   context.Context
	event *capstanv1.Event
}

// NewRecorder returns a Recorder that writes through c as source (the
// component and its host or replica identity). logger receives the events
// that could not be written; nil discards.
func NewRecorder(c API, source *capstanv1.EventSource, logger *slog.Logger) *Recorder {
	return NewRecorderWith(apiStore{c}, source, logger)
}

// NewRecorderWith is NewRecorder writing to store.
func NewRecorderWith(store Store, source *capstanv1.EventSource, logger *slog.Logger) *Recorder {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	src := &capstanv1.EventSource{}
	if source != nil {
		src = proto.Clone(source).(*capstanv1.EventSource)
	}
	return &Recorder{
		store:        store,
		source:       src,
		log:          logger,
		now:          time.Now,
		maxPending:   MaxPending,
		writeTimeout: WriteTimeout,
		recent:       newRecentCache(recentEvents),
	}
}

// Eventf records an event of eventType (wellknown.EventNormal or
// EventWarning) and reason about obj, in obj's namespace ("default" for a
// cluster-scoped object). It returns at once; the write happens in the
// background with ctx's values but not its cancellation. Failures are
// logged, never returned.
func (r *Recorder) Eventf(ctx context.Context, obj resource.Object, eventType, reason, format string, args ...any) {
	if r == nil {
		return
	}
	event, err := r.makeEvent(obj, eventType, reason, fmt.Sprintf(format, args...))
	if err != nil {
		r.log.Error("event not recorded", "reason", reason, "error", err)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pending) >= r.maxPending {
		r.log.Warn("event dropped: too many events waiting to be written",
			"pending", len(r.pending), "event-namespace", event.GetMetadata().GetNamespace(),
			"involved-object", event.GetInvolvedObject().GetName(), "reason", reason, "message", event.GetMessage())
		return
	}
	r.pending = append(r.pending, pendingEvent{ctx: context.WithoutCancel(ctx), event: event})
	if !r.draining {
		r.draining = true
		r.drained = make(chan struct{})
		go r.drain(r.drained)
	}
}

// Flush waits until every event recorded so far has been written (or given
// up on), or ctx ends; it reports whether the queue drained.
func (r *Recorder) Flush(ctx context.Context) bool {
	for {
		r.mu.Lock()
		draining, drained := r.draining, r.drained
		r.mu.Unlock()
		if !draining {
			return true
		}
		select {
		case <-drained:
		case <-ctx.Done():
			return false
		}
	}
}

// drain writes pending events until there are none, then ends.
func (r *Recorder) drain(done chan struct{}) {
	defer close(done)
	for {
		r.mu.Lock()
		if len(r.pending) == 0 {
			r.draining = false
			r.pending = nil
			r.mu.Unlock()
			return
		}
		next := r.pending[0]
		r.pending[0] = pendingEvent{}
		r.pending = r.pending[1:]
		r.mu.Unlock()
		r.write(next)
	}
}

// makeEvent builds the first occurrence of an event.
func (r *Recorder) makeEvent(obj resource.Object, eventType, reason, message string) (*capstanv1.Event, error) {
	if obj == nil || obj.GetMetadata() == nil {
		return nil, fmt.Errorf("events: the involved object is missing")
	}
	kind, ok := resource.ForMessage(obj)
	if !ok {
		return nil, fmt.Errorf("events: %T is not a resource kind", obj)
	}
	meta := obj.GetMetadata()
	namespace := meta.GetNamespace()
	if namespace == "" {
		namespace = resource.DefaultNamespace
	}
	message = truncateMessage(message)
	now := timestamppb.New(r.now())
	return &capstanv1.Event{
		Metadata: &capstanv1.ObjectMeta{
			Namespace: namespace,
			Name:      EventName(meta.GetName(), meta.GetUid(), eventType, reason, message),
		},
		InvolvedObject: &capstanv1.ObjectReference{
			Kind:            kind.Name,
			Namespace:       meta.GetNamespace(),
			Name:            meta.GetName(),
			Uid:             meta.GetUid(),
			ResourceVersion: meta.GetResourceVersion(),
		},
		Reason:    reason,
		Message:   message,
		Type:      eventType,
		Count:     1,
		FirstTime: now,
		LastTime:  now,
		Source:    r.source,
	}, nil
}

// EventName is the name of the event about the object objectName (whose uid
// is uid) with this type, reason and message: <object-name>.<hash>, the
// object's name cut so that the whole stays a valid object name.
func EventName(objectName, uid, eventType, reason, message string) string {
	h := sha256.New()
	for _, part := range []string{uid, eventType, reason, message} {
		h.Write([]byte(part))
		h.Write([]byte{0}) // so that ("ab","c") and ("a","bc") differ
	}
	sum := hex.EncodeToString(h.Sum(nil))[:hashLength]
	prefix := objectName
	if limit := maxNameLength - 1 - hashLength; len(prefix) > limit {
		// A cut may end on '.' or '-', which may not precede the '.'.
		prefix = strings.TrimRight(prefix[:limit], ".-")
	}
	if prefix == "" {
		return sum
	}
	return prefix + "." + sum
}

func truncateMessage(message string) string {
	if len(message) <= MaxMessageLength {
		return message
	}
	const ellipsis = "..."
	cut := MaxMessageLength - len(ellipsis)
	// Do not split a UTF-8 sequence.
	for cut > 0 && message[cut]&0xC0 == 0x80 {
		cut--
	}
	return message[:cut] + ellipsis
}

// write stores one occurrence: a bump of the stored event, or a new one.
func (r *Recorder) write(p pendingEvent) {
	ctx, cancel := context.WithTimeout(p.ctx, r.writeTimeout)
	defer cancel()
	event := p.event
	key := event.GetMetadata().GetNamespace() + "/" + event.GetMetadata().GetName()
	logFailure := func(err error) {
		r.log.Warn("event not written", "event-namespace", event.GetMetadata().GetNamespace(),
			"event-name", event.GetMetadata().GetName(), "involved-object", event.GetInvolvedObject().GetName(),
			"reason", event.GetReason(), "message", event.GetMessage(), "error", err)
	}

	if prev, ok := r.recent.get(key); ok && sameOccurrence(prev, event) {
		stored, err := r.bump(ctx, prev, event.GetLastTime())
		switch {
		case err == nil:
			r.recent.put(key, stored)
			return
		case apierrors.IsNotFound(err):
			// Deleted since: store it anew below.
			r.recent.remove(key)
		default:
			r.recent.remove(key)
			logFailure(err)
			return
		}
	}

	created, err := r.store.CreateEvent(ctx, event)
	if err == nil {
		r.recent.put(key, created)
		return
	}
	if !apierrors.IsAlreadyExists(err) {
		logFailure(err)
		return
	}
	// Another recorder (or this one, before its cache forgot) stored it.
	current, err := r.get(ctx, event)
	if err != nil {
		logFailure(err)
		return
	}
	if !sameOccurrence(current, event) {
		logFailure(fmt.Errorf("events: %s holds another event (a hash collision)", key))
		return
	}
	stored, err := r.bump(ctx, current, event.GetLastTime())
	if err != nil {
		logFailure(err)
		return
	}
	r.recent.put(key, stored)
}

// bump adds one to the count of the stored event base, at its
// resource_version; on a conflict it reads the event again and retries once.
func (r *Recorder) bump(ctx context.Context, base *capstanv1.Event, lastTime *timestamppb.Timestamp) (*capstanv1.Event, error) {
	for attempt := 0; ; attempt++ {
		next := proto.Clone(base).(*capstanv1.Event)
		next.Count++
		next.LastTime = lastTime
		updated, err := r.store.UpdateEvent(ctx, next)
		if err == nil {
			return updated, nil
		}
		if !apierrors.IsConflict(err) || attempt > 0 {
			return nil, err
		}
		if base, err = r.get(ctx, base); err != nil {
			return nil, err
		}
	}
}

func (r *Recorder) get(ctx context.Context, event *capstanv1.Event) (*capstanv1.Event, error) {
	return r.store.GetEvent(ctx, event.GetMetadata().GetNamespace(), event.GetMetadata().GetName())
}

// sameOccurrence reports whether a and b are the same event, so that b
// bumps a's count.
func sameOccurrence(a, b *capstanv1.Event) bool {
	return a.GetInvolvedObject().GetUid() == b.GetInvolvedObject().GetUid() &&
		a.GetInvolvedObject().GetName() == b.GetInvolvedObject().GetName() &&
		a.GetType() == b.GetType() &&
		a.GetReason() == b.GetReason() &&
		a.GetMessage() == b.GetMessage()
}

// recentCache is a least-recently-used map of event key to stored event.
// Not safe for concurrent use: only the drain goroutine touches it.
type recentCache struct {
	size  int
	order *list.List // of *recentEntry, most recent first
	items map[string]*list.Element
}

type recentEntry struct {
	key   string
	event *capstanv1.Event
}

func newRecentCache(size int) *recentCache {
	return &recentCache{size: size, order: list.New(), items: make(map[string]*list.Element)}
}

func (c *recentCache) get(key string) (*capstanv1.Event, bool) {
	el, ok := c.items[key]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*recentEntry).event, true
}

func (c *recentCache) put(key string, event *capstanv1.Event) {
	if el, ok := c.items[key]; ok {
		el.Value.(*recentEntry).event = event
		c.order.MoveToFront(el)
		return
	}
	c.items[key] = c.order.PushFront(&recentEntry{key: key, event: event})
	if c.order.Len() > c.size {
		oldest := c.order.Back()
		c.order.Remove(oldest)
		delete(c.items, oldest.Value.(*recentEntry).key)
	}
}

func (c *recentCache) remove(key string) {
	if el, ok := c.items[key]; ok {
		c.order.Remove(el)
		delete(c.items, key)
	}
}
