package runtime

import (
	"context"
	"sync"
)

// changeQueue delivers pod uids to one reader without ever blocking the
// sender: a uid already waiting to be read is not queued again, so a slow
// reader sees each changed pod once rather than every change.
type changeQueue struct {
	out  chan string
	wake chan struct{}

	mu      sync.Mutex
	pending map[string]bool
	order   []string
}

func newChangeQueue() *changeQueue {
	return &changeQueue{out: make(chan string), wake: make(chan struct{}, 1), pending: map[string]bool{}}
}

func (q *changeQueue) add(uid string) {
	q.mu.Lock()
	if !q.pending[uid] {
		q.pending[uid] = true
		q.order = append(q.order, uid)
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// run hands queued uids to out until ctx ends.
func (q *changeQueue) run(ctx context.Context) {
	for {
		q.mu.Lock()
		if len(q.order) == 0 {
			q.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-q.wake:
			}
			continue
		}
		uid := q.order[0]
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case q.out <- uid:
		}
		q.mu.Lock()
		// Taken off only once read: a change meanwhile is the same news.
		q.order = q.order[1:]
		delete(q.pending, uid)
		q.mu.Unlock()
	}
}
