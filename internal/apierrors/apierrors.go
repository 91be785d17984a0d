// Package apierrors builds the gRPC status errors that every Capstan API call
// returns, and reads them back on the client side.
//
// Each error carries a google.rpc.ErrorInfo whose Reason a client can switch on
// (domain "capstan.dev"); INVALID_ARGUMENT errors also carry a
// google.rpc.BadRequest naming the offending field. Storage, the API server
// and clients share this one vocabulary, so an error crosses every layer
// unchanged. The functions are safe for concurrent use.
package apierrors

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
)

// Domain is the ErrorInfo domain of every Capstan error.
const Domain = "capstan.dev"

// Reasons a client can switch on (ErrorInfo.Reason).
const (
	ReasonNotFound               = "NOT_FOUND"
	ReasonAlreadyExists          = "ALREADY_EXISTS"
	ReasonConflict               = "CONFLICT"
	ReasonResourceVersionExpired = "RESOURCE_VERSION_EXPIRED"
	ReasonFieldInvalid           = "FIELD_INVALID"
	ReasonTooLarge               = "TOO_LARGE"
	ReasonNoQuorum               = "NO_QUORUM"
	ReasonShuttingDown           = "SHUTTING_DOWN"
	ReasonLeaseNotHeld           = "LEASE_NOT_HELD"
	ReasonPreconditionFailed     = "PRECONDITION_FAILED"
	ReasonInternal               = "INTERNAL"
	ReasonDeadlinePassed         = "DEADLINE_PASSED"
	ReasonPaused                 = "REPLICA_PAUSED"
)

func newStatus(code codes.Code, reason string, metadata map[string]string, msg string, extra ...*errdetails.BadRequest) error {
	st := status.New(code, msg)
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: reason, Domain: Domain, Metadata: metadata}}
	for _, e := range extra {
		details = append(details, e)
	}
	withDetails, err := st.WithDetails(details...)
	if err != nil {
		return st.Err()
	}
	return withDetails.Err()
}

// NotFound: the object kind/namespace/name does not exist.
func NotFound(kind, namespace, name string) error {
	return newStatus(codes.NotFound, ReasonNotFound,
		map[string]string{"kind": kind, "namespace": namespace, "name": name},
		fmt.Sprintf("%s %q not found", kind, qualified(namespace, name)))
}

// AlreadyExists: a create found the name taken.
func AlreadyExists(kind, namespace, name string) error {
	return newStatus(codes.AlreadyExists, ReasonAlreadyExists,
		map[string]string{"kind": kind, "namespace": namespace, "name": name},
		fmt.Sprintf("%s %q already exists", kind, qualified(namespace, name)))
}

// Conflict: a write conditioned on a resource version (or uid) found another.
// The client should read the object again and retry.
func Conflict(kind, namespace, name, detail string) error {
	return newStatus(codes.Aborted, ReasonConflict,
		map[string]string{"kind": kind, "namespace": namespace, "name": name},
		fmt.Sprintf("%s %q was modified: %s; read it again and retry", kind, qualified(namespace, name), detail))
}

// Expired: a watch or page asked for a revision that etcd has compacted.
// The client must list again (the Kubernetes "410 Gone").
func Expired(requested, compacted int64) error {
	return newStatus(codes.OutOfRange, ReasonResourceVersionExpired,
		map[string]string{"requested": fmt.Sprint(requested), "compacted": fmt.Sprint(compacted)},
		fmt.Sprintf("resource version %d is older than the compacted revision %d: list again", requested, compacted))
}

// Invalid: field (a dotted path such as "pod.spec.containers[0].name") is wrong.
func Invalid(field, description string) error {
	return newStatus(codes.InvalidArgument, ReasonFieldInvalid,
		map[string]string{"field": field},
		fmt.Sprintf("%s: %s", field, description),
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: description}}})
}

// TooLarge: a request or object exceeds a size limit.
func TooLarge(what string, size, limit int) error {
	return newStatus(codes.ResourceExhausted, ReasonTooLarge,
		map[string]string{"size": fmt.Sprint(size), "limit": fmt.Sprint(limit)},
		fmt.Sprintf("%s is %d bytes, more than the limit of %d", what, size, limit))
}

