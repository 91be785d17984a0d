// Package registry applies Capstan's object semantics on top of a
// storage.Interface, the same way for every kind: defaulting, validation,
// server-owned metadata (uid, generation, timestamps), the split between spec
// (Update) and status (UpdateStatus), selectors and watches. It is what the
// gRPC handlers of package api call; it knows nothing of gRPC framing.
//
// Every mutating method takes WriteOptions, so what guards a write (the
// fence of the caller's lease, the request id that makes its retries
// exact) is a parameter the caller passes, never a value riding in the
// context.
//
// A Registry is safe for concurrent use; it holds no per-request state.
package registry

import (
	"context"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/selector"
	"github.com/capstan-dev/capstan/internal/storage"
	"github.com/capstan-dev/capstan/internal/validation"
)

// Options configure a Registry.
type Options struct {
	// Logger receives the registry's log lines; slog.Default() if nil.
	Logger *slog.Logger
	// BookmarkInterval is how long a watch may stay idle before it gets a
	// BOOKMARK event; 0 disables bookmarks.
	BookmarkInterval time.Duration
	// Now is the clock for server-set timestamps; time.Now if nil.
	Now func() time.Time
}

// Registry serves the standard verbs for every kind.
type Registry struct {
	store storage.Interface
	opts  Options
}

// New returns a Registry over store. A Lease read through the registry
// carries its epoch only if store sets it (the API server's etcd3 store does,
// with leases.StampEpoch as its StampCreateRevision).
func New(store storage.Interface, opts Options) *Registry {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Registry{store: store, opts: opts}
}

// Store is the storage the registry writes to.
func (r *Registry) Store() storage.Interface { return r.store }

// ListRequest selects the objects of a List or Watch.
type ListRequest struct {
	Namespace     string
	LabelSelector string
	FieldSelector string
	PageSize      int32
	PageToken     string
	// ResourceVersion is where a Watch starts (0: current state, then changes).
	ResourceVersion int64
}

// WriteOptions guard one write through the registry; the zero value is an
// unguarded write. They are a parameter of every mutating method, not a
// value in its context, so a write's signature shows what guards it.
type WriteOptions struct {
	// Fence, if set, makes the write apply only while the lease it names is
	// still held at its epoch, checked in the write's own etcd transaction
	// (FAILED_PRECONDITION, reason LEASE_NOT_HELD, otherwise). LeaseFence
	// builds one.
	Fence *storage.Fence
	// RequestID, if set, names the call (the same on each of its
	// retries): its write is recorded under it in the same transaction, and
	// a repeat gets the recorded outcome instead of writing again
	// (storage.WriteOptions.RequestID).
	RequestID string
}

// LeaseFence is the fence of a holding of the Lease namespace/name at epoch.
func LeaseFence(namespace, name string, epoch int64) *storage.Fence {
	lease := resource.MustLookup("Lease")
	return &storage.Fence{
		LeaseKey:  lease.Key(namespace, name),
		Epoch:     epoch,
		Namespace: lease.Namespace(namespace),
		Name:      name,
	}
}

// storageOptions are what storage is told for a write with these options.
func (o WriteOptions) storageOptions() storage.WriteOptions {
	return storage.WriteOptions{Fence: o.Fence, RequestID: o.RequestID}
}

// refuseLeaseWrite refuses generic writes of Leases: a Lease is taken,
// renewed and released through LeaseService's own methods, which attach it
// to an etcd lease and give it its epoch.
func refuseLeaseWrite(kind *resource.Kind) error {
	if kind.Name == "Lease" {
		return apierrors.PreconditionFailed("a Lease is written only by AcquireLease, RenewLease and ReleaseLease (DeleteLease ends a holding)")
	}
	return nil
}

// FieldRoot is the name of the request field that carries an object of kind
// ("pod", "replica_set"): the root of the field paths in validation errors.
func FieldRoot(kind *resource.Kind) string {
	if fd := kind.ObjectField(kind.Method(resource.Create).Input()); fd != nil {
		return string(fd.Name())
	}
	return kind.Resource
}

func (r *Registry) newFunc(kind *resource.Kind) storage.NewFunc { return kind.New }

