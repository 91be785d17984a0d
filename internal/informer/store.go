package informer

import (
	"strings"

	"github.com/capstan-dev/capstan/internal/resource"
)

// IndexFunc returns the index values of an object (none, one or several).
// It must be a pure function of the object.
type IndexFunc func(obj resource.Object) []string

// NamespaceIndex is the index every informer of a namespaced kind has: the
// object's namespace.
const NamespaceIndex = "namespace"

// Key is the cache key of obj: "namespace/name", or "name" for an object of
// a cluster-scoped kind (whose namespace is empty).
func Key(obj resource.Object) string {
	m := obj.GetMetadata()
	return key(m.GetNamespace(), m.GetName())
}

func key(namespace, name string) string {
	if namespace == "" {
		return name
	}
	return namespace + "/" + name
}

// SplitKey is the inverse of Key.
func SplitKey(k string) (namespace, name string) {
	if i := strings.IndexByte(k, '/'); i >= 0 {
		return k[:i], k[i+1:]
	}
	return "", k
}

// store is the informer's cache: objects by key, with indices. It is not
// safe for concurrent use by itself; the Informer guards it with its lock.
type store struct {
	items    map[string]resource.Object
	indexers map[string]IndexFunc
	// indices[index][value] is the set of keys of objects with that value.
	indices map[string]map[string]map[string]struct{}
}

func newStore() *store {
	return &store{
		items:    map[string]resource.Object{},
		indexers: map[string]IndexFunc{},
		indices:  map[string]map[string]map[string]struct{}{},
	}
}

func (s *store) addIndexer(name string, fn IndexFunc) {
	s.indexers[name] = fn
	s.indices[name] = map[string]map[string]struct{}{}
}

// put stores obj under k and returns the object it replaced, if any.
func (s *store) put(k string, obj resource.Object) (old resource.Object, existed bool) {
	old, existed = s.items[k]
	if existed {
		s.unindex(k, old)
	}
	s.items[k] = obj
	s.index(k, obj)
	return old, existed
}

// remove drops k and returns the object it held, if any.
func (s *store) remove(k string) (old resource.Object, existed bool) {
	old, existed = s.items[k]
	if existed {
		s.unindex(k, old)
		delete(s.items, k)
	}
	return old, existed
}

func (s *store) index(k string, obj resource.Object) {
	for name, fn := range s.indexers {
		idx := s.indices[name]
		for _, v := range fn(obj) {
			set := idx[v]
			if set == nil {
				set = map[string]struct{}{}
				idx[v] = set
			}
			set[k] = struct{}{}
		}
	}
}

func (s *store) unindex(k string, obj resource.Object) {
	for name, fn := range s.indexers {
		idx := s.indices[name]
		for _, v := range fn(obj) {
			if set := idx[v]; set != nil {
				delete(set, k)
				if len(set) == 0 {
					delete(idx, v)
				}
			}
		}
	}
}

func (s *store) byIndex(name, value string) ([]resource.Object, bool) {
	idx, ok := s.indices[name]
	if !ok {
		return nil, false
	}
	set := idx[value]
	out := make([]resource.Object, 0, len(set))
	for k := range set {
		out = append(out, s.items[k])
	}
	return out, true
}
