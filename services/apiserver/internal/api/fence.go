package api

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/grpc/metadata"

	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/storage"
	"github.com/capstan-dev/capstan/internal/validation"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/internal/registry"
)

// writeOptions reads the metadata that guards a call's writes into their
// options, which the handler then passes to every registry write it makes:
// the fence (wellknown.MetadataLease, MetadataLeaseEpoch), checked in each
// write's own transaction, and the request id (MetadataRequestID), recorded
// in it. A call without a fence is not fenced, one without a request id is
// not recorded; a fence with half of its metadata, or malformed metadata,
// is INVALID_ARGUMENT naming the key.
func writeOptions(ctx context.Context) (registry.WriteOptions, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	requestID, err := requestIDOf(md)
	if err != nil {
		return registry.WriteOptions{}, err
	}
	fence, err := fenceOf(md)
	if err != nil {
		return registry.WriteOptions{}, err
	}
	return registry.WriteOptions{Fence: fence, RequestID: requestID}, nil
}

// maxRequestIDLength bounds a request id (a UUID is 36 characters).
const maxRequestIDLength = 64

func requestIDOf(md metadata.MD) (string, error) {
	ids := md.Get(wellknown.MetadataRequestID)
	switch len(ids) {
	case 0:
		return "", nil
	case 1:
	default:
		return "", apierrors.Invalid(wellknown.MetadataRequestID, "sent more than once")
	}
	id := ids[0]
	if id == "" || len(id) > maxRequestIDLength || strings.IndexFunc(id, func(r rune) bool {
		return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '_' || r == '.')
	}) >= 0 {
		return "", apierrors.Invalid(wellknown.MetadataRequestID,
			fmt.Sprintf("must be 1 to %d characters of [A-Za-z0-9._-], not %q", maxRequestIDLength, id))
	}
	return id, nil
}

func fenceOf(md metadata.MD) (*storage.Fence, error) {
	leases, epochs := md.Get(wellknown.MetadataLease), md.Get(wellknown.MetadataLeaseEpoch)
	if len(leases) == 0 && len(epochs) == 0 {
		return nil, nil
	}
	if len(leases) != 1 || len(epochs) != 1 {
		return nil, apierrors.Invalid(wellknown.MetadataLease,
			"a fenced call carries exactly one "+wellknown.MetadataLease+" and one "+wellknown.MetadataLeaseEpoch)
	}
	namespace, name, found := strings.Cut(leases[0], "/")
	if !found {
		namespace, name = wellknown.SystemNamespace, leases[0]
	}
	if err := validation.Namespace(wellknown.MetadataLease, namespace); err != nil {
		return nil, err
	}
	if err := validation.Name(resource.MustLookup("Lease"), wellknown.MetadataLease, name); err != nil {
		return nil, err
	}
	epoch, err := strconv.ParseInt(epochs[0], 10, 64)
	if err != nil || epoch <= 0 {
		return nil, apierrors.Invalid(wellknown.MetadataLeaseEpoch, "must be a positive integer, not "+strconv.Quote(epochs[0]))
	}
	return registry.LeaseFence(namespace, name, epoch), nil
}