// Create stores a new object. The server sets uid, generation 1, create time
// and a fresh status; the client's values for them are ignored.
func (r *Registry) Create(ctx context.Context, kind *resource.Kind, in resource.Object, opts WriteOptions) (resource.Object, error) {
	if err := refuseLeaseWrite(kind); err != nil {
		return nil, err
	}
	if in == nil {
		return nil, apierrors.Invalid(FieldRoot(kind), "required")
	}
	obj := proto.Clone(in).(resource.Object)
	meta := resource.Meta(obj)
	if kind.Namespaced {
		meta.Namespace = kind.Namespace(meta.Namespace)
	}
	if err := validation.Object(kind, obj, FieldRoot(kind)); err != nil {
		return nil, err
	}
	meta.Uid = uuid.NewString()
	meta.ResourceVersion = 0
	meta.Generation = 1
	meta.CreateTime = timestamppb.New(r.opts.Now())
	meta.DeleteTime = nil
	meta.DeleteGracePeriodSeconds = 0
	if kind.HasStatus {
		clearField(obj, "status")
	}
	prepareForCreate(obj)
	return r.store.Create(ctx, kind.Key(meta.Namespace, meta.Name), obj, opts.storageOptions())
}

// prepareForCreate sets the status a new object of some kinds starts with.
func prepareForCreate(obj resource.Object) {
	if pod, ok := obj.(*capstanv1.Pod); ok {
		pod.Status = &capstanv1.PodStatus{Phase: "Pending"}
	}
}

// Get reads one object.
func (r *Registry) Get(ctx context.Context, kind *resource.Kind, namespace, name string) (resource.Object, error) {
	if err := validateRef(kind, namespace, name); err != nil {
		return nil, err
	}
	return r.store.Get(ctx, kind.Key(namespace, name), r.newFunc(kind))
}

// List reads a page of objects.
func (r *Registry) List(ctx context.Context, kind *resource.Kind, req ListRequest) (storage.ListResult, error) {
	pred, err := r.predicate(kind, req)
	if err != nil {
		return storage.ListResult{}, err
	}
	if req.PageSize < 0 {
		return storage.ListResult{}, apierrors.Invalid(resource.FieldPageSize, "must not be negative")
	}
	return r.store.List(ctx, kind.Prefix(req.Namespace), r.newFunc(kind), storage.ListOptions{
		Predicate: pred,
		Limit:     int64(req.PageSize),
		Continue:  req.PageToken,
	})
}

// Watch streams changes of the selected objects.
func (r *Registry) Watch(ctx context.Context, kind *resource.Kind, req ListRequest) (storage.Watcher, error) {
	pred, err := r.predicate(kind, req)
	if err != nil {
		return nil, err
	}
	if req.ResourceVersion < 0 {
		return nil, apierrors.Invalid(resource.FieldResourceVersion, "must not be negative")
	}
	return r.store.Watch(ctx, kind.Prefix(req.Namespace), r.newFunc(kind), storage.WatchOptions{
		Predicate:        pred,
		ResourceVersion:  req.ResourceVersion,
		BookmarkInterval: r.opts.BookmarkInterval,
	})
}

// validateRef checks the namespace and name fields of a Get or Delete.
func validateRef(kind *resource.Kind, namespace, name string) error {
	if kind.Namespaced && namespace != "" {
		if err := validation.Namespace(resource.FieldNamespace, namespace); err != nil {
			return err
		}
	}
	return validation.Name(kind, resource.FieldName, name)
}

func (r *Registry) predicate(kind *resource.Kind, req ListRequest) (storage.Predicate, error) {
	if kind.Namespaced && req.Namespace != "" && req.Namespace != resource.AllNamespaces {
		if err := validation.Namespace(resource.FieldNamespace, req.Namespace); err != nil {
			return nil, err
		}
	}
	return selector.Predicate(kind, req.LabelSelector, req.FieldSelector)
}

// Update replaces an object's metadata and spec; status and server-owned
// metadata are kept. A set metadata.resource_version (or uid) must match the
// stored one (ABORTED otherwise); without it the update applies to whatever
// is current. Generation grows when anything but metadata and status changes.
func (r *Registry) Update(ctx context.Context, kind *resource.Kind, in resource.Object, opts WriteOptions) (resource.Object, error) {
	if err := refuseLeaseWrite(kind); err != nil {
		return nil, err
	}
	if in == nil {
		return nil, apierrors.Invalid(FieldRoot(kind), "required")
	}
	obj := proto.Clone(in).(resource.Object)
	meta := resource.Meta(obj)
	if kind.Namespaced {
		meta.Namespace = kind.Namespace(meta.Namespace)
	}
	if err := validation.Object(kind, obj, FieldRoot(kind)); err != nil {
		return nil, err
	}
	pre := storage.Preconditions{ResourceVersion: meta.ResourceVersion, UID: meta.Uid}
	return r.store.Update(ctx, kind.Key(meta.Namespace, meta.Name), r.newFunc(kind), pre,
		func(current resource.Object) (resource.Object, error) {
			next := proto.Clone(obj).(resource.Object)
			nm, cm := resource.Meta(next), resource.Meta(current)
			nm.Uid = cm.Uid
			nm.CreateTime = cm.CreateTime
			nm.DeleteTime = cm.DeleteTime
			nm.DeleteGracePeriodSeconds = cm.DeleteGracePeriodSeconds
			nm.Generation = cm.Generation
			nm.ResourceVersion = cm.ResourceVersion
			if kind.HasStatus {
				copyField(current, next, "status")
			}
			if err := checkImmutable(kind, current, next); err != nil {
				return nil, err
			}
			if specChanged(current, next) {
				nm.Generation++
			}
			return next, nil
		}, opts.storageOptions())
}

