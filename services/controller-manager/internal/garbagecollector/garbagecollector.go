// Package garbagecollector deletes objects whose controller is gone: a Pod
// whose ReplicaSet was deleted, a ReplicaSet whose Deployment was, and so
// on down the chain (Kubernetes' background cascading deletion).
//
// An object is garbage when its controller owner reference (the one with
// controller=true) names an owner that no longer exists: no object of that
// kind and name in the object's namespace, or one with another uid (the
// owner was deleted and re-created). An object that also has other owner
// references is kept while any of those owners exists. Objects without a
// controller reference are never touched. Deletion is background only:
// the owner is already gone when its dependents are collected, and
// block_owner_deletion is not enforced.
//
// The collector works for any kind. It watches dependents through the
// informers in Options.Dependents and keeps a map from owner uid to the
// dependents that name it, so that an owner's deletion (seen by an informer
// in Options.Owners) queues exactly its dependents. A cache that does not
// show an owner is never enough to delete: the collector re-reads the
// dependent and the owner from the API, and deletes with the dependent's
// uid and resource_version as preconditions, so that a dependent adopted or
// changed in the meantime is looked at again rather than deleted. Owners
// of a kind without an informer are read from the API whenever a
// dependent changes (or is resynced by its informer).
//
// Every write uses the context given to Run; a lease-gated caller passes its
// fenced context, so a deposed leader deletes nothing.
//
// # Concurrency
//
// The collector is a reconcile.Loop: its workers process different objects
// in parallel, and the queue never gives one object to two workers at once.
// Informer handlers update the owner map under a mutex and queue keys. A
// Controller runs once.
package garbagecollector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/reconcile"
	"github.com/capstan-dev/capstan/internal/resource"
)

// Options are what New needs besides the client.
type Options struct {
	// Owners are informers of kinds that own objects (ReplicaSet,
	// Deployment): an owner's deletion queues its dependents at once, and a
	// cached owner needs no API read. At most one per kind.
	Owners []*informer.Informer
	// Dependents are informers of the kinds whose objects may have a
	// controller owner (Pod, ReplicaSet). At least one; at most one per
	// kind. An informer may be in both lists.
	Dependents []*informer.Informer
	// Loop: workers, logger, metrics and the clock of back-off.
	Loop reconcile.Options
}

// Controller is the garbage collector. See the package doc.
type Controller struct {
	client     *client.Client
	owners     map[string]*informer.Informer // by kind name
	dependents map[string]*informer.Informer // by kind name
	log        *slog.Logger
	loop       *reconcile.Loop // keys are itemKeys

	// mu guards the owner map: owner uid → keys of the dependents whose
	// controller reference names it, and the reverse.
	mu         sync.Mutex
	byOwner    map[string]map[string]bool
	ownerOfKey map[string]string
}

// New returns a garbage collector deleting through c.
func New(c *client.Client, opts Options) (*Controller, error) {
	if c == nil {
		return nil, errors.New("garbagecollector: client is nil")
	}
	if len(opts.Dependents) == 0 {
		return nil, errors.New("garbagecollector: Options.Dependents is empty: there is nothing to collect")
	}
	owners, err := byKind("Owners", opts.Owners)
	if err != nil {
		return nil, err
	}
	dependents, err := byKind("Dependents", opts.Dependents)
	if err != nil {
		return nil, err
	}
	opts.Loop = opts.Loop.Complete()
	opts.Loop.Logger = opts.Loop.Logger.With("controller", loopName)
	ctrl := &Controller{
		client:     c,
		owners:     owners,
		dependents: dependents,
		log:        opts.Loop.Logger,
		byOwner:    make(map[string]map[string]bool),
		ownerOfKey: make(map[string]string),
	}
	// Every informer, once, whether it owns or depends or both.
	all := slices.Clone(opts.Dependents)
	for _, inf := range opts.Owners {
		if !slices.Contains(all, inf) {
			all = append(all, inf)
		}
	}
	loop, err := reconcile.New(reconcile.Config{Name: loopName, Sync: ctrl.collect, WaitFor: all, Options: opts.Loop})
	if err != nil {
		return nil, err
	}
	ctrl.loop = loop
	ctrl.addHandlers()
	return ctrl, nil
}

