package cmd

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/capctl/internal/manifest"
)

// reasons are kubectl's names for what went wrong on the server, by gRPC
// code, so that "Error from server (NotFound)" reads as people know it.
var reasons = map[codes.Code]string{
	codes.NotFound:           "NotFound",
	codes.AlreadyExists:      "AlreadyExists",
	codes.Aborted:            "Conflict",
	codes.InvalidArgument:    "Invalid",
	codes.FailedPrecondition: "PreconditionFailed",
	codes.Unavailable:        "ServiceUnavailable",
	codes.DeadlineExceeded:   "Timeout",
	codes.ResourceExhausted:  "TooLarge",
	codes.Unauthenticated:    "Unauthorized",
	codes.PermissionDenied:   "Forbidden",
	codes.Unimplemented:      "NotImplemented",
	codes.Internal:           "InternalError",
	codes.Canceled:           "Canceled",
}

// serverError is a server answer rephrased for one object, as kubectl
// phrases it: pods "web" not found.
type serverError struct {
	reason  string
	message string
	err     error
}

func (e *serverError) Error() string { return e.message }
func (e *serverError) Unwrap() error { return e.err }

// objectError rephrases err, the answer to a call about kind/name, when
// kubectl has a well-known sentence for it.
func objectError(kind *resource.Kind, name string, err error) error {
	switch {
	case apierrors.IsNotFound(err):
		return &serverError{reason: "NotFound", message: fmt.Sprintf("%s %q not found", kind.Resource, name), err: err}
	case apierrors.IsAlreadyExists(err):
		return &serverError{reason: "AlreadyExists", message: fmt.Sprintf("%s %q already exists", kind.Resource, name), err: err}
	}
	return err
}

// FormatError is the line capctl prints for err:
//
//	Error from server (NotFound): pods "web" not found
//	Error from server (Invalid): pod.spec.containers[0].name: required
//	error: the server doesn't have a resource type "foo" ...
func FormatError(err error) string {
	prefix := ""
	var ce *contextError
	if errors.As(err, &ce) {
		prefix, err = ce.context+": ", ce.err
	}
	var se *serverError
	if errors.As(err, &se) {
		return fmt.Sprintf("Error from server (%s): %s%s", se.reason, prefix, se.message)
	}
	var de *manifest.DocumentError
	if errors.As(err, &de) {
		return "error: " + prefix + err.Error()
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		if hint := unreachable(st); hint != "" {
			return hint
		}
		reason := reasons[st.Code()]
		if reason == "" {
			reason = st.Code().String()
		}
		return fmt.Sprintf("Error from server (%s): %s%s", reason, prefix, st.Message())
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "error: " + prefix + "timed out: " + err.Error() + " (raise --timeout, or check that the API replicas are up)"
	}
	return "error: " + prefix + err.Error()
}

// contextError says which object of a command an error is about.
type contextError struct {
	context string
	err     error
}

func (e *contextError) Error() string { return e.context + ": " + e.err.Error() }
func (e *contextError) Unwrap() error { return e.err }

// unreachable explains a call that found no replica to answer, which is
// different from a replica that answered UNAVAILABLE (no etcd quorum, say).
func unreachable(st *status.Status) string {
	if apierrors.Reason(st.Err()) != "" {
		return ""
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded:
		return fmt.Sprintf("error: no Capstan API replica answered: %s. Is the cluster up? Point capctl at it with --server or $%s.",
			st.Message(), client.EnvServer)
	}
	return ""
}

func isCanceled(err error) bool {
	return status.Code(err) == codes.Canceled
}
