// Package queue orders the pods waiting for a node, as kube-scheduler's
// scheduling queue does, simplified:
//
//   - active: pods ready for an attempt, first in first out;
//   - backoff: pods whose last attempt failed, each waiting out its own
//     back-off (1 s doubling to 10 s per failed attempt) before turning
//     active;
//   - unschedulable: pods that no node could take; they wait for the cluster
//     to change (MoveAll: a node added or changed, a pod gone) and then go to
//     backoff (or straight to active if their back-off is over). A pod left
//     there longer than MaxUnschedulable is retried anyway, in case a change
//     went unnoticed.
//
// A popped pod is in flight until its attempt ends with Done or Requeue.
// An update to it (Update) or a cluster change (MoveAll) during the attempt is
// remembered: a failure then goes to backoff rather than unschedulable, since
// the change may be the one that makes it fit. A pod deleted or bound during
// its attempt (Delete) is dropped when the attempt ends.
//
// Keys are "namespace/name".
//
// # Concurrency
//
// A Queue is safe for concurrent use. Pop blocks until a pod is active or its
// ctx ends; Run moves pods out of backoff and unschedulable as time passes.
package queue

import (
	"container/heap"
	"context"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Defaults of Options.
const (
	DefaultInitialBackoff   = time.Second
	DefaultMaxBackoff       = 10 * time.Second
	DefaultMaxUnschedulable = 60 * time.Second
	// flushInterval is how often Run looks for pods whose back-off is over.
	flushInterval = 100 * time.Millisecond
)

// Options tune a Queue; the zero value gives the defaults.
type Options struct {
	// Clock, for tests; default real.
	Clock clock.WithTicker
	// InitialBackoff is the wait after a pod's first failed attempt; it
	// doubles with each further one.
	InitialBackoff time.Duration
	// MaxBackoff caps the wait.
	MaxBackoff time.Duration
	// MaxUnschedulable is the longest an unschedulable pod waits for a
	// cluster change before it is tried again anyway.
	MaxUnschedulable time.Duration
}

// Item is a popped pod.
type Item struct {
	// Key of the pod, "namespace/name".
	Key string
	// Attempts that failed before this one.
	Attempts int
	// Cycle numbers the Pop: a cluster change during the attempt is one at
	// a later Cycle.
	Cycle int64
}

type place int

const (
	placeActive place = iota + 1
	placeBackoff
	placeUnschedulable
	placeInFlight
)

type entry struct {
	key      string
	place    place
	attempts int
	// readyAt: the end of the back-off.
	readyAt time.Time
	// since: when it became unschedulable.
	since time.Time
	// heapIndex in the backoff heap while there.
	heapIndex int
	// Changes during an attempt.
	updated bool
	deleted bool
}

// Queue is the scheduling queue. See the package doc.
type Queue struct {
	opts Options

	mu      sync.Mutex
	entries map[string]*entry
	// active holds entries in arrival order; an entry that left active
	// stays in the slice and is skipped by Pop.
	active        []*entry
	activeCount   int
	backoff       backoffHeap
	unschedulable map[string]*entry
	// cycle counts Pops; moveCycle is the cycle of the last MoveAll.
	cycle     int64
	moveCycle int64
	// wake has a token when active may be non-empty.
	wake chan struct{}
}

// New returns an empty Queue.
func New(opts Options) *Queue {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.InitialBackoff <= 0 {
		opts.InitialBackoff = DefaultInitialBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	if opts.MaxUnschedulable <= 0 {
		opts.MaxUnschedulable = DefaultMaxUnschedulable
	}
	return &Queue{
		opts:          opts,
		entries:       make(map[string]*entry),
		unschedulable: make(map[string]*entry),
		moveCycle:     -1,
		wake:          make(chan struct{}, 1),
	}
}

// Add makes sure a pending pod is queued: a pod the queue does not hold
// becomes active; one it holds stays where it is.
func (q *Queue) Add(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.entries[key]; ok {
		return
	}
	e := &entry{key: key}
	q.entries[key] = e
	q.pushActiveLocked(e)
}

// Update is Add for a pod that changed: an unschedulable one may fit now,
// so it leaves unschedulable; one in flight is marked updated.
func (q *Queue) Update(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, ok := q.entries[key]
	if !ok {
		e = &entry{key: key}
		q.entries[key] = e
		q.pushActiveLocked(e)
		return
	}
	switch e.place {
	case placeUnschedulable:
		q.leaveUnschedulableLocked(e, q.opts.Clock.Now())
	case placeInFlight:
		e.updated = true
	}
}

// Delete drops the pod with key: it was deleted or bound. A pod in flight is
// dropped when its attempt ends.
func (q *Queue) Delete(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, ok := q.entries[key]
	if !ok {
		return
	}
	switch e.place {
	case placeInFlight:
		e.deleted = true
		return
	case placeActive:
		q.activeCount--
	case placeBackoff:
		heap.Remove(&q.backoff, e.heapIndex)
	case placeUnschedulable:
		delete(q.unschedulable, key)
	}
	e.place = 0
	delete(q.entries, key)
}

// Pop takes the oldest active pod, waiting for one until ctx ends (then
// false). The pod is in flight until Done or Requeue.
func (q *Queue) Pop(ctx context.Context) (Item, bool) {
	for {
		q.mu.Lock()
		for len(q.active) > 0 {
			e := q.active[0]
			q.active[0] = nil
			q.active = q.active[1:]
			if e.place != placeActive || q.entries[e.key] != e {
				continue // it left active after it was pushed
			}
			q.activeCount--
			q.cycle++
			e.place, e.updated, e.deleted = placeInFlight, false, false
			item := Item{Key: e.key, Attempts: e.attempts, Cycle: q.cycle}
			if q.activeCount > 0 {
				q.signalLocked()
			}
			q.mu.Unlock()
			return item, true
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return Item{}, false
		case <-q.wake:
		}
	}
}

// Done ends the attempt of item: the pod was bound, or is to be dropped. If
// it was updated during the attempt (and not deleted), it is queued again as
// active, so the update is looked at.
func (q *Queue) Done(item Item) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, ok := q.entries[item.Key]
	if !ok || e.place != placeInFlight {
		return
	}
	if e.updated && !e.deleted {
		e.attempts = 0
		q.pushActiveLocked(e)
		return
	}
	e.place = 0
	delete(q.entries, item.Key)
}

// Requeue ends the failed attempt of item. An unschedulable pod (no node
// fits) waits in unschedulable for a cluster change, or in backoff if the
// cluster or the pod changed during the attempt; any other failure (the bind
// call failed) waits in backoff.
func (q *Queue) Requeue(item Item, unschedulable bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, ok := q.entries[item.Key]
	if !ok || e.place != placeInFlight {
		return
	}
	if e.deleted {
		e.place = 0
		delete(q.entries, item.Key)
		return
	}
	now := q.opts.Clock.Now()
	e.attempts++
	e.readyAt = now.Add(q.backoffFor(e.attempts))
	if unschedulable && !e.updated && q.moveCycle < item.Cycle {
		e.place, e.since = placeUnschedulable, now
		q.unschedulable[e.key] = e
		return
	}
	q.pushBackoffLocked(e)
}

// MoveAll is told that the cluster changed in a way that may let
// unschedulable pods fit: they go to backoff, or to active if their back-off
// is over.
func (q *Queue) MoveAll() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.moveCycle = q.cycle
	now := q.opts.Clock.Now()
	for _, e := range q.unschedulable {
		q.leaveUnschedulableLocked(e, now)
	}
}

