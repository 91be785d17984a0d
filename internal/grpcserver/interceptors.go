package grpcserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Bounds of the margin by which a handler's deadline precedes the call's.
const (
	minDeadlineMargin = 20 * time.Millisecond
	maxDeadlineMargin = 500 * time.Millisecond
)

// deadlineMargin is how much earlier than the call's deadline the handler's
// context ends: 10% of the time left, clamped to [20ms, 500ms], and never
// more than half of it, so that even a very short deadline leaves the
// handler some time.
func deadlineMargin(remaining time.Duration) time.Duration {
	m := min(max(remaining/10, minDeadlineMargin), maxDeadlineMargin)
	return min(m, remaining/2)
}

// deadlineCapInterceptor bounds every unary call by limit and by the
// caller's absolute deadline (wellknown.MetadataDeadline, less the clock-skew
// allowance), and hands the handler a context that ends a margin before
// that. A call read when that deadline has already passed — it sat in this
// replica's socket while the replica was frozen, say — is refused with
// DEADLINE_EXCEEDED (DEADLINE_PASSED) before anything is done: gRPC's own
// timeout is relative to when the server reads the call, so it cannot tell.
// A storage call that runs out of the handler's time (etcd without quorum
// does not answer) fails while the caller is still listening, and the
// caller gets UNAVAILABLE — retry on another replica — rather than its own
// DEADLINE_EXCEEDED, which says nothing about where to go next. The
// handler's context is also one the pause watch cancels (see pauseWatch).
func (s *Server) deadlineCapInterceptor(limit, skew time.Duration, now func() time.Time) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := now()
		deadline := start.Add(limit)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		callerDeadline, ok, err := CallerDeadline(ctx)
		if err != nil {
			return nil, err
		}
		if ok {
			if latest := callerDeadline.Add(-skew); !start.Before(latest) {
				return nil, apierrors.DeadlinePassed("when this replica read the call", callerDeadline)
			} else if latest.Before(deadline) {
				deadline = latest
			}
		}
		budget := deadline.Sub(start)
		handlerCtx, cancel := context.WithDeadline(ctx, deadline.Add(-deadlineMargin(budget)))
		defer cancel()
		handlerCtx, release := s.pauses.admit(handlerCtx)
		defer release()
		resp, err := handler(handlerCtx, req)
		if p, paused := context.Cause(handlerCtx).(pausedError); paused && err != nil {
			return nil, apierrors.Paused(p.pause)
		}
		if err != nil && ctx.Err() == nil && errors.Is(handlerCtx.Err(), context.DeadlineExceeded) && isDeadlineError(err) &&
			apierrors.Reason(err) != apierrors.ReasonDeadlinePassed {
			return nil, apierrors.NoQuorum(fmt.Errorf("no answer within %v: %w", budget.Round(time.Millisecond), err))
		}
		return resp, err
	}
}

// CallerDeadline reads the absolute deadline a Capstan client sent with the
// call (wellknown.MetadataDeadline); ok is false if there is none, and a
// malformed one is INVALID_ARGUMENT naming the metadata key.
func CallerDeadline(ctx context.Context) (deadline time.Time, ok bool, err error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get(wellknown.MetadataDeadline)
	switch len(values) {
	case 0:
		return time.Time{}, false, nil
	case 1:
	default:
		return time.Time{}, false, apierrors.Invalid(wellknown.MetadataDeadline, "sent more than once")
	}
	nanos, err := strconv.ParseInt(values[0], 10, 64)
	if err != nil || nanos <= 0 {
		return time.Time{}, false, apierrors.Invalid(wellknown.MetadataDeadline,
			"must be the deadline in decimal Unix nanoseconds, not "+strconv.Quote(values[0]))
	}
	return time.Unix(0, nanos), true, nil
}

func isDeadlineError(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded
}

// callLevel is the level of a call's log line: routine answers are debug,
// answers that hint at trouble with the cluster are warnings, bugs are errors.
func callLevel(code codes.Code) logging.Level {
	switch code {
	case codes.OK, codes.Canceled, codes.NotFound, codes.AlreadyExists, codes.Aborted,
		codes.InvalidArgument, codes.OutOfRange, codes.FailedPrecondition:
		return logging.LevelDebug
	case codes.Unauthenticated, codes.PermissionDenied, codes.ResourceExhausted:
		return logging.LevelInfo
	case codes.DeadlineExceeded, codes.Unavailable:
		return logging.LevelWarn
	default: // Unknown, Unimplemented, Internal, DataLoss
		return logging.LevelError
	}
}

// callFieldKeys renames the middleware's fields to Capstan's kebab-case keys;
// fields not listed are dropped (they repeat what every line says).
var callFieldKeys = map[string]string{
	logging.ServiceFieldKey:    "service",
	logging.MethodFieldKey:     "method",
	logging.MethodTypeFieldKey: "method-type",
	"grpc.code":                "code",
	"grpc.error":               "error",
	"peer.address":             "peer-address",
	"duration":                 "duration",
}

// newCallLogger adapts slog to the logging middleware.
func newCallLogger(logger *slog.Logger) func(ctx context.Context, level logging.Level, msg string, fields ...any) {
	return func(ctx context.Context, level logging.Level, msg string, fields ...any) {
		if !logger.Enabled(ctx, slog.Level(level)) {
			return
		}
		attrs := make([]slog.Attr, 0, len(fields)/2)
		for i := 0; i+1 < len(fields); i += 2 {
			key, ok := fields[i].(string)
			if !ok {
				continue
			}
			if renamed, ok := callFieldKeys[key]; ok {
				attrs = append(attrs, slog.Any(renamed, fields[i+1]))
			}
		}
		logger.LogAttrs(ctx, slog.Level(level), msg, attrs...)
	}
}

// stack returns the calling goroutine's stack, for the log line of a panic.
func stack() string {
	buf := make([]byte, 64<<10)
	buf = buf[:runtime.Stack(buf, false)]
	return strings.TrimSpace(string(buf))
}
