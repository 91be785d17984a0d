package client

import (
	"context"
	"strconv"

	"google.golang.org/grpc/metadata"

	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Fence is a lease holding: the lease and the epoch it was acquired at.
type Fence struct {
	Namespace string
	Name      string
	Epoch     int64
}

type fenceKey struct{}

type fenceValue struct {
	fence  Fence
	onLost func()
}

// WithFence returns a context whose calls carry the fence as request
// metadata (wellknown.MetadataLease, MetadataLeaseEpoch): the API server
// applies a write made with it only if the lease is still held at that
// epoch, in the same etcd transaction. When a call made with the context is
// refused with LEASE_NOT_HELD, onLost (if not nil) is called, so the holder
// stops acting at once; it may be called more than once.
func WithFence(ctx context.Context, f Fence, onLost func()) context.Context {
	ctx = context.WithValue(ctx, fenceKey{}, fenceValue{fence: f, onLost: onLost})
	return metadata.AppendToOutgoingContext(ctx,
		wellknown.MetadataLease, f.Namespace+"/"+f.Name,
		wellknown.MetadataLeaseEpoch, strconv.FormatInt(f.Epoch, 10))
}

// FenceFrom returns the fence of ctx, if it has one.
func FenceFrom(ctx context.Context) (Fence, bool) {
	v, ok := ctx.Value(fenceKey{}).(fenceValue)
	return v.fence, ok
}

// noticeLostLease calls the fence's onLost if err says the lease is gone.
func noticeLostLease(ctx context.Context, err error) {
	if !apierrors.Is(err, apierrors.ReasonLeaseNotHeld) {
		return
	}
	if v, ok := ctx.Value(fenceKey{}).(fenceValue); ok && v.onLost != nil {
		v.onLost()
	}
}