// checkImmutable rejects updates that change what only a dedicated call may.
func checkImmutable(kind *resource.Kind, current, next resource.Object) error {
	if cur, ok := current.(*capstanv1.Pod); ok {
		nxt := next.(*capstanv1.Pod)
		if cur.GetSpec().GetNodeName() != nxt.GetSpec().GetNodeName() {
			return apierrors.Invalid(FieldRoot(kind)+".spec.node_name",
				"may not be changed by an update; use BindPod to bind an unbound pod")
		}
	}
	return nil
}

// UpdateStatus replaces an object's status and nothing else.
func (r *Registry) UpdateStatus(ctx context.Context, kind *resource.Kind, in resource.Object, opts WriteOptions) (resource.Object, error) {
	if err := refuseLeaseWrite(kind); err != nil {
		return nil, err
	}
	root := FieldRoot(kind)
	if !kind.HasStatus {
		return nil, apierrors.Invalid(root, kind.Name+" has no status")
	}
	if in == nil {
		return nil, apierrors.Invalid(root, "required")
	}
	meta := resource.Meta(in)
	namespace := kind.Namespace(meta.GetNamespace())
	if err := validation.Name(kind, root+".metadata.name", meta.GetName()); err != nil {
		return nil, err
	}
	pre := storage.Preconditions{ResourceVersion: meta.GetResourceVersion(), UID: meta.GetUid()}
	return r.store.Update(ctx, kind.Key(namespace, meta.GetName()), r.newFunc(kind), pre,
		func(current resource.Object) (resource.Object, error) {
			copyField(in, current, "status")
			return current, nil
		}, opts.storageOptions())
}

// DefaultGracePeriodSeconds is a pod's grace period when neither the delete
// call nor the pod names one.
const DefaultGracePeriodSeconds = 30

// Delete removes an object and returns its last state. A pod bound to a node
// is deleted gracefully unless gracePeriodSeconds is 0: it is only marked
// (metadata.delete_time, delete_grace_period_seconds) and its node agent
// stops its containers and then deletes it with a grace period of 0.
// gracePeriodSeconds nil means the pod's own termination grace period.
func (r *Registry) Delete(ctx context.Context, kind *resource.Kind, namespace, name string, pre *capstanv1.Preconditions, gracePeriodSeconds *int64, opts WriteOptions) (resource.Object, error) {
	if err := validateRef(kind, namespace, name); err != nil {
		return nil, err
	}
	if gracePeriodSeconds != nil && *gracePeriodSeconds < 0 {
		return nil, apierrors.Invalid("grace_period_seconds", "must not be negative")
	}
	key := kind.Key(namespace, name)
	precond := storage.Preconditions{ResourceVersion: pre.GetResourceVersion(), UID: pre.GetUid()}
	if kind.Name != "Pod" || (gracePeriodSeconds != nil && *gracePeriodSeconds == 0) {
		return r.store.Delete(ctx, key, r.newFunc(kind), precond, opts.storageOptions())
	}
	for {
		obj, raced, err := r.deletePodOnce(ctx, key, precond, gracePeriodSeconds, opts)
		// An unbound pod is deleted at the version it was read at; if it
		// changed in between (the scheduler bound it), decide again, unless
		// the caller asked for that very version.
		if raced && pre.GetResourceVersion() == 0 && ctx.Err() == nil {
			continue
		}
		return obj, err
	}
}

