package client

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/resource"
)

// ListOptions select and page a List.
type ListOptions struct {
	// Namespace; empty means "default", resource.AllNamespaces ("*") every
	// namespace. Ignored for cluster-scoped kinds.
	Namespace string
	// LabelSelector in Kubernetes syntax ("app=web,tier in (a,b)").
	LabelSelector string
	// FieldSelector, for example "spec.node_name=node-1".
	FieldSelector string
	// PageSize is the most items of one page; 0 means all.
	PageSize int32
	// PageToken is the NextPageToken of the previous page.
	PageToken string
}

// ListResult is one page of a List, or every page of a ListAll.
type ListResult struct {
	// Items, ordered by namespace and name.
	Items []resource.Object
	// ResourceVersion the list was read at: a Watch from it sees every
	// later change.
	ResourceVersion int64
	// NextPageToken fetches the next page; empty on the last one.
	NextPageToken string
}

// invoke calls verb of kind with a request built by fill and returns the
// response message.
func (c *Client) invoke(ctx context.Context, kind *resource.Kind, verb resource.Verb, fill func(req proto.Message)) (proto.Message, error) {
	m := kind.Method(verb)
	if m == nil {
		return nil, status.Errorf(codes.Unimplemented, "client: %s has no %s method", kind.Name, verb)
	}
	req, err := resource.NewMessage(m.Input())
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	resp, err := resource.NewMessage(m.Output())
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	fill(req)
	if err := c.conn.Invoke(ctx, kind.FullMethod(verb), req, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// Get reads one object (a linearizable read). NOT_FOUND if it does not exist.
func (c *Client) Get(ctx context.Context, kind *resource.Kind, namespace, name string) (resource.Object, error) {
	resp, err := c.invoke(ctx, kind, resource.Get, func(req proto.Message) {
		resource.SetField(req, resource.FieldNamespace, protoreflect.ValueOfString(namespace))
		resource.SetField(req, resource.FieldName, protoreflect.ValueOfString(name))
	})
	if err != nil {
		return nil, err
	}
	return responseObject(kind, resp)
}

// List reads one page of objects of kind.
func (c *Client) List(ctx context.Context, kind *resource.Kind, opts ListOptions) (ListResult, error) {
	resp, err := c.invoke(ctx, kind, resource.List, func(req proto.Message) {
		resource.SetField(req, resource.FieldNamespace, protoreflect.ValueOfString(opts.Namespace))
		resource.SetField(req, resource.FieldLabelSelector, protoreflect.ValueOfString(opts.LabelSelector))
		resource.SetField(req, resource.FieldFieldSelector, protoreflect.ValueOfString(opts.FieldSelector))
		resource.SetField(req, resource.FieldPageSize, protoreflect.ValueOfInt32(opts.PageSize))
		resource.SetField(req, resource.FieldPageToken, protoreflect.ValueOfString(opts.PageToken))
	})
	if err != nil {
		return ListResult{}, err
	}
	r := resp.ProtoReflect()
	list := r.Get(kind.ObjectField(r.Descriptor())).List()
	res := ListResult{
		Items:           make([]resource.Object, 0, list.Len()),
		ResourceVersion: resource.FieldValue(resp, resource.FieldResourceVersion).Int(),
		NextPageToken:   resource.StringField(resp, resource.FieldNextPageToken),
	}
	for i := 0; i < list.Len(); i++ {
		res.Items = append(res.Items, list.Get(i).Message().Interface().(resource.Object))
	}
	return res, nil
}

// ListAll follows every page from opts.PageToken on (opts.PageSize per
// page, 0 for one page with everything) and returns all items with the
// resource version of the first page, at which every page was read.
func (c *Client) ListAll(ctx context.Context, kind *resource.Kind, opts ListOptions) (ListResult, error) {
	var all ListResult
	for page := 0; ; page++ {
		res, err := c.List(ctx, kind, opts)
		if err != nil {
			return ListResult{}, err
		}
		if page == 0 {
			all.ResourceVersion = res.ResourceVersion
		}
		all.Items = append(all.Items, res.Items...)
		if res.NextPageToken == "" {
			return all, nil
		}
		opts.PageToken = res.NextPageToken
	}
}

// Create stores a new object; its kind is that of obj's message type. It
// returns the object as stored (uid, resource_version set). ALREADY_EXISTS
// if the name is taken.
func (c *Client) Create(ctx context.Context, obj resource.Object) (resource.Object, error) {
	return c.write(ctx, resource.Create, obj)
}

// Update replaces obj's metadata and spec (status is kept). If
// obj.metadata.resource_version is set the update happens only at that
// version: ABORTED otherwise.
func (c *Client) Update(ctx context.Context, obj resource.Object) (resource.Object, error) {
	return c.write(ctx, resource.Update, obj)
}

// UpdateStatus replaces obj's status only. UNIMPLEMENTED for a kind without
// status.
func (c *Client) UpdateStatus(ctx context.Context, obj resource.Object) (resource.Object, error) {
	return c.write(ctx, resource.UpdateStatus, obj)
}

func (c *Client) write(ctx context.Context, verb resource.Verb, obj resource.Object) (resource.Object, error) {
	kind, ok := resource.ForMessage(obj)
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "client: %s is not a Capstan resource kind", obj.ProtoReflect().Descriptor().FullName())
	}
	resp, err := c.invoke(ctx, kind, verb, func(req proto.Message) {
		r := req.ProtoReflect()
		r.Set(kind.ObjectField(r.Descriptor()), protoreflect.ValueOfMessage(obj.ProtoReflect()))
	})
	if err != nil {
		return nil, err
	}
	return responseObject(kind, resp)
}

