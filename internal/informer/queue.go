package informer

import (
	"context"
	"sync"

	"github.com/capstan-dev/capstan/internal/resource"
)

type notifyWhat int

const (
	notifyAdd notifyWhat = iota
	notifyUpdate
	notifyDelete
	// notifySynced marks the end of the first list's notifications.
	notifySynced
)

// notification is one call to make on handlers: those registered when the
// change happened (so a handler added later does not see a change twice).
type notification struct {
	what     notifyWhat
	old, obj resource.Object
	handlers []*Handler
	done     chan struct{} // closed by a notifySynced
}

func (n notification) deliver() {
	if n.what == notifySynced {
		close(n.done)
		return
	}
	for _, h := range n.handlers {
		switch {
		case n.what == notifyAdd && h.OnAdd != nil:
			h.OnAdd(n.obj)
		case n.what == notifyUpdate && h.OnUpdate != nil:
			h.OnUpdate(n.old, n.obj)
		case n.what == notifyDelete && h.OnDelete != nil:
			h.OnDelete(n.obj)
		}
	}
}

// notificationQueue is an unbounded FIFO between the goroutine that applies
// changes to the cache and the one that calls handlers, so a slow handler
// never holds up the watch. Safe for concurrent use.
type notificationQueue struct {
	mu    sync.Mutex
	items []notification
	ready chan struct{} // one token when items is not empty
}

func (q *notificationQueue) init() { q.ready = make(chan struct{}, 1) }

func (q *notificationQueue) push(n notification) {
	q.mu.Lock()
	q.items = append(q.items, n)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// wait returns everything queued, waiting for at least one item; false if
// ctx ended first.
func (q *notificationQueue) wait(ctx context.Context) ([]notification, bool) {
	for {
		q.mu.Lock()
		batch := q.items
		q.items = nil
		q.mu.Unlock()
		if len(batch) > 0 {
			return batch, true
		}
		select {
		case <-q.ready:
		case <-ctx.Done():
			return nil, false
		}
	}
}
