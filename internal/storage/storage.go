// Package storage defines how the API server keeps objects: the Interface
// every backend implements, with the semantics of Kubernetes' storage layer
// (resource versions are store revisions, writes are conditional, lists are
// consistent snapshots, watches resume from a revision).
//
// Implementations live in sub-packages (etcd3); storagetest holds the
// conformance suite each of them must pass. Errors are the gRPC status errors
// of package apierrors (NOT_FOUND, ALREADY_EXISTS, ABORTED for a version
// conflict, OUT_OF_RANGE for a compacted revision, UNAVAILABLE without
// quorum, FAILED_PRECONDITION for a stale fence), so the API server returns
// them as they are. Implementations are safe for concurrent use.
package storage

import (
	"context"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/resource"
)

// Object is what storage keeps; see resource.Object.
type Object = resource.Object

// NewFunc returns an empty object to decode a stored value into.
type NewFunc func() Object

// Predicate selects objects (label and field selectors). nil matches all.
type Predicate func(Object) bool

// Matches reports whether obj is selected; a nil Predicate selects everything.
func (p Predicate) Matches(obj Object) bool { return p == nil || p(obj) }

// Fence makes a write conditional on a lease still being held at an epoch:
// the check runs in the same transaction as the write, so a deposed leader
// can change nothing. Epoch is the lease key's create revision.
type Fence struct {
	// LeaseKey is the storage key of the Lease object.
	LeaseKey string
	// Epoch is the create revision the lease key must still have.
	Epoch int64
	// Namespace and Name identify the lease in the error a stale fence gets.
	Namespace, Name string
}

// WriteOptions apply to Create, Update and Delete.
type WriteOptions struct {
	// Fence, if set, must hold for the write to happen (FAILED_PRECONDITION,
	// reason LEASE_NOT_HELD, otherwise).
	Fence *Fence
	// TTLLease, if non-zero, attaches the key to this store lease (an etcd
	// lease id): the key disappears when the lease expires.
	TTLLease int64
	// RequestID, if set, names the call this write belongs to, the same on
	// every retry of that call. The write is recorded under it in its own
	// transaction, and a write whose request is already recorded is not
	// made again: the call returns the recorded write's outcome — the
	// object as that write left it; for a Delete its last state, with
	// resource_version set to the deletion's revision — whatever the state
	// of the object now, and whether or not its preconditions and fence
	// would hold now. An update that changes nothing writes no record (the
	// fence and the record are still checked). A request id recorded for
	// another key is INVALID_ARGUMENT. Records are kept for at least a few
	// minutes (the implementation says how long): longer than any caller
	// retries a write.
	RequestID string
}

// Preconditions guard Update and Delete. Zero fields are not checked.
type Preconditions struct {
	// ResourceVersion the object must have (ABORTED otherwise).
	ResourceVersion int64
	// UID the object must have (ABORTED otherwise).
	UID string
}

// UpdateFunc computes the new object from the current one (a private copy the
// function may change and return). Returning an error aborts the update with
// that error. It may be called more than once if the object changes
// concurrently, so it must not have side effects.
type UpdateFunc func(current Object) (Object, error)

// ListOptions control List.
type ListOptions struct {
	// Predicate keeps only matching objects.
	Predicate Predicate
	// Limit is the most objects returned; 0 means all.
	Limit int64
	// Continue is the Continue of the previous page; pages are all read at
	// the revision of the first one.
	Continue string
}

// ListResult is one page of a List.
type ListResult struct {
	// Items are ordered by key.
	Items []Object
	// Revision is the store revision the page was read at.
	Revision int64
	// Continue is non-empty if more items may follow.
	Continue string
}

// EventType says what happened in a watch event.
type EventType = capstanv1.WatchEventType

// Watch event types.
const (
	Added    = capstanv1.WatchEventType_WATCH_EVENT_TYPE_ADDED
	Modified = capstanv1.WatchEventType_WATCH_EVENT_TYPE_MODIFIED
	Deleted  = capstanv1.WatchEventType_WATCH_EVENT_TYPE_DELETED
	Bookmark = capstanv1.WatchEventType_WATCH_EVENT_TYPE_BOOKMARK
)

// Event is one change seen by a Watch.
type Event struct {
	Type EventType
	// Object is the object after the change; for Deleted, the last state
	// before it (with ResourceVersion set to the deletion revision). Nil for
	// Bookmark.
	Object Object
	// Revision of the change, or for Bookmark the revision up to which every
	// event has been sent.
	Revision int64
}

// WatchOptions control Watch.
type WatchOptions struct {
	// Predicate keeps only matching objects: an object that starts matching
	// is Added, one that stops matching is Deleted.
	Predicate Predicate
	// ResourceVersion: send every change after it. 0 means "now": first an
	// Added event for each existing object, then every later change.
	ResourceVersion int64
	// BookmarkInterval, if non-zero, asks for a Bookmark event whenever the
	// stream has been idle that long.
	BookmarkInterval time.Duration
}

// Watcher is an open watch. Events are delivered in revision order. The
// channel is closed when the watch ends; Err then says why (nil after Stop
// or context cancellation, an OUT_OF_RANGE apierror if the revision was
// compacted, UNAVAILABLE if the store went away).
type Watcher interface {
	Events() <-chan Event
	// Stop ends the watch and releases its resources; safe to call twice.
	Stop()
	// Err is valid after Events is closed.
	Err() error
}

// Interface is a store of objects under string keys. Every method is safe for
// concurrent use and honours ctx: cancellation ends the call with CANCELED;
// a deadline that passes while the store has not answered ends it with
// UNAVAILABLE (the store is out of reach or without quorum: retry elsewhere),
// never a hang. The API server gives storage a deadline a little earlier than
// its caller's, so the caller sees that UNAVAILABLE in time. A write is never
// committed after ctx's deadline: it is checked immediately before the
// transaction is sent, and a passed deadline is DEADLINE_EXCEEDED
// (DEADLINE_PASSED) with nothing written — a replica frozen between reading
// a call and writing it does not write for a caller that gave up.
type Interface interface {
	// Create stores obj under key if the key is free and returns the stored
	// object with metadata.resource_version set. ALREADY_EXISTS otherwise.
	Create(ctx context.Context, key string, obj Object, opts WriteOptions) (Object, error)
	// Get reads the object under key (linearizable). NOT_FOUND if absent.
	Get(ctx context.Context, key string, newObj NewFunc) (Object, error)
	// Update reads the object under key, checks pre, applies update and
	// writes the result if nothing changed in between (retrying from a fresh
	// read otherwise). NOT_FOUND if absent, ABORTED if pre fails.
	Update(ctx context.Context, key string, newObj NewFunc, pre Preconditions, update UpdateFunc, opts WriteOptions) (Object, error)
	// Delete removes the object under key if pre holds and returns its last
	// state. NOT_FOUND if absent, ABORTED if pre fails.
	Delete(ctx context.Context, key string, newObj NewFunc, pre Preconditions, opts WriteOptions) (Object, error)
	// List reads the objects under prefix at one revision.
	List(ctx context.Context, prefix string, newObj NewFunc, opts ListOptions) (ListResult, error)
	// Watch streams changes under prefix. The watch ends when ctx is done or
	// Stop is called.
	Watch(ctx context.Context, prefix string, newObj NewFunc, opts WatchOptions) (Watcher, error)
	// Revision returns the store's current revision (linearizable).
	Revision(ctx context.Context) (int64, error)
}
