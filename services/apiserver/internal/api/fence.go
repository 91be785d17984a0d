package api

import (
	"context"
	"strconv"
	"strings"

	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/validation"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/internal/registry"
	"google.golang.org/grpc/metadata"
)

// withFence reads the fencing metadata of a call (wellknown.MetadataLease,
// MetadataLeaseEpoch) into the registry's context, so that every write the
// call makes checks the lease in its own transaction. A call without it is
// not fenced; a call with half of it or a malformed one is INVALID_ARGUMENT.
func withFence(ctx context.Context) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	leases, epochs := md.Get(wellknown.MetadataLease), md.Get(wellknown.MetadataLeaseEpoch)
	if len(leases) == 0 && len(epochs) == 0 {
		return ctx, nil
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
	return registry.WithFence(ctx, namespace, name, epoch), nil
}
