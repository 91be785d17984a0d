package chaos

import (
	"context"
	"fmt"
	"sync"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// configMapWatch records a watch of the run's ConfigMaps from a version
// read before any write (check 8: no event twice, none out of order, and
// every acknowledged write seen).
type configMapWatch struct {
	mu       sync.Mutex
	versions map[int64]string // version → key
	last     int64
	dupes    []string
	disorder []string
	events   int
	err      error
}

func (w *configMapWatch) run(ctx context.Context, c *client.Client, ns string, from int64) {
	w.versions = map[int64]string{}
	watcher := c.Watch(ctx, configMapKind, client.WatchOptions{Namespace: ns, ResourceVersion: from})
	defer watcher.Stop()
	for ev := range watcher.Events() {
		if ev.Object == nil {
			continue
		}
		key := ev.Object.GetMetadata().GetName()
		w.mu.Lock()
		w.events++
		switch {
		case w.versions[ev.ResourceVersion] != "":
			w.dupes = append(w.dupes, fmt.Sprintf("%s at version %d delivered twice", key, ev.ResourceVersion))
		case ev.ResourceVersion <= w.last:
			w.disorder = append(w.disorder, fmt.Sprintf("%s at version %d after version %d", key, ev.ResourceVersion, w.last))
		}
		w.versions[ev.ResourceVersion] = key
		w.last = max(w.last, ev.ResourceVersion)
		w.mu.Unlock()
	}
	w.mu.Lock()
	w.err = watcher.Err()
	w.mu.Unlock()
}

// missing are the acknowledged writes the watch did not deliver, once it
// has reached the newest of them.
func (w *configMapWatch) missing(acked []ackedWrite) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, a := range acked {
		if w.versions[a.Version] != a.Key {
			out = append(out, fmt.Sprintf("%s=%s at version %d", a.Key, a.Value, a.Version))
		}
	}
	return out
}

func (w *configMapWatch) reached(v int64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last >= v
}

// leaseChange is a lease changing hands.
type leaseChange struct {
	Lease     string    `json:"lease"`
	From      string    `json:"from"`
	FromEpoch int64     `json:"fromEpoch"`
	To        string    `json:"to,omitempty"`
	ToEpoch   int64     `json:"toEpoch,omitempty"`
	At        time.Time `json:"at"`
	// Fault is the fault of the old holder that explains the change;
	// empty if none does (check 9 fails).
	Fault string `json:"fault,omitempty"`
	// After is the time from that fault's start to the change.
	After time.Duration `json:"after,omitempty"`
}

// leaseWatch records every change of holding of the lease-gated
// components' leases and of the node leases.
type leaseWatch struct {
	mu      sync.Mutex
	holding map[string]*capstanv1.Lease
	changes []leaseChange
	err     error
}

func (l *leaseWatch) run(ctx context.Context, c *client.Client, ns string) {
	watcher := c.Watch(ctx, leaseKind, client.WatchOptions{Namespace: ns})
	defer watcher.Stop()
	for ev := range watcher.Events() {
		lease, ok := ev.Object.(*capstanv1.Lease)
		if !ok {
			continue
		}
		name := ns + "/" + lease.GetMetadata().GetName()
		now := time.Now()
		l.mu.Lock()
		prev := l.holding[name]
		switch {
		case ev.Type == client.Deleted:
			if prev != nil {
				l.changes = append(l.changes, leaseChange{Lease: name, From: prev.GetSpec().GetHolderIdentity(), FromEpoch: prev.GetStatus().GetEpoch(), At: now})
			}
			delete(l.holding, name)
		case prev == nil:
			l.holding[name] = lease
			// A new holding after a release was counted at the release;
			// one with no release seen (expired) is counted now.
		case prev.GetStatus().GetEpoch() != lease.GetStatus().GetEpoch():
			l.changes = append(l.changes, leaseChange{Lease: name, From: prev.GetSpec().GetHolderIdentity(), FromEpoch: prev.GetStatus().GetEpoch(),
				To: lease.GetSpec().GetHolderIdentity(), ToEpoch: lease.GetStatus().GetEpoch(), At: now})
			l.holding[name] = lease
		default:
			l.holding[name] = lease
		}
		l.mu.Unlock()
	}
	l.mu.Lock()
	l.err = watcher.Err()
	l.mu.Unlock()
}

func newLeaseWatch() *leaseWatch { return &leaseWatch{holding: map[string]*capstanv1.Lease{}} }

// leaseNamespaces are the namespaces of the leases check 9 follows.
var leaseNamespaces = []string{wellknown.SystemNamespace, wellknown.NodeLeaseNamespace}