// Run moves pods whose back-off is over to active, and pods unschedulable
// for longer than MaxUnschedulable out of unschedulable, until ctx ends.
func (q *Queue) Run(ctx context.Context) {
	ticker := q.opts.Clock.NewTicker(flushInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
			q.flush()
		}
	}
}

func (q *Queue) flush() {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.opts.Clock.Now()
	for len(q.backoff) > 0 && !q.backoff[0].readyAt.After(now) {
		e := heap.Pop(&q.backoff).(*entry)
		q.pushActiveLocked(e)
	}
	for _, e := range q.unschedulable {
		if now.Sub(e.since) >= q.opts.MaxUnschedulable {
			q.leaveUnschedulableLocked(e, now)
		}
	}
}

// Stats counts the pods in each part of the queue.
type Stats struct {
	Active, Backoff, Unschedulable, InFlight int
}

// Stats returns how many pods are where.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := Stats{Active: q.activeCount, Backoff: len(q.backoff), Unschedulable: len(q.unschedulable)}
	s.InFlight = len(q.entries) - s.Active - s.Backoff - s.Unschedulable
	return s
}

func (q *Queue) backoffFor(attempts int) time.Duration {
	d := q.opts.InitialBackoff
	for i := 1; i < attempts && d < q.opts.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, q.opts.MaxBackoff)
}

func (q *Queue) leaveUnschedulableLocked(e *entry, now time.Time) {
	delete(q.unschedulable, e.key)
	if e.readyAt.After(now) {
		q.pushBackoffLocked(e)
		return
	}
	q.pushActiveLocked(e)
}

func (q *Queue) pushActiveLocked(e *entry) {
	e.place = placeActive
	q.active = append(q.active, e)
	q.activeCount++
	q.signalLocked()
}

func (q *Queue) pushBackoffLocked(e *entry) {
	e.place = placeBackoff
	heap.Push(&q.backoff, e)
}

func (q *Queue) signalLocked() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// backoffHeap orders entries by the end of their back-off.
type backoffHeap []*entry

func (h backoffHeap) Len() int           { return len(h) }
func (h backoffHeap) Less(i, j int) bool { return h[i].readyAt.Before(h[j].readyAt) }
func (h backoffHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIndex, h[j].heapIndex = i, j
}
func (h *backoffHeap) Push(x any) {
	e := x.(*entry)
	e.heapIndex = len(*h)
	*h = append(*h, e)
}
func (h *backoffHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.heapIndex = -1
	return e
}
