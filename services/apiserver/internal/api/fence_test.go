package api

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/storage"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// TestWriteOptions: the fencing metadata of a call becomes the fence of its
// writes, and anything but none or exactly one well-formed lease and epoch
// is INVALID_ARGUMENT naming the offending key.
func TestWriteOptions(t *testing.T) {
	const lease, epoch = wellknown.MetadataLease, wellknown.MetadataLeaseEpoch
	tests := []struct {
		name  string
		md    []string // key, value, ...
		want  *storage.Fence
		field string // of the INVALID_ARGUMENT, if any
	}{
		{"no fence", nil, nil, ""},
		{"name only: the system namespace", []string{lease, "scheduler", epoch, "7"},
			&storage.Fence{LeaseKey: "/capstan/leases/capstan-system/scheduler", Epoch: 7, Namespace: "capstan-system", Name: "scheduler"}, ""},
		{"namespace/name", []string{lease, "capstan-node-lease/node-1", epoch, "42"},
			&storage.Fence{LeaseKey: "/capstan/leases/capstan-node-lease/node-1", Epoch: 42, Namespace: "capstan-node-lease", Name: "node-1"}, ""},
		{"lease without epoch", []string{lease, "scheduler"}, nil, lease},
		{"epoch without lease", []string{epoch, "7"}, nil, lease},
		{"two leases", []string{lease, "a", lease, "b", epoch, "7"}, nil, lease},
		{"bad namespace", []string{lease, "Bad_NS/a", epoch, "7"}, nil, lease},
		{"bad name", []string{lease, "Bad_Name", epoch, "7"}, nil, lease},
		{"epoch not a number", []string{lease, "a", epoch, "x"}, nil, epoch},
		{"epoch zero", []string{lease, "a", epoch, "0"}, nil, epoch},
		{"epoch negative", []string{lease, "a", epoch, "-3"}, nil, epoch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(tt.md...))
			opts, err := writeOptions(ctx)
			if tt.field != "" {
				if apierrors.Code(err) != codes.InvalidArgument || apierrors.Field(err) != tt.field {
					t.Fatalf("writeOptions = %v, want INVALID_ARGUMENT on %s", err, tt.field)
				}
				return
			}
			if err != nil {
				t.Fatalf("writeOptions: %v", err)
			}
			if (opts.Fence == nil) != (tt.want == nil) || (tt.want != nil && *opts.Fence != *tt.want) {
				t.Fatalf("fence = %+v, want %+v", opts.Fence, tt.want)
			}
		})
	}
	// A call with no metadata at all is not fenced either.
	if opts, err := writeOptions(context.Background()); err != nil || opts.Fence != nil {
		t.Fatalf("writeOptions without metadata = %+v, %v", opts, err)
	}
}

// TestRequestIDMetadata: a well-formed request id is passed to the writes;
// anything else is INVALID_ARGUMENT naming the metadata key.
func TestRequestIDMetadata(t *testing.T) {
	const key = wellknown.MetadataRequestID
	tests := []struct {
		name  string
		md    []string
		want  string
		valid bool
	}{
		{"none", nil, "", true},
		{"a uuid", []string{key, "0f8fad5b-d9cb-469f-a165-70867728950e"}, "0f8fad5b-d9cb-469f-a165-70867728950e", true},
		{"dots and underscores", []string{key, "a.b_c"}, "a.b_c", true},
		{"empty", []string{key, ""}, "", false},
		{"too long", []string{key, strings.Repeat("a", 65)}, "", false},
		{"a slash", []string{key, "a/b"}, "", false},
		{"twice", []string{key, "a", key, "b"}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, err := writeOptions(metadata.NewIncomingContext(context.Background(), metadata.Pairs(tt.md...)))
			if !tt.valid {
				if apierrors.Code(err) != codes.InvalidArgument || apierrors.Field(err) != key {
					t.Fatalf("writeOptions = %v, want INVALID_ARGUMENT on %s", err, key)
				}
				return
			}
			if err != nil || opts.RequestID != tt.want {
				t.Fatalf("writeOptions = %+v, %v; want request id %q", opts, err, tt.want)
			}
		})
	}
}
