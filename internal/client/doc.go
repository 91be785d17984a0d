// Package client is how every Capstan binary and capctl talks to the API
// servers: one gRPC connection over every API replica, health-checked round
// robin, retries on UNAVAILABLE that are safe to repeat, typed clients for
// each kind, generic calls by kind, and watches that resume on another
// replica.
//
// # Failover
//
// New dials every endpoint at once. The round_robin balancer with client-side
// health checking (grpc.health.v1, service "") sends calls only to replicas
// that are connected and report SERVING, so a replica that is stopped, dead
// or without etcd quorum gets no new calls. Every call waits for a ready
// replica within its deadline instead of failing fast while connections are
// re-established. A call without a deadline gets Config.CallTimeout; each
// attempt is further bounded by Config.AttemptTimeout so that a frozen
// replica costs one attempt, not the whole call.
//
// # Retries
//
// An attempt that fails with UNAVAILABLE (or runs out of its attempt timeout
// while the call still has time) is repeated, with backoff from 25 ms doubling
// to 1 s, until the call's deadline; round robin sends each attempt to the
// next healthy replica. Such a failure is ambiguous for a write: the replica
// may have committed it before the connection broke. So (ADR 0012):
//
//   - Every attempt carries its absolute deadline (metadata
//     capstan-deadline). The API server does nothing for an attempt whose
//     deadline has passed — not when it reads it late (it sat in a frozen
//     replica's socket), not just before it writes to etcd — so an attempt
//     this client gave up on is never carried out later.
//   - Create, Update, Update<Kind>Status, Delete and PodService/BindPod carry
//     a request id (metadata capstan-request-id), the same on every attempt
//     of one call. The API server records it in the write's own etcd
//     transaction and answers a repeat with the recorded outcome instead of
//     writing again. A retried write therefore returns its first attempt's
//     result (for Delete the deleted object) if that attempt landed, is
//     applied once if it did not, and otherwise returns the error of the
//     attempt that decided it — never a success guessed from the object's
//     content. A write is retried for at most WriteRetryWindow after its
//     first attempt, whatever its deadline: the server remembers request ids
//     for longer than that.
//   - Get, List and every ClusterService call are always retried.
//   - LeaseService/RenewLease is retried (renewing twice is harmless);
//     ReleaseLease is retried and LEASE_NOT_HELD on a retry is success (the
//     lease is not this holder's any more, which is what was asked).
//     AcquireLease is not retried: package leaderelection calls it again and
//     recognises a holding its lost attempt made by its holder identity,
//     which is unique to the process.
//   - Any other method is not retried: its failure is returned as it is.
//
// # Fencing
//
// A context from WithFence makes every call carry a lease and epoch; the API
// server applies such a write only while that lease is held at that epoch.
// A call refused with LEASE_NOT_HELD calls the fence's onLost, so a deposed
// leader stops at its first refused write.
//
// No call is retried on INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, ABORTED,
// FAILED_PRECONDITION or any code but UNAVAILABLE and an attempt's
// DEADLINE_EXCEEDED. Errors are the gRPC status errors of package apierrors,
// returned unwrapped.
//
// # Watches
//
// Client.Watch opens a Watcher that resumes transparently: when its stream
// breaks it re-opens the watch, on whichever replica is healthy, from the
// last resource_version delivered (bookmarks advance it too), so the consumer
// sees every event once and in order. A watch from resource_version 0 starts
// with a List whose objects are delivered as ADDED events; it then watches
// from the list's revision. A resume from a compacted revision ends the
// watch with the OUT_OF_RANGE error (apierrors.IsExpired): the owner lists
// again, as package informer does.
//
// # Concurrency
//
// A Client is safe for concurrent use by any number of goroutines; Close it
// once when done. A Watcher's events are read by one consumer; Stop may be
// called from any goroutine and more than once.
package client
