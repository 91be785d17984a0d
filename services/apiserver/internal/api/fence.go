package api

import (
	"context"
	"strconv"
	"strings"

	"google.golang.org/grpc/metadata"

	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/validation"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/internal/registry"
)

// writeOptions reads the fencing metadata of a call (wellknown.MetadataLease,
// MetadataLeaseEpoch) into the options of its writes, which the handler then
// passes to every registry write it makes, so each one checks the lease in
// its own transaction. A call without it is not fenced; a call with half of
// it or a malformed one is INVALID_ARGUMENT.
func writeOptions(ctx context.Context) (registry.WriteOptions, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	leases, epochs := md.Get(wellknown.MetadataLease), md.Get(wellknown.MetadataLeaseEpoch)
	if len(leases) == 0 && len(epochs) == 0 {
		return registry.WriteOptions{}, nil
	}
	if len(leases) != 1 || len(epochs) != 1 {
		return registry.WriteOptions{}, apierrors.Invalid(wellknown.MetadataLease,
			"a fenced call carries exactly one "+wellknown.MetadataLease+" and one "+wellknown.MetadataLeaseEpoch)
	}
	namespace, name, found := strings.Cut(leases[0], "/")
	if !found {
		namespace, name = wellknown.SystemNamespace, leases[0]
	}
	if err := validation.Namespace(wellknown.MetadataLease, namespace); err != nil {
		return registry.WriteOptions{}, err
	}
	if err := validation.Name(resource.MustLookup("Lease"), wellknown.MetadataLease, name); err != nil {
		return registry.WriteOptions{}, err
	}
	epoch, err := strconv.ParseInt(epochs[0], 10, 64)
	if err != nil || epoch <= 0 {
		return registry.WriteOptions{}, apierrors.Invalid(wellknown.MetadataLeaseEpoch, "must be a positive integer, not "+strconv.Quote(epochs[0]))
	}
	return registry.WriteOptions{Fence: registry.LeaseFence(namespace, name, epoch)}, nil
}