// deletePodOnce marks a bound pod for graceful deletion, or deletes an
// unbound one at the version it read; raced reports that this delete failed
// because the pod changed after that read. Both of its writes are guarded
// by opts.
func (r *Registry) deletePodOnce(ctx context.Context, key string, precond storage.Preconditions, gracePeriodSeconds *int64, opts WriteOptions) (obj resource.Object, raced bool, err error) {
	kind := resource.MustLookup("Pod")
	var deleteNow bool
	obj, err = r.store.Update(ctx, key, r.newFunc(kind), precond, func(current resource.Object) (resource.Object, error) {
		pod := current.(*capstanv1.Pod)
		deleteNow = pod.GetSpec().GetNodeName() == ""
		if deleteNow {
			return pod, nil // unchanged: no write; deleted below
		}
		grace := int64(DefaultGracePeriodSeconds)
		if g := pod.GetSpec().TerminationGracePeriodSeconds; g != nil {
			grace = *g
		}
		if gracePeriodSeconds != nil {
			grace = *gracePeriodSeconds
		}
		meta := resource.Meta(pod)
		if meta.DeleteTime != nil && meta.DeleteGracePeriodSeconds <= grace {
			return pod, nil // already terminating, at least as soon
		}
		if meta.DeleteTime == nil {
			meta.DeleteTime = timestamppb.New(r.opts.Now())
		}
		meta.DeleteGracePeriodSeconds = grace
		return pod, nil
	}, opts.storageOptions())
	if err != nil || !deleteNow {
		return obj, false, err
	}
	precond.ResourceVersion = resource.Meta(obj).GetResourceVersion()
	obj, err = r.store.Delete(ctx, key, r.newFunc(kind), precond, opts.storageOptions())
	return obj, apierrors.IsConflict(err), err
}

// BindPod sets spec.node_name of an unbound pod (compare-and-swap: a pod is
// bound at most once). Binding a pod again to the node it is bound to
// succeeds, so a scheduler may retry a bind whose answer it lost.
func (r *Registry) BindPod(ctx context.Context, req *capstanv1.BindPodRequest, opts WriteOptions) (*capstanv1.Pod, error) {
	kind := resource.MustLookup("Pod")
	if err := validation.Name(kind, resource.FieldName, req.GetName()); err != nil {
		return nil, err
	}
	if err := validation.Name(resource.MustLookup("Node"), "node_name", req.GetNodeName()); err != nil {
		return nil, err
	}
	if req.GetResourceVersion() < 0 {
		return nil, apierrors.Invalid(resource.FieldResourceVersion, "must not be negative")
	}
	obj, err := r.store.Update(ctx, kind.Key(req.GetNamespace(), req.GetName()), r.newFunc(kind),
		storage.Preconditions{UID: req.GetUid(), ResourceVersion: req.GetResourceVersion()},
		func(current resource.Object) (resource.Object, error) {
			pod := current.(*capstanv1.Pod)
			switch bound := pod.GetSpec().GetNodeName(); bound {
			case "":
			case req.GetNodeName():
				return pod, nil
			default:
				return nil, apierrors.PreconditionFailed("pod " + req.GetName() + " is already bound to node " + bound)
			}
			if pod.Spec == nil {
				pod.Spec = &capstanv1.PodSpec{}
			}
			pod.Spec.NodeName = req.GetNodeName()
			if pod.Status == nil {
				pod.Status = &capstanv1.PodStatus{Phase: "Pending"}
			}
			setCondition(&pod.Status.Conditions, &capstanv1.Condition{
				Type: "PodScheduled", Status: "True", Reason: "Scheduled",
				LastTransitionTime: timestamppb.New(r.opts.Now()),
			})
			return pod, nil
		}, opts.storageOptions())
	if err != nil {
		return nil, err
	}
	return obj.(*capstanv1.Pod), nil
}

// setCondition replaces the condition of the same type or appends it; the
// transition time is kept when the status does not change.
func setCondition(conds *[]*capstanv1.Condition, c *capstanv1.Condition) {
	for i, old := range *conds {
		if old.GetType() == c.GetType() {
			if old.GetStatus() == c.GetStatus() {
				c.LastTransitionTime = old.GetLastTransitionTime()
			}
			(*conds)[i] = c
			return
		}
	}
	*conds = append(*conds, c)
}

// specChanged reports whether anything but metadata and status differs.
func specChanged(a, b resource.Object) bool {
	ac, bc := proto.Clone(a), proto.Clone(b)
	for _, m := range []proto.Message{ac, bc} {
		clearField(m, "metadata")
		clearField(m, "status")
	}
	return !proto.Equal(ac, bc)
}

func clearField(m proto.Message, name protoreflect.Name) {
	r := m.ProtoReflect()
	if fd := r.Descriptor().Fields().ByName(name); fd != nil {
		r.Clear(fd)
	}
}

// copyField sets field name of dst to (a copy of) that of src.
func copyField(src, dst proto.Message, name protoreflect.Name) {
	sr, dr := src.ProtoReflect(), dst.ProtoReflect()
	fd := dr.Descriptor().Fields().ByName(name)
	if fd == nil {
		return
	}
	if !sr.Has(fd) {
		dr.Clear(fd)
		return
	}
	dr.Set(fd, protoreflect.ValueOfMessage(proto.Clone(sr.Get(fd).Message().Interface()).ProtoReflect()))
}
