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
// may have committed it before the connection broke. So:
//
//   - Get, List and every ClusterService call are always retried.
//   - Create is retried. If a retry gets ALREADY_EXISTS, the object is read:
//     when its labels equal the ones sent and every other non-metadata,
//     non-status field the caller set is equal (fields the caller left empty
//     may have been defaulted by the server), the stored object is returned
//     as the result of the create; otherwise the ALREADY_EXISTS is returned.
//   - Update and UpdateStatus are retried. If a retry gets ABORTED (the first
//     attempt moved the resource_version on), the object is read: when it
//     equals what was sent, ignoring resource_version and other server-set
//     metadata (for UpdateStatus: its status; for Update: name, labels,
//     annotations, owner references and every non-status field), the stored
//     object is returned as the result; otherwise the ABORTED is returned.
//   - Delete is retried. NOT_FOUND on a retry counts as success: the object is
//     gone, but the one the first attempt deleted is lost with its
//     connection, so Delete then returns a nil object and a nil error (the
//     typed DeleteX returns a response whose object is nil).
//   - PodService/BindPod is retried. If a retry gets FAILED_PRECONDITION (the
//     pod is bound), the pod is read: bound to the requested node (and, when
//     a uid was given, the same uid) is success.
//   - LeaseService/RenewLease is retried (renewing twice is harmless);
//     ReleaseLease is retried and LEASE_NOT_HELD on a retry is success.
//     AcquireLease is not retried: package leaderelection calls it again and
//     recognises a holding its lost attempt made.
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
// FAILED_PRECONDITION or any code but UNAVAILABLE: the rules above only
// reinterpret such an answer to a retry, never to a first attempt. Errors are
// the gRPC status errors of package apierrors, returned unwrapped.
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
