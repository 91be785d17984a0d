package client

import (
	"context"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
)

// Retry backoff between attempts of one call.
const (
	retryFirstDelay = 25 * time.Millisecond
	retryMaxDelay   = time.Second
)

// retryRule says whether a method may be repeated after an ambiguous failure
// and how an error answering a repeat is read (see the package doc).
type retryRule int

const (
	noRetry retryRule = iota
	retryRead
	retryCreate
	retryUpdate
	retryUpdateStatus
	retryDelete
	retryBind
	retryRelease
)

type methodRule struct {
	kind *resource.Kind // nil for ClusterService
	rule retryRule
}

// methodRules maps every known full method name to its rule; methods not in
// it are not retried.
var methodRules = buildMethodRules()

func buildMethodRules() map[string]methodRule {
	rules := map[string]methodRule{}
	for _, k := range resource.All() {
		for verb, rule := range map[resource.Verb]retryRule{
			resource.Get:          retryRead,
			resource.List:         retryRead,
			resource.Create:       retryCreate,
			resource.Update:       retryUpdate,
			resource.UpdateStatus: retryUpdateStatus,
			resource.Delete:       retryDelete,
		} {
			if k.Method(verb) != nil {
				rules[k.FullMethod(verb)] = methodRule{kind: k, rule: rule}
			}
		}
	}
	rules[capstanv1.PodService_BindPod_FullMethodName] = methodRule{kind: resource.MustLookup("Pod"), rule: retryBind}
	// Renewing is idempotent; a release whose repeat finds the lease gone
	// was applied. Acquire is not retried here: the elector calls it again
	// and recognises a holding its lost attempt made.
	rules[capstanv1.LeaseService_RenewLease_FullMethodName] = methodRule{rule: retryRead}
	rules[capstanv1.LeaseService_ReleaseLease_FullMethodName] = methodRule{rule: retryRelease}
	cluster := capstanv1.File_capstan_v1_cluster_proto.Services().ByName("ClusterService")
	for i := 0; i < cluster.Methods().Len(); i++ {
		m := cluster.Methods().Get(i)
		rules["/"+string(cluster.FullName())+"/"+string(m.Name())] = methodRule{rule: retryRead}
	}
	return rules
}

// interceptUnary applies the call timeout, identity, wait-for-ready and the
// retry rules to every unary call on the connection, typed or generic.
func (c *Client) interceptUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	ctx = c.withIdentity(ctx)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.CallTimeout)
		defer cancel()
	}
	opts = append([]grpc.CallOption{grpc.WaitForReady(true)}, opts...)
	mr := methodRules[method]

	delay := retryFirstDelay
	// mayHaveApplied is set once an attempt failed in a way that leaves
	// open whether the server carried it out.
	mayHaveApplied := false
	for attempt := 1; ; attempt++ {
		err := c.attempt(ctx, method, req, reply, cc, invoker, opts)
		if err == nil {
			return nil
		}
		noticeLostLease(ctx, err)
		if mayHaveApplied {
			if settled, result := c.settleRepeat(ctx, mr, req, reply, err); settled {
				if result == nil {
					c.log.Debug("repeated call found its first attempt applied", "method", method, "attempt", attempt, "answer", status.Code(err).String())
				}
				return result
			}
		}
		if mr.rule == noRetry || !retryable(ctx, err) {
			return err
		}
		mayHaveApplied = true
		c.log.Debug("retrying call", "method", method, "attempt", attempt, "error", err)
		if !sleepCtx(ctx, jitter(delay)) {
			return err
		}
		delay = min(2*delay, retryMaxDelay)
	}
}

