package client

import (
	"context"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Retry backoff between attempts of one call.
const (
	retryFirstDelay = 25 * time.Millisecond
	retryMaxDelay   = time.Second
)

// WriteRetryWindow is the longest a write is retried after its first
// attempt, whatever its deadline: the API server remembers a request id for
// at least three minutes (package etcd3), and a retry must find the record
// of an attempt that landed.
const WriteRetryWindow = 2 * time.Minute

// retryRule says whether a method may be repeated after an ambiguous failure
// and how (see the package doc).
type retryRule int

const (
	noRetry retryRule = iota
	// retryRead: repeating changes nothing.
	retryRead
	// retryWrite: every attempt carries the call's request id, so the API
	// server applies the write at most once and answers a repeat with the
	// first attempt's outcome.
	retryWrite
	// retryRelease: ReleaseLease; LEASE_NOT_HELD on a repeat means the
	// lease is no longer this holder's, which is what was asked.
	retryRelease
)

// methodRules maps every known full method name to its rule; methods not in
// it are not retried.
var methodRules = buildMethodRules()

func buildMethodRules() map[string]retryRule {
	rules := map[string]retryRule{}
	for _, k := range resource.All() {
		for verb, rule := range map[resource.Verb]retryRule{
			resource.Get:          retryRead,
			resource.List:         retryRead,
			resource.Create:       retryWrite,
			resource.Update:       retryWrite,
			resource.UpdateStatus: retryWrite,
			resource.Delete:       retryWrite,
		} {
			if k.Method(verb) != nil {
				rules[k.FullMethod(verb)] = rule
			}
		}
	}
	rules[capstanv1.PodService_BindPod_FullMethodName] = retryWrite
	// Renewing is idempotent. Acquire is not retried here: package
	// leaderelection calls it again and recognises a holding its lost
	// attempt made by its holder identity, which is unique to the process.
	rules[capstanv1.LeaseService_RenewLease_FullMethodName] = retryRead
	rules[capstanv1.LeaseService_ReleaseLease_FullMethodName] = retryRelease
	cluster := capstanv1.File_capstan_v1_cluster_proto.Services().ByName("ClusterService")
	for i := 0; i < cluster.Methods().Len(); i++ {
		m := cluster.Methods().Get(i)
		rules["/"+string(cluster.FullName())+"/"+string(m.Name())] = retryRead
	}
	return rules
}

// interceptUnary applies the call timeout, identity, request id, attempt
// deadlines, wait-for-ready and the retry rules to every unary call on the
// connection, typed or generic.
func (c *Client) interceptUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	ctx = c.withIdentity(ctx)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.CallTimeout)
		defer cancel()
	}
	opts = append([]grpc.CallOption{grpc.WaitForReady(true)}, opts...)
	rule := methodRules[method]
	if rule == retryWrite {
		// One id for every attempt: the server records it with the write.
		ctx = metadata.AppendToOutgoingContext(ctx, wellknown.MetadataRequestID, uuid.NewString())
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, WriteRetryWindow)
		defer cancel()
	}

	delay := retryFirstDelay
	repeated := false
	for attempt := 1; ; attempt++ {
		err := c.attempt(ctx, method, req, reply, cc, invoker, opts)
		if err == nil {
			return nil
		}
		noticeLostLease(ctx, err)
		if repeated && rule == retryRelease && apierrors.Is(err, apierrors.ReasonLeaseNotHeld) {
			proto.Reset(reply.(proto.Message))
			return nil
		}
		if rule == noRetry || !retryable(ctx, err) {
			return err
		}
		repeated = true
		c.log.Debug("retrying call", "method", method, "attempt", attempt, "error", err)
		if !sleepCtx(ctx, jitter(delay)) {
			return err
		}
		delay = min(2*delay, retryMaxDelay)
	}
}

// attempt makes one attempt, bounded by the attempt timeout. The attempt's
// absolute deadline travels with it (wellknown.MetadataDeadline): gRPC's
// own timeout is relative to when the server reads the call, so a call that
// sat in a frozen replica's socket would otherwise get a fresh one, and be
// carried out long after this attempt was given up.
func (c *Client) attempt(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) error {
	if c.cfg.AttemptTimeout > 0 {
		if deadline, _ := ctx.Deadline(); time.Until(deadline) > c.cfg.AttemptTimeout {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, c.cfg.AttemptTimeout)
			defer cancel()
		}
	}
	if deadline, ok := ctx.Deadline(); ok {
		ctx = metadata.AppendToOutgoingContext(ctx, wellknown.MetadataDeadline, strconv.FormatInt(deadline.UnixNano(), 10))
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// retryable reports whether a failed attempt may be repeated: the replica
// was unavailable, or the attempt (not the call) ran out of time.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable:
		return true
	case codes.DeadlineExceeded:
		return true // the call's own deadline has not passed: only the attempt's
	}
	return false
}

// interceptStream names the caller and waits for a ready replica on stream
// opens; watches handle their own resumption (Watcher).
func (c *Client) interceptStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	opts = append([]grpc.CallOption{grpc.WaitForReady(true)}, opts...)
	return streamer(c.withIdentity(ctx), desc, cc, method, opts...)
}

// jitter spreads d over [d/2, d) so that many clients retrying after one
// replica died do not arrive together.
func jitter(d time.Duration) time.Duration {
	half := d / 2
	if half <= 0 {
		return d
	}
	return half + rand.N(half)
}

// sleepCtx waits d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
