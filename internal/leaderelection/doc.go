// Package leaderelection makes one of several replicas of a component the
// leader, through a Capstan Lease (LeaseService), and stops it from acting
// the moment it may no longer be the leader. It is the client half of
// DESIGN.md "Leases and fencing" (docs/adr/0006-leases-and-fencing.md).
//
// # Candidates
//
// A candidate calls AcquireLease. When someone else holds the lease it
// watches the lease key and calls AcquireLease again the moment the key is
// DELETED: a release (a clean stop of the leader) or an expiry decided by
// etcd. There is no poll interval between expiry and takeover. As a fallback,
// and so that the API servers keep listing it as a standby, it also calls
// AcquireLease every TTL.
//
// An AcquireLease whose answer was lost (UNAVAILABLE, a timeout) may have
// taken the lease. If a later attempt finds the lease held under this
// elector's own identity, that holding is the lost attempt's: the elector
// renews it and leads with its epoch. A holding under its own identity that
// it did not make (a previous run of the same process, or a duplicated
// identity) is left to expire.
//
// # The leader
//
// The leader renews at TTL/3. For each renewal it notes, by the injected
// monotonic clock, when the request was sent: etcd's expiry of the lease
// cannot come earlier than that instant plus the TTL. If no renewal succeeds
// before sendTime + TTL - TTL/5, the leader stops acting — it cancels the
// leading context — before the lease can have expired in etcd, so no other
// replica can have taken over yet. A RenewLease answered with LEASE_NOT_HELD,
// or any fenced call answered so, cancels the leading context at once.
//
// OnStartedLeading gets a context that carries the fence (client.WithFence):
// every write made with it is applied by the API server only while the lease
// is held at this epoch, in the same etcd transaction as the write. A leader
// that is paused past its deadline therefore changes nothing when it wakes.
//
// After losing the lease the elector waits for OnStartedLeading to return,
// calls OnStoppedLeading and becomes a candidate again: the process does not
// exit, and a later leadership starts OnStartedLeading afresh with a new
// context and epoch. If OnStartedLeading returns while the elector still
// leads, the elector releases the lease and waits one TTL before it competes
// again, so another replica gets the chance to lead.
//
// # Shutdown
//
// When Run's context ends while leading, the elector cancels the leading
// context and calls ReleaseLease at once, so a standby takes over without
// waiting for this replica's controllers to stop; whatever they still write
// is refused by the fence. Run returns once OnStartedLeading has returned.
//
// # Observability
//
// One log line per transition (became leader, stopped leading and why, new
// leader observed), and two gauges when Config.Registerer is set:
// capstan_leader{lease="<namespace>/<name>"} (1 while this replica leads) and
// capstan_leader_epoch{lease=...} (the epoch of the holding this replica last
// saw: its own while it leads).
//
// # Concurrency
//
// Run may be called once per Elector; it calls the callbacks from its own
// goroutines: OnStartedLeading on a goroutine of its own, OnStoppedLeading
// and OnNewLeader from Run's goroutine (they must not block for long).
// IsLeader and Epoch are safe to call from any goroutine at any time.
package leaderelection