// attempt makes one attempt, bounded by the attempt timeout.
func (c *Client) attempt(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) error {
	if c.cfg.AttemptTimeout > 0 {
		if deadline, _ := ctx.Deadline(); time.Until(deadline) > c.cfg.AttemptTimeout {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, c.cfg.AttemptTimeout)
			defer cancel()
		}
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

// settleRepeat reads the error a repeated write got: settled reports whether
// the rule decides the call now, with result as its outcome (nil: success,
// reply filled in).
func (c *Client) settleRepeat(ctx context.Context, mr methodRule, req, reply any, err error) (settled bool, result error) {
	code := status.Code(err)
	switch mr.rule {
	case retryCreate:
		if code != codes.AlreadyExists {
			return false, nil
		}
		return true, c.settleWithStored(ctx, mr.kind, req, reply, err, createApplied)
	case retryUpdate:
		if code != codes.Aborted {
			return false, nil
		}
		return true, c.settleWithStored(ctx, mr.kind, req, reply, err, updateApplied)
	case retryUpdateStatus:
		if code != codes.Aborted {
			return false, nil
		}
		return true, c.settleWithStored(ctx, mr.kind, req, reply, err, statusUpdateApplied)
	case retryDelete:
		if code != codes.NotFound {
			return false, nil
		}
		proto.Reset(reply.(proto.Message))
		return true, nil
	case retryRelease:
		if !apierrors.Is(err, apierrors.ReasonLeaseNotHeld) {
			return false, nil
		}
		proto.Reset(reply.(proto.Message))
		return true, nil
	case retryBind:
		if code != codes.FailedPrecondition || apierrors.Reason(err) == apierrors.ReasonLeaseNotHeld {
			return false, nil
		}
		return true, c.settleBind(ctx, mr.kind, req.(*capstanv1.BindPodRequest), reply.(*capstanv1.BindPodResponse), err)
	}
	return false, nil
}

// settleWithStored reads the object a repeated write was about and returns
// nil with it in reply if applied(sent, stored) says the write is there;
// otherwise the repeat's error answer.
func (c *Client) settleWithStored(ctx context.Context, kind *resource.Kind, req, reply any, answer error, applied func(sent, stored resource.Object) bool) error {
	sent := objectIn(kind, req.(proto.Message))
	if sent == nil {
		return answer
	}
	meta := resource.Meta(resource.Clone(sent))
	stored, err := c.Get(ctx, kind, meta.GetNamespace(), meta.GetName())
	if err != nil {
		c.log.Debug("could not read the object to settle a repeated write", "kind", kind.Name, "name", meta.GetName(), "error", err)
		return answer
	}
	if !applied(sent, stored) {
		return answer
	}
	setObject(kind, reply.(proto.Message), stored)
	return nil
}

func (c *Client) settleBind(ctx context.Context, kind *resource.Kind, req *capstanv1.BindPodRequest, reply *capstanv1.BindPodResponse, answer error) error {
	stored, err := c.Get(ctx, kind, req.GetNamespace(), req.GetName())
	if err != nil {
		return answer
	}
	pod := stored.(*capstanv1.Pod)
	if pod.GetSpec().GetNodeName() != req.GetNodeName() || (req.GetUid() != "" && pod.GetMetadata().GetUid() != req.GetUid()) {
		return answer
	}
	proto.Reset(reply)
	reply.Pod = pod
	return nil
}

// objectIn returns the object field of a request or response of kind, or nil.
func objectIn(kind *resource.Kind, msg proto.Message) resource.Object {
	r := msg.ProtoReflect()
	fd := kind.ObjectField(r.Descriptor())
	if fd == nil || fd.IsList() || !r.Has(fd) {
		return nil
	}
	obj, _ := r.Get(fd).Message().Interface().(resource.Object)
	return obj
}

// setObject makes obj the only content of msg, a response of kind.
func setObject(kind *resource.Kind, msg proto.Message, obj resource.Object) {
	proto.Reset(msg)
	r := msg.ProtoReflect()
	if fd := kind.ObjectField(r.Descriptor()); fd != nil {
		r.Set(fd, protoreflect.ValueOfMessage(obj.ProtoReflect()))
	}
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
