package testcluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// HoldingLog records, from a watch, every holding of some leases of the
// lease-gated components: each new epoch is a change of leadership
// (another candidate took over, or the same one lost its lease and
// acquired it again), and so is the end of a holding (its key deleted:
// released or expired). Renewals and sessions that move between API
// replicas change the Lease object but not its holding, and are not
// recorded. The watch resumes on another API server when the one it
// streams from fails, from the last version it delivered, so the log has
// no gaps.
//
// Concurrency: a HoldingLog is safe for concurrent use; one goroutine,
// which Stop ends, feeds it.
type HoldingLog struct {
	leases  []string
	watcher *client.Watcher
	done    chan struct{}

	mu sync.Mutex
	// seen are the holdings of each lease in the order they began, the
	// first the one held when the log started; the zero Holding stands
	// for a time when nobody held it.
	seen map[string][]Holding
}

// syncTimeout bounds HoldingLog.Sync: renewals change the leases every
// second, so the watch passes any revision within moments.
const syncTimeout = 30 * time.Second

// RecordHoldings starts recording the holdings of the named leases (in
// wellknown.SystemNamespace), beginning with those of now. Stop ends it;
// ctx bounds only the first read.
func (c *Cluster) RecordHoldings(ctx context.Context, leases ...string) (*HoldingLog, error) {
	list, err := c.client.List(ctx, leaseKind, client.ListOptions{Namespace: wellknown.SystemNamespace})
	if err != nil {
		return nil, fmt.Errorf("testcluster: list the leases: %w", err)
	}
	l := &HoldingLog{leases: slices.Clone(leases), done: make(chan struct{}), seen: map[string][]Holding{}}
	for _, name := range leases {
		l.seen[name] = []Holding{{}}
	}
	for _, obj := range list.Items {
		lease, ok := obj.(*capstanv1.Lease)
		if name := lease.GetMetadata().GetName(); ok && slices.Contains(leases, name) {
			l.seen[name] = []Holding{HoldingOf(lease)}
		}
	}
	l.watcher = c.client.Watch(context.Background(), leaseKind, client.WatchOptions{
		Namespace:       wellknown.SystemNamespace,
		ResourceVersion: list.ResourceVersion,
		Bookmarks:       true, // Sync then needs no change of the leases
	})
	go l.run()
	return l, nil
}

func (l *HoldingLog) run() {
	defer close(l.done)
	for ev := range l.watcher.Events() {
		lease, ok := ev.Object.(*capstanv1.Lease)
		if !ok || !slices.Contains(l.leases, lease.GetMetadata().GetName()) {
			continue
		}
		h := HoldingOf(lease)
		if ev.Type == client.Deleted {
			h = Holding{}
		}
		l.mu.Lock()
		name := lease.GetMetadata().GetName()
		if seen := l.seen[name]; seen[len(seen)-1] != h {
			l.seen[name] = append(seen, h)
		}
		l.mu.Unlock()
	}
}

// Holdings are the holdings of the lease seen so far, in order: first the
// one of when the log started, then one per change; the zero Holding
// stands for a time when nobody held the lease.
func (l *HoldingLog) Holdings(lease string) []Holding {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.seen[lease])
}

// Changes is how many times the lease's holding changed since the log
// started: 0 if one holding lasted throughout.
func (l *HoldingLog) Changes(lease string) int { return len(l.Holdings(lease)) - 1 }

// Sync waits until the log has seen every change of the leases made before
// it was called.
func (l *HoldingLog) Sync(ctx context.Context, c *Cluster) error {
	list, err := c.client.List(ctx, leaseKind, client.ListOptions{Namespace: wellknown.SystemNamespace})
	if err != nil {
		return fmt.Errorf("testcluster: list the leases: %w", err)
	}
	err = poll.Until(ctx, syncTimeout, fmt.Sprintf("the log of holdings to reach revision %d", list.ResourceVersion), func(context.Context) error {
		select {
		case <-l.done:
			return fmt.Errorf("its watch ended: %v", l.watcher.Err())
		default:
		}
		if got := l.watcher.ResourceVersion(); got < list.ResourceVersion {
			return fmt.Errorf("it has seen up to revision %d", got)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("testcluster: %w", err)
	}
	return nil
}

// Stop ends the log. It returns why its watch ended, if it ended before:
// then the log misses what happened after.
func (l *HoldingLog) Stop() error {
	l.watcher.Stop()
	<-l.done
	if err := l.watcher.Err(); err != nil {
		return fmt.Errorf("testcluster: the watch of the leases ended: %w", err)
	}
	return nil
}

// String is the holdings of every lease, for a report.
func (l *HoldingLog) String() string {
	var parts []string
	for _, lease := range l.leases {
		parts = append(parts, fmt.Sprintf("%s: %v", lease, l.Holdings(lease)))
	}
	return strings.Join(parts, "; ")
}
