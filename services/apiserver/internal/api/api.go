// Package api is the gRPC surface of the API server: it registers every
// <Kind>Service on a gRPC server and turns each standard call into a call of
// the registry.
//
// The services are not hand-written one by one: every <Kind>Service follows
// the standard-method convention of package resource (GetPod takes
// GetPodRequest{namespace, name} and returns GetPodResponse{pod}, ...), so one
// handler per verb, working on the messages through protobuf reflection,
// serves all kinds. Methods outside the convention (PodService/BindPod) are
// registered explicitly; Register fails if any method of a service is left
// without a handler, so a proto change cannot silently go unserved.
//
// A call that writes may carry a fence (the caller's lease and epoch) in its
// metadata; its handler parses it once, refusing a malformed one with
// INVALID_ARGUMENT, and passes it to each registry write as
// registry.WriteOptions.
//
// Handlers are safe for concurrent use.
package api

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/apiserver/internal/leases"
	"github.com/capstan-dev/capstan/services/apiserver/internal/registry"
)

// fieldGracePeriodSeconds is DeletePodRequest's grace period field.
const fieldGracePeriodSeconds = "grace_period_seconds"

// unaryFunc serves one unary call on decoded messages.
type unaryFunc func(ctx context.Context, req proto.Message) (proto.Message, error)

// writeFunc serves one unary call that writes; opts guard each of its
// writes and come from the call's metadata (see fenced).
type writeFunc func(ctx context.Context, req proto.Message, opts registry.WriteOptions) (proto.Message, error)

// Register registers every kind's service on srv: the standard methods
// served by reg, the lease methods by leaseService. The returned close
// releases the connections to node agents that logs and port forwards opened; call
// it after srv has stopped.
func Register(srv grpc.ServiceRegistrar, reg *registry.Registry, leaseService *leases.Service) (close func(), err error) {
	special := map[protoreflect.FullName]unaryFunc{
		"capstan.v1.PodService.BindPod": fenced(func(ctx context.Context, req proto.Message, opts registry.WriteOptions) (proto.Message, error) {
			pod, err := reg.BindPod(ctx, req.(*capstanv1.BindPodRequest), opts)
			if err != nil {
				return nil, err
			}
			return &capstanv1.BindPodResponse{Pod: pod}, nil
		}),
		"capstan.v1.LeaseService.AcquireLease": func(ctx context.Context, req proto.Message) (proto.Message, error) {
			return leaseService.Acquire(ctx, req.(*capstanv1.AcquireLeaseRequest))
		},
		"capstan.v1.LeaseService.RenewLease": func(ctx context.Context, req proto.Message) (proto.Message, error) {
			return leaseService.Renew(ctx, req.(*capstanv1.RenewLeaseRequest))
		},
		"capstan.v1.LeaseService.ReleaseLease": func(ctx context.Context, req proto.Message) (proto.Message, error) {
			return leaseService.Release(ctx, req.(*capstanv1.ReleaseLeaseRequest))
		},
	}
	nodes := newNodeProxy(reg)
	specialStreams := map[protoreflect.FullName]grpc.StreamHandler{
		"capstan.v1.PodService.StreamPodLogs": nodes.streamLogs,
		"capstan.v1.PodService.PortForward":   nodes.portForward,
		"capstan.v1.LeaseService.HoldLease": func(_ any, ss grpc.ServerStream) error {
			return leaseService.Hold(ss)
		},
	}
	for _, kind := range resource.All() {
		desc, err := serviceDesc(kind, reg, special, specialStreams)
		if err != nil {
			return nil, err
		}
		srv.RegisterService(desc, struct{}{})
	}
	return nodes.Close, nil
}

