package informer

import (
	"fmt"

	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
)

// Typed is an Informer whose lister and handlers speak the kind's Go type
// (T is for example *capstanv1.Pod). The untyped methods stay reachable
// through the embedded Informer.
type Typed[T resource.Object] struct {
	*Informer
}

// TypedHandler is a Handler on T. Nil functions are skipped.
type TypedHandler[T resource.Object] struct {
	OnAdd    func(obj T)
	OnUpdate func(old, new T)
	OnDelete func(obj T)
}

// NewTyped returns an informer for the kind of T.
func NewTyped[T resource.Object](c *client.Client, opts Options) (*Typed[T], error) {
	var zero T
	kind, ok := resource.ForMessage(zero)
	if !ok {
		return nil, fmt.Errorf("informer: %T is not a Capstan resource kind", zero)
	}
	inf, err := New(c, kind, opts)
	if err != nil {
		return nil, err
	}
	return &Typed[T]{Informer: inf}, nil
}

// Get returns the cached object namespace/name. Shared: clone before
// changing it.
func (t *Typed[T]) Get(namespace, name string) (T, bool) {
	obj, ok := t.Informer.Get(namespace, name)
	if !ok {
		var zero T
		return zero, false
	}
	return obj.(T), true
}

// List returns every cached object. Shared: clone one before changing it.
func (t *Typed[T]) List() []T { return typed[T](t.Informer.List()) }

// ByIndex returns the cached objects whose index name has value. Shared:
// clone one before changing it.
func (t *Typed[T]) ByIndex(name, value string) []T { return typed[T](t.Informer.ByIndex(name, value)) }

// AddIndexer adds an index on T; only before Run.
func (t *Typed[T]) AddIndexer(name string, fn func(obj T) []string) error {
	return t.Informer.AddIndexer(name, func(obj resource.Object) []string { return fn(obj.(T)) })
}

// AddEventHandler registers h; see Informer.AddEventHandler.
func (t *Typed[T]) AddEventHandler(h TypedHandler[T]) {
	var untyped Handler
	if h.OnAdd != nil {
		untyped.OnAdd = func(obj resource.Object) { h.OnAdd(obj.(T)) }
	}
	if h.OnUpdate != nil {
		untyped.OnUpdate = func(old, new resource.Object) { h.OnUpdate(old.(T), new.(T)) }
	}
	if h.OnDelete != nil {
		untyped.OnDelete = func(obj resource.Object) { h.OnDelete(obj.(T)) }
	}
	t.Informer.AddEventHandler(untyped)
}

func typed[T resource.Object](objs []resource.Object) []T {
	out := make([]T, len(objs))
	for i, obj := range objs {
		out[i] = obj.(T)
	}
	return out
}