// loopName names the collector in logs and metrics.
const loopName = "garbagecollector"

func byKind(field string, infs []*informer.Informer) (map[string]*informer.Informer, error) {
	out := make(map[string]*informer.Informer, len(infs))
	for i, inf := range infs {
		if inf == nil {
			return nil, fmt.Errorf("garbagecollector: Options.%s[%d] is nil", field, i)
		}
		name := inf.Kind().Name
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("garbagecollector: Options.%s has two informers of kind %s", field, name)
		}
		out[name] = inf
	}
	return out, nil
}

// Run waits for the informers to sync, then collects garbage until ctx
// ends (or a delete finds the lease lost). Every write uses ctx. It returns
// nil once the workers have stopped; an error only for a second Run.
func (c *Controller) Run(ctx context.Context) error { return c.loop.Run(ctx) }

// An item is "<kind>/<informer key>", e.g. "Pod/default/web-x7k2p".
func itemKey(kind *resource.Kind, obj resource.Object) string {
	return kind.Name + "/" + informer.Key(obj)
}

func splitItem(item string) (kind, key string) {
	kind, key, _ = strings.Cut(item, "/")
	return kind, key
}

// controllerRef returns the owner reference marked controller, or nil.
func controllerRef(obj resource.Object) *capstanv1.OwnerReference {
	for _, ref := range obj.GetMetadata().GetOwnerReferences() {
		if ref.GetController() {
			return ref
		}
	}
	return nil
}

// --- informer handlers ---

func (c *Controller) addHandlers() {
	for _, inf := range c.dependents {
		kind := inf.Kind()
		inf.AddEventHandler(informer.Handler{
			OnAdd:    func(obj resource.Object) { c.dependentChanged(kind, nil, obj) },
			OnUpdate: func(old, obj resource.Object) { c.dependentChanged(kind, old, obj) },
			OnDelete: func(obj resource.Object) { c.dependentDeleted(kind, obj) },
		})
	}
	for _, inf := range c.owners {
		inf.AddEventHandler(informer.Handler{
			OnUpdate: func(old, obj resource.Object) {
				if old.GetMetadata().GetUid() != obj.GetMetadata().GetUid() {
					c.ownerDeleted(old) // deleted and re-created between two lists
				}
			},
			OnDelete: c.ownerDeleted,
		})
	}
}

// dependentChanged records obj's controller owner and queues obj if the
// cache does not show that owner.
func (c *Controller) dependentChanged(kind *resource.Kind, old, obj resource.Object) {
	item := itemKey(kind, obj)
	ref := controllerRef(obj)
	c.mu.Lock()
	if prev, ok := c.ownerOfKey[item]; ok {
		c.unlinkLocked(item, prev)
	}
	if ref != nil {
		c.ownerOfKey[item] = ref.GetUid()
		if c.byOwner[ref.GetUid()] == nil {
			c.byOwner[ref.GetUid()] = make(map[string]bool)
		}
		c.byOwner[ref.GetUid()][item] = true
	}
	c.mu.Unlock()
	if ref != nil && !c.ownerCached(obj.GetMetadata().GetNamespace(), ref) {
		c.loop.Add(item)
	}
}

func (c *Controller) dependentDeleted(kind *resource.Kind, obj resource.Object) {
	item := itemKey(kind, obj)
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.ownerOfKey[item]; ok {
		c.unlinkLocked(item, prev)
	}
}

func (c *Controller) unlinkLocked(item, ownerUID string) {
	delete(c.ownerOfKey, item)
	if deps := c.byOwner[ownerUID]; deps != nil {
		delete(deps, item)
		if len(deps) == 0 {
			delete(c.byOwner, ownerUID)
		}
	}
}

// ownerDeleted queues every dependent that names owner as its controller.
func (c *Controller) ownerDeleted(owner resource.Object) {
	c.mu.Lock()
	var items []string
	for item := range c.byOwner[owner.GetMetadata().GetUid()] {
		items = append(items, item)
	}
	c.mu.Unlock()
	for _, item := range items {
		c.loop.Add(item)
	}
}