// NoQuorum: etcd cannot commit or serve a linearizable read right now. Safe to
// retry on another replica.
func NoQuorum(cause error) error {
	return newStatus(codes.Unavailable, ReasonNoQuorum, nil,
		fmt.Sprintf("etcd has no quorum or is unreachable from this replica: %v", cause))
}

// DeadlinePassed: the caller's deadline had passed when this replica came to
// act on the call (it read the call late, or was frozen before writing), so
// it did nothing: nothing was written.
func DeadlinePassed(when string, deadline time.Time) error {
	return newStatus(codes.DeadlineExceeded, ReasonDeadlinePassed,
		map[string]string{"deadline": deadline.UTC().Format(time.RFC3339Nano)},
		fmt.Sprintf("the caller's deadline %s had passed %s: nothing was done", deadline.UTC().Format(time.RFC3339Nano), when))
}

// Paused: this replica noticed it had been frozen (its clock jumped) and
// dropped the call it had read before; nothing was written. Safe to retry on
// another replica.
func Paused(pause time.Duration) error {
	return newStatus(codes.Unavailable, ReasonPaused, map[string]string{"pause": pause.String()},
		fmt.Sprintf("this API replica was frozen for %v while it held the call; it did nothing with it", pause.Round(time.Millisecond)))
}

// ShuttingDown: this replica is stopping. Safe to retry on another replica.
func ShuttingDown() error {
	return newStatus(codes.Unavailable, ReasonShuttingDown, nil, "this API replica is shutting down")
}

// LeaseNotHeld: a fenced write carried a lease epoch that is no longer current.
// The caller has been deposed and must stop acting.
func LeaseNotHeld(namespace, name string, epoch int64) error {
	return newStatus(codes.FailedPrecondition, ReasonLeaseNotHeld,
		map[string]string{"lease": qualified(namespace, name), "epoch": fmt.Sprint(epoch)},
		fmt.Sprintf("lease %q is not held at epoch %d: this caller is no longer the leader", qualified(namespace, name), epoch))
}

// PreconditionFailed: a state precondition other than a version failed, for
// example binding a pod that is already bound.
func PreconditionFailed(detail string) error {
	return newStatus(codes.FailedPrecondition, ReasonPreconditionFailed, nil, detail)
}

// Internal: a bug or an unexpected failure; the message says what.
func Internal(format string, args ...any) error {
	return newStatus(codes.Internal, ReasonInternal, nil, fmt.Sprintf(format, args...))
}

// Reason returns the ErrorInfo reason of err, or "" if it has none.
func Reason(err error) string {
	if info := ErrorInfo(err); info != nil {
		return info.GetReason()
	}
	return ""
}

// ErrorInfo returns the ErrorInfo detail of err, or nil.
func ErrorInfo(err error) *errdetails.ErrorInfo {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

// Field returns the field an INVALID_ARGUMENT error names, or "".
func Field(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			return br.GetFieldViolations()[0].GetField()
		}
	}
	return ""
}

// Code returns the gRPC code of err (codes.OK for nil, codes.Unknown for a
// non-status error).
func Code(err error) codes.Code { return status.Code(err) }

// Is reports whether err is a status error with the given reason.
func Is(err error, reason string) bool { return err != nil && Reason(err) == reason }

// IsNotFound reports whether err is NOT_FOUND.
func IsNotFound(err error) bool { return status.Code(err) == codes.NotFound }

// IsConflict reports whether err is an ABORTED version conflict.
func IsConflict(err error) bool { return status.Code(err) == codes.Aborted }

// IsAlreadyExists reports whether err is ALREADY_EXISTS.
func IsAlreadyExists(err error) bool { return status.Code(err) == codes.AlreadyExists }

// IsExpired reports whether err says a resource version was compacted.
func IsExpired(err error) bool { return Is(err, ReasonResourceVersionExpired) }

// IsStatus reports whether err already is a gRPC status error, so it can be
// returned to a caller as it is.
func IsStatus(err error) bool {
	var se interface{ GRPCStatus() *status.Status }
	return errors.As(err, &se)
}

func qualified(namespace, name string) string {
	if namespace == "" {
		return name
	}
	return namespace + "/" + name
}
