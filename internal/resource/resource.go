// Package resource is the registry of Capstan's resource kinds: their names,
// scope, storage keys and generated message types, and the small set of
// operations every kind's object supports (its metadata).
//
// The API server, the storage layer, the clients and capctl all find a kind
// here, so adding a kind means adding one entry to the table below (and its
// proto). The registry is immutable after package initialisation and safe for
// concurrent use.
package resource

import (
	"fmt"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// Object is a stored Capstan object: a generated message with metadata.
type Object interface {
	proto.Message
	GetMetadata() *capstanv1.ObjectMeta
}

// KeyRoot is the etcd prefix under which every object is stored.
const KeyRoot = "/capstan/"

// DefaultNamespace is used when a namespaced request leaves namespace empty.
const DefaultNamespace = "default"

// AllNamespaces, as a List or Watch namespace, spans every namespace.
const AllNamespaces = "*"

// Kind describes one resource kind.
type Kind struct {
	// Name is the kind as it appears in manifests and owner references ("ReplicaSet").
	Name string
	// Plural is the method-name plural ("ReplicaSets", as in ListReplicaSets).
	Plural string
	// Resource is the lower-case plural used in storage keys and by capctl ("replicasets").
	Resource string
	// ShortNames are capctl abbreviations ("rs").
	ShortNames []string
	// Namespaced is false for cluster-scoped kinds (Node).
	Namespaced bool
	// HasStatus says the kind has a status that only Update<Kind>Status writes.
	HasStatus bool

	message protoreflect.MessageType
	service protoreflect.ServiceDescriptor
}

var kinds = []*Kind{
	newKind("Pod", "Pods", []string{"po"}, true, &capstanv1.Pod{}, capstanv1.File_capstan_v1_pod_proto, "PodService"),
	newKind("Node", "Nodes", []string{"no"}, false, &capstanv1.Node{}, capstanv1.File_capstan_v1_node_proto, "NodeService"),
	newKind("ReplicaSet", "ReplicaSets", []string{"rs"}, true, &capstanv1.ReplicaSet{}, capstanv1.File_capstan_v1_replica_set_proto, "ReplicaSetService"),
	newKind("Deployment", "Deployments", []string{"deploy"}, true, &capstanv1.Deployment{}, capstanv1.File_capstan_v1_deployment_proto, "DeploymentService"),
	newKind("Lease", "Leases", nil, true, &capstanv1.Lease{}, capstanv1.File_capstan_v1_lease_proto, "LeaseService"),
	newKind("Event", "Events", []string{"ev"}, true, &capstanv1.Event{}, capstanv1.File_capstan_v1_event_proto, "EventService"),
	newKind("ConfigMap", "ConfigMaps", []string{"cm"}, true, &capstanv1.ConfigMap{}, capstanv1.File_capstan_v1_config_map_proto, "ConfigMapService"),
}

func newKind(name, plural string, short []string, namespaced bool, msg Object, file protoreflect.FileDescriptor, service string) *Kind {
	svc := file.Services().ByName(protoreflect.Name(service))
	if svc == nil {
		panic(fmt.Sprintf("resource: %s has no service %s", file.Path(), service))
	}
	desc := msg.ProtoReflect().Descriptor()
	return &Kind{
		Name:       name,
		Plural:     plural,
		Resource:   strings.ToLower(plural),
		ShortNames: short,
		Namespaced: namespaced,
		HasStatus:  desc.Fields().ByName("status") != nil,
		message:    msg.ProtoReflect().Type(),
		service:    svc,
	}
}

// All returns every kind, in a stable order.
func All() []*Kind { return append([]*Kind(nil), kinds...) }

// Lookup finds a kind by name, plural, resource or short name, ignoring case
// ("pod", "Pods", "po").
func Lookup(name string) (*Kind, bool) {
	n := strings.ToLower(name)
	for _, k := range kinds {
		if n == strings.ToLower(k.Name) || n == k.Resource {
			return k, true
		}
		for _, s := range k.ShortNames {
			if n == s {
				return k, true
			}
		}
	}
	return nil, false
}

// MustLookup is Lookup for names known at compile time.
func MustLookup(name string) *Kind {
	k, ok := Lookup(name)
	if !ok {
		panic("resource: unknown kind " + name)
	}
	return k
}

// ForMessage returns the kind whose message type is that of msg.
func ForMessage(msg proto.Message) (*Kind, bool) {
	full := msg.ProtoReflect().Descriptor().FullName()
	for _, k := range kinds {
		if k.message.Descriptor().FullName() == full {
			return k, true
		}
	}
	return nil, false
}

// Names lists every kind's resource name, sorted (for help texts).
func Names() []string {
	var out []string
	for _, k := range kinds {
		out = append(out, k.Resource)
	}
	sort.Strings(out)
	return out
}

// New returns an empty object of this kind (with empty metadata).
func (k *Kind) New() Object {
	obj := k.message.New().Interface().(Object)
	Meta(obj)
	return obj
}

// Descriptor is the message descriptor of the kind.
func (k *Kind) Descriptor() protoreflect.MessageDescriptor { return k.message.Descriptor() }

// Service is the descriptor of <Kind>Service.
func (k *Kind) Service() protoreflect.ServiceDescriptor { return k.service }

// Namespace applies the scope rules: cluster-scoped kinds have none, and an
// empty namespace means DefaultNamespace.
func (k *Kind) Namespace(ns string) string {
	if !k.Namespaced {
		return ""
	}
	if ns == "" {
		return DefaultNamespace
	}
	return ns
}

// Key is the etcd key of one object: /capstan/<resource>/<namespace>/<name>,
// or /capstan/<resource>/<name> for cluster-scoped kinds.
func (k *Kind) Key(namespace, name string) string {
	if !k.Namespaced {
		return KeyRoot + k.Resource + "/" + name
	}
	return KeyRoot + k.Resource + "/" + k.Namespace(namespace) + "/" + name
}

// Prefix is the etcd prefix of every object of the kind in namespace
// (AllNamespaces, or any namespace of a cluster-scoped kind: every object).
func (k *Kind) Prefix(namespace string) string {
	if !k.Namespaced || namespace == AllNamespaces {
		return KeyRoot + k.Resource + "/"
	}
	return KeyRoot + k.Resource + "/" + k.Namespace(namespace) + "/"
}

// Meta returns obj's metadata, creating it if it is unset.
func Meta(obj Object) *capstanv1.ObjectMeta {
	if m := obj.GetMetadata(); m != nil {
		return m
	}
	r := obj.ProtoReflect()
	fd := r.Descriptor().Fields().ByName("metadata")
	return r.Mutable(fd).Message().Interface().(*capstanv1.ObjectMeta)
}

// Clone deep-copies an object. Objects from a cache must be cloned before
// they are changed.
func Clone[T Object](obj T) T { return proto.Clone(obj).(T) }