func serviceDesc(kind *resource.Kind, reg *registry.Registry, special map[protoreflect.FullName]unaryFunc, specialStreams map[protoreflect.FullName]grpc.StreamHandler) (*grpc.ServiceDesc, error) {
	svc := kind.Service()
	desc := &grpc.ServiceDesc{
		ServiceName: string(svc.FullName()),
		HandlerType: (*any)(nil),
		Metadata:    svc.ParentFile().Path(),
	}
	h := &handlers{kind: kind, reg: reg}
	methods := svc.Methods()
	for i := 0; i < methods.Len(); i++ {
		m := methods.Get(i)
		fullMethod := fmt.Sprintf("/%s/%s", svc.FullName(), m.Name())
		verb, standard := kind.VerbOf(m.Name())
		switch {
		case standard && verb == resource.Watch:
			desc.Streams = append(desc.Streams, grpc.StreamDesc{
				StreamName:    string(m.Name()),
				Handler:       h.watchHandler(m),
				ServerStreams: true,
			})
		case standard:
			var fn unaryFunc
			if verb == resource.Get || verb == resource.List {
				fn = h.read(verb, m)
			} else {
				fn = fenced(h.write(verb, m))
			}
			desc.Methods = append(desc.Methods, grpc.MethodDesc{
				MethodName: string(m.Name()),
				Handler:    unaryHandler(fullMethod, m, fn),
			})
		case specialStreams[m.FullName()] != nil:
			desc.Streams = append(desc.Streams, grpc.StreamDesc{
				StreamName:    string(m.Name()),
				Handler:       specialStreams[m.FullName()],
				ServerStreams: m.IsStreamingServer(),
				ClientStreams: m.IsStreamingClient(),
			})
		case special[m.FullName()] != nil:
			desc.Methods = append(desc.Methods, grpc.MethodDesc{
				MethodName: string(m.Name()),
				Handler:    unaryHandler(fullMethod, m, special[m.FullName()]),
			})
		default:
			return nil, fmt.Errorf("api: no handler for %s", m.FullName())
		}
	}
	return desc, nil
}

// fenced serves a write as a unary call: it reads the call's fencing
// metadata into the write options fn's writes must pass on, and refuses a
// malformed fence before fn runs.
func fenced(fn writeFunc) unaryFunc {
	return func(ctx context.Context, req proto.Message) (proto.Message, error) {
		opts, err := writeOptions(ctx)
		if err != nil {
			return nil, err
		}
		return fn(ctx, req, opts)
	}
}

// unaryHandler adapts fn to grpc's method handler: decode into the generated
// request type, run the interceptor chain, call fn.
func unaryHandler(fullMethod string, m protoreflect.MethodDescriptor, fn unaryFunc) grpc.MethodHandler {
	return func(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		req, err := resource.NewMessage(m.Input())
		if err != nil {
			return nil, apierrors.Internal("%v", err)
		}
		if err := dec(req); err != nil {
			return nil, err
		}
		if interceptor == nil {
			return fn(ctx, req)
		}
		info := &grpc.UnaryServerInfo{FullMethod: fullMethod}
		return interceptor(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			return fn(ctx, req.(proto.Message))
		})
	}
}

// handlers serves the standard verbs of one kind.
type handlers struct {
	kind *resource.Kind
	reg  *registry.Registry
}

// respond wraps the object a call returns in the method's response.
func (h *handlers) respond(m protoreflect.MethodDescriptor, obj resource.Object, err error) (proto.Message, error) {
	if err != nil {
		return nil, err
	}
	return h.objectResponse(m, obj)
}

// write serves the standard verbs that change objects.
func (h *handlers) write(verb resource.Verb, m protoreflect.MethodDescriptor) writeFunc {
	kind, reg := h.kind, h.reg
	switch verb {
	case resource.Create:
		return func(ctx context.Context, req proto.Message, opts registry.WriteOptions) (proto.Message, error) {
			obj, err := reg.Create(ctx, kind, h.requestObject(req), opts)
			return h.respond(m, obj, err)
		}
	case resource.Update:
		return func(ctx context.Context, req proto.Message, opts registry.WriteOptions) (proto.Message, error) {
			obj, err := reg.Update(ctx, kind, h.requestObject(req), opts)
			return h.respond(m, obj, err)
		}
	case resource.UpdateStatus:
		return func(ctx context.Context, req proto.Message, opts registry.WriteOptions) (proto.Message, error) {
			obj, err := reg.UpdateStatus(ctx, kind, h.requestObject(req), opts)
			return h.respond(m, obj, err)
		}
	case resource.Delete:
		return func(ctx context.Context, req proto.Message, opts registry.WriteOptions) (proto.Message, error) {
			var pre *capstanv1.Preconditions
			if v := resource.FieldValue(req, resource.FieldPreconditions); v.IsValid() && v.Message().IsValid() {
				pre = v.Message().Interface().(*capstanv1.Preconditions)
			}
			var grace *int64
			r := req.ProtoReflect()
			if fd := r.Descriptor().Fields().ByName(fieldGracePeriodSeconds); fd != nil && r.Has(fd) {
				g := r.Get(fd).Int()
				grace = &g
			}
			obj, err := reg.Delete(ctx, kind, h.namespace(req), resource.StringField(req, resource.FieldName), pre, grace, opts)
			return h.respond(m, obj, err)
		}
	}
	panic("api: write handler for verb " + string(verb))
}

