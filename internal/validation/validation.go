// Package validation checks the objects and the name and namespace fields
// that clients send to the API server, before anything reaches storage.
//
// Object validates an object of any kind on create and update (spec,
// metadata and, for Nodes, the status the agent reports); Name and Namespace
// validate the request fields that address an object. Each returns nil or
// the first problem found, as an INVALID_ARGUMENT status (apierrors.Invalid)
// naming the offending field by its full path from the request, such as
// "pod.spec.containers[0].command" or "replica_set.metadata.labels[app]".
// Fields are checked in the order of the proto, so the first problem is
// always the same one.
//
// The formats (DNS-1123 names, label keys and values, quantities) are those of
// Kubernetes, checked with k8s.io/apimachinery so that their messages explain
// the rule. The package holds no state; every function is safe for
// concurrent use.
package validation

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	k8svalidation "k8s.io/apimachinery/pkg/util/validation"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
)

// Object validates obj, an object of kind, on create or update. root is the
// name of the request field that holds it ("pod", "replica_set") and prefixes
// every field path in the error; it may be empty. kind may be nil, in which
// case it is found from obj's type.
//
// A missing object is INVALID_ARGUMENT on root. An object whose type is not
// kind's, or a kind without rules here, is INTERNAL: a bug in the caller or a
// kind added to the registry without validation.
func Object(kind *resource.Kind, obj resource.Object, root string) error {
	p := fieldPath(root)
	if obj == nil || !obj.ProtoReflect().IsValid() {
		return required(p)
	}
	objKind, ok := resource.ForMessage(obj)
	if !ok {
		return apierrors.Internal("validation: %T is not a registered kind", obj)
	}
	if kind == nil {
		kind = objKind
	}
	if kind != objKind {
		return apierrors.Internal("validation: a %s was given where a %s is expected", objKind.Name, kind.Name)
	}
	if err := validateObjectMeta(kind, obj.GetMetadata(), p.child("metadata")); err != nil {
		return err
	}
	switch o := obj.(type) {
	case *capstanv1.Pod:
		return validatePodSpec(o.GetSpec(), p.child("spec"))
	case *capstanv1.ReplicaSet:
		return validateReplicaSetSpec(o.GetSpec(), p.child("spec"))
	case *capstanv1.Deployment:
		return validateDeploymentSpec(o.GetSpec(), p.child("spec"))
	case *capstanv1.Node:
		return validateNode(o, p)
	case *capstanv1.Lease:
		return validateLeaseSpec(o.GetSpec(), p.child("spec"))
	case *capstanv1.Event:
		return validateEvent(o, p)
	case *capstanv1.ConfigMap:
		return validateConfigMap(o, p)
	default:
		return apierrors.Internal("validation: kind %s (%T) has no validation rules", kind.Name, obj)
	}
}

// Name validates a request field that names an object of kind (such as
// GetPodRequest.name): required, a DNS-1123 subdomain of at most 253
// characters. field is the error's field path.
func Name(kind *resource.Kind, field, name string) error {
	return validateName(kind, fieldPath(field), name)
}

// Namespace validates a request field that names a namespace (such as
// GetPodRequest.namespace). Empty is valid: the server uses
// resource.DefaultNamespace. resource.AllNamespaces ("*") is not valid here;
// List and Watch, which accept it, must handle it before calling Namespace.
// Anything else must be a DNS-1123 label. field is the error's field path.
func Namespace(field, ns string) error {
	p := fieldPath(field)
	switch ns {
	case "":
		return nil
	case resource.AllNamespaces:
		return invalid(p, "%q (every namespace) is allowed only in List and Watch requests", ns)
	}
	return checkFormat(p, "namespace", ns, k8svalidation.IsDNS1123Label(ns))
}

// fieldPath is the path of a field from the request, as it appears in
// errors: dotted proto field names, [i] for list elements, [key] for map
// entries.
type fieldPath string

func (p fieldPath) child(name string) fieldPath {
	if p == "" {
		return fieldPath(name)
	}
	return p + "." + fieldPath(name)
}

func (p fieldPath) index(i int) fieldPath { return p + "[" + fieldPath(strconv.Itoa(i)) + "]" }

func (p fieldPath) key(k string) fieldPath { return p + "[" + fieldPath(k) + "]" }

func invalid(p fieldPath, format string, args ...any) error {
	return apierrors.Invalid(string(p), fmt.Sprintf(format, args...))
}

func required(p fieldPath) error { return apierrors.Invalid(string(p), "required") }

func nonNegative[T int32 | int64](p fieldPath, v T) error {
	if v < 0 {
		return invalid(p, "must be non-negative, not %d", v)
	}
	return nil
}

// checkFormat turns the messages of a k8s.io/apimachinery format check into
// an error; what says which part of the field the value is ("name", "key").
func checkFormat(p fieldPath, what, value string, msgs []string) error {
	if len(msgs) == 0 {
		return nil
	}
	return invalid(p, "invalid %s %s: %s", what, quote(value), strings.Join(msgs, "; "))
}

// quote shortens long values so that an error stays readable.
func quote(s string) string {
	const max = 64
	if len(s) <= max {
		return strconv.Quote(s)
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(s[:max]), len(s))
}

// sortedKeys makes map checks deterministic: of several bad entries the
// same one is reported every time.
func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }

// oneOf reports whether v is one of the allowed values, and lists them for
// an error message.
func oneOf(v string, allowed ...string) (bool, string) {
	quoted := make([]string, len(allowed))
	for i, a := range allowed {
		quoted[i] = strconv.Quote(a)
	}
	return slices.Contains(allowed, v), strings.Join(quoted, ", ")
}

// checkEnum validates a string field with a fixed set of values.
func checkEnum(p fieldPath, v string, allowed ...string) error {
	if ok, list := oneOf(v, allowed...); !ok {
		return invalid(p, "unsupported value %s: must be one of %s", quote(v), list)
	}
	return nil
}