// ownerCached reports whether an owner informer holds the owner ref names,
// with its uid.
func (c *Controller) ownerCached(namespace string, ref *capstanv1.OwnerReference) bool {
	inf, ok := c.owners[ref.GetKind()]
	if !ok {
		return false
	}
	owner, ok := inf.Get(namespace, ref.GetName())
	return ok && owner.GetMetadata().GetUid() == ref.GetUid()
}

// --- collection ---

// collect deletes the object item names if its controller owner is gone.
func (c *Controller) collect(ctx context.Context, item string) error {
	kindName, key := splitItem(item)
	inf, ok := c.dependents[kindName]
	if !ok {
		return nil
	}
	cached, ok := inf.GetByKey(key)
	if !ok {
		return nil // gone already
	}
	ref := controllerRef(cached)
	namespace := cached.GetMetadata().GetNamespace()
	if ref == nil || c.ownerCached(namespace, ref) {
		return nil
	}

	// The cache says the owner is gone; the API decides. Read the object
	// itself first: it may have been adopted or released since.
	kind := inf.Kind()
	current, err := c.client.Get(ctx, kind, namespace, cached.GetMetadata().GetName())
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("garbagecollector: read %s: %w", item, err)
	}
	meta := current.GetMetadata()
	ref = controllerRef(current)
	if ref == nil {
		return nil
	}
	exists, err := c.ownerExists(ctx, namespace, ref)
	if err != nil || exists {
		return err
	}
	for _, other := range meta.GetOwnerReferences() {
		if other.GetController() {
			continue
		}
		exists, err := c.ownerExists(ctx, namespace, other)
		if err != nil {
			return err
		}
		if exists {
			c.log.Debug("controller owner is gone, but another owner exists: keeping", "object", item,
				"owner-kind", other.GetKind(), "owner-name", other.GetName())
			return nil
		}
	}

	return c.deleteGarbage(ctx, kind, item, current, ref)
}

// deleteGarbage deletes obj, judged garbage as read from the API (its
// controller owner ref gone), at that uid and resource_version: one adopted
// or changed since (or a new object of the same name) is ABORTED, and the
// retry reads and judges it again, and a late or repeated delete never
// takes a newer object with it.
func (c *Controller) deleteGarbage(ctx context.Context, kind *resource.Kind, item string, obj resource.Object, ref *capstanv1.OwnerReference) error {
	meta := obj.GetMetadata()
	_, err := c.client.Delete(ctx, kind, meta.GetNamespace(), meta.GetName(),
		&capstanv1.Preconditions{Uid: meta.GetUid(), ResourceVersion: meta.GetResourceVersion()})
	switch {
	case err == nil:
		c.log.Info("deleted an object whose controller is gone", "object", item, "uid", meta.GetUid(),
			"owner-kind", ref.GetKind(), "owner-name", ref.GetName(), "owner-uid", ref.GetUid())
		return nil
	case apierrors.IsNotFound(err):
		return nil
	default:
		// A conflict: it changed since it was read; look at it again.
		return fmt.Errorf("garbagecollector: delete %s at version %d: %w", item, meta.GetResourceVersion(), err)
	}
}

// ownerExists reads the owner ref names from the API. An owner of a kind
// this program does not know is taken to exist: what cannot be checked is
// not deleted.
func (c *Controller) ownerExists(ctx context.Context, namespace string, ref *capstanv1.OwnerReference) (bool, error) {
	kind, ok := resource.Lookup(ref.GetKind())
	if !ok {
		c.log.Warn("owner reference of an unknown kind: not collecting", "owner-kind", ref.GetKind(), "owner-name", ref.GetName())
		return true, nil
	}
	owner, err := c.client.Get(ctx, kind, namespace, ref.GetName())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("garbagecollector: read owner %s %s: %w", ref.GetKind(), ref.GetName(), err)
	}
	return owner.GetMetadata().GetUid() == ref.GetUid(), nil
}