// read serves the standard verbs that only read.
func (h *handlers) read(verb resource.Verb, m protoreflect.MethodDescriptor) unaryFunc {
	kind, reg := h.kind, h.reg
	switch verb {
	case resource.Get:
		return func(ctx context.Context, req proto.Message) (proto.Message, error) {
			obj, err := reg.Get(ctx, kind, h.namespace(req), resource.StringField(req, resource.FieldName))
			return h.respond(m, obj, err)
		}
	case resource.List:
		return func(ctx context.Context, req proto.Message) (proto.Message, error) {
			res, err := reg.List(ctx, kind, h.listRequest(req))
			if err != nil {
				return nil, err
			}
			resp, err := resource.NewMessage(m.Output())
			if err != nil {
				return nil, apierrors.Internal("%v", err)
			}
			r := resp.ProtoReflect()
			list := r.Mutable(kind.ObjectField(m.Output())).List()
			for _, obj := range res.Items {
				list.Append(protoreflect.ValueOfMessage(obj.ProtoReflect()))
			}
			resource.SetField(resp, resource.FieldNextPageToken, protoreflect.ValueOfString(res.Continue))
			resource.SetField(resp, resource.FieldResourceVersion, protoreflect.ValueOfInt64(res.Revision))
			return resp, nil
		}
	}
	panic("api: read handler for verb " + string(verb))
}

func (h *handlers) watchHandler(m protoreflect.MethodDescriptor) grpc.StreamHandler {
	return func(_ any, stream grpc.ServerStream) error {
		req, err := resource.NewMessage(m.Input())
		if err != nil {
			return apierrors.Internal("%v", err)
		}
		if err := stream.RecvMsg(req); err != nil {
			return err
		}
		lr := h.listRequest(req)
		lr.ResourceVersion = resource.IntField(req, resource.FieldResourceVersion)
		w, err := h.reg.Watch(stream.Context(), h.kind, lr)
		if err != nil {
			return err
		}
		defer w.Stop()
		objField := h.kind.ObjectField(m.Output())
		for ev := range w.Events() {
			resp, err := resource.NewMessage(m.Output())
			if err != nil {
				return apierrors.Internal("%v", err)
			}
			r := resp.ProtoReflect()
			resource.SetField(resp, resource.FieldType, protoreflect.ValueOfEnum(ev.Type.Number()))
			resource.SetField(resp, resource.FieldResourceVersion, protoreflect.ValueOfInt64(ev.Revision))
			if ev.Object != nil {
				r.Set(objField, protoreflect.ValueOfMessage(ev.Object.ProtoReflect()))
			}
			if err := stream.SendMsg(resp); err != nil {
				return err
			}
		}
		return w.Err()
	}
}

// requestObject is the object a Create/Update request carries, or nil.
func (h *handlers) requestObject(req proto.Message) resource.Object {
	r := req.ProtoReflect()
	fd := h.kind.ObjectField(r.Descriptor())
	if fd == nil || !r.Has(fd) {
		return nil
	}
	return r.Get(fd).Message().Interface().(resource.Object)
}

func (h *handlers) objectResponse(m protoreflect.MethodDescriptor, obj resource.Object) (proto.Message, error) {
	resp, err := resource.NewMessage(m.Output())
	if err != nil {
		return nil, apierrors.Internal("%v", err)
	}
	if obj != nil {
		resp.ProtoReflect().Set(h.kind.ObjectField(m.Output()), protoreflect.ValueOfMessage(obj.ProtoReflect()))
	}
	return resp, nil
}

func (h *handlers) namespace(req proto.Message) string {
	return h.kind.Namespace(resource.StringField(req, resource.FieldNamespace))
}

func (h *handlers) listRequest(req proto.Message) registry.ListRequest {
	return registry.ListRequest{
		Namespace:     resource.StringField(req, resource.FieldNamespace),
		LabelSelector: resource.StringField(req, resource.FieldLabelSelector),
		FieldSelector: resource.StringField(req, resource.FieldFieldSelector),
		PageSize:      int32(resource.IntField(req, resource.FieldPageSize)),
		PageToken:     resource.StringField(req, resource.FieldPageToken),
	}
}