// Delete removes an object and returns it as it was, if pre (optional)
// matches. A Delete whose first attempt was lost with its replica and whose
// retry found the object gone returns (nil, nil): see the package doc.
func (c *Client) Delete(ctx context.Context, kind *resource.Kind, namespace, name string, pre *capstanv1.Preconditions, opts ...DeleteOption) (resource.Object, error) {
	var o deleteOptions
	for _, opt := range opts {
		opt(&o)
	}
	resp, err := c.invoke(ctx, kind, resource.Delete, func(req proto.Message) {
		resource.SetField(req, resource.FieldNamespace, protoreflect.ValueOfString(namespace))
		resource.SetField(req, resource.FieldName, protoreflect.ValueOfString(name))
		if pre != nil {
			resource.SetField(req, resource.FieldPreconditions, protoreflect.ValueOfMessage(pre.ProtoReflect()))
		}
		if o.gracePeriodSeconds != nil {
			resource.SetField(req, "grace_period_seconds", protoreflect.ValueOfInt64(*o.gracePeriodSeconds))
		}
	})
	if err != nil {
		return nil, err
	}
	return objectIn(kind, resp), nil
}

// DeleteOption changes how Delete deletes.
type DeleteOption func(*deleteOptions)

type deleteOptions struct{ gracePeriodSeconds *int64 }

// GracePeriod sets the grace period of a pod's deletion: the seconds its node
// agent waits between SIGTERM and SIGKILL. 0 removes the pod from the API at
// once (force), without waiting for its node agent. Kinds without a grace
// period ignore it.
func GracePeriod(seconds int64) DeleteOption {
	return func(o *deleteOptions) { o.gracePeriodSeconds = &seconds }
}

// responseObject is the object of a unary response of kind.
func responseObject(kind *resource.Kind, resp proto.Message) (resource.Object, error) {
	obj := objectIn(kind, resp)
	if obj == nil {
		return nil, status.Errorf(codes.Internal, "client: %s has no %s", resp.ProtoReflect().Descriptor().FullName(), kind.Name)
	}
	return obj, nil
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
