// Package selector turns the label and field selectors of List and Watch
// requests, and the LabelSelector of ReplicaSets and Deployments, into things
// that match objects: labels.Selector values and storage.Predicate functions.
//
// Label selectors use the Kubernetes syntax of k8s.io/apimachinery/pkg/labels
// ("app=web,tier!=db", "env in (prod,staging)", "release", "!canary").
// Field selectors use the syntax of k8s.io/apimachinery/pkg/fields (=, == and
// != terms joined by commas, all of which must hold) over the dotted path of a
// singular scalar field of the kind's message ("spec.node_name=n1",
// "status.phase!=Running"); each path segment may be the proto field name or
// its JSON name ("spec.nodeName").
//
// Parsing is done once per request; the selectors and predicates returned are
// immutable and safe for concurrent use.
package selector

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/storage"
)

// Labels parses a label selector. The empty string selects everything.
// Besides =, ==, !=, in, notin, "key" (exists) and "!key" (does not exist) the
// parser also accepts the numeric comparisons "key>1" and "key<1", as
// Kubernetes does. A syntax error, or a key or value that is not a valid
// label, is INVALID_ARGUMENT on the field label_selector.
func Labels(s string) (labels.Selector, error) {
	sel, err := labels.Parse(s)
	if err != nil {
		return nil, apierrors.Invalid(resource.FieldLabelSelector, err.Error())
	}
	return sel, nil
}

// Fields parses a field selector for objects of kind. The empty string
// selects everything (the predicate returned is never nil). A syntax error,
// or a path that does not name a singular string, bool, integer or enum
// field of the kind, is INVALID_ARGUMENT on the field field_selector.
//
// Values compare as strings: integers in decimal, bools as "true"/"false",
// enums by value name. A field under an unset message reads as its zero
// value, so "spec.node_name=" selects pods without a spec too. Given an
// object of another kind, a predicate with terms selects nothing.
func Fields(kind *resource.Kind, s string) (storage.Predicate, error) {
	terms, err := parseFieldTerms(kind, s)
	if err != nil {
		return nil, err
	}
	return terms.predicate(kind.Descriptor().FullName()), nil
}

// Predicate combines a label and a field selector for objects of kind: an
// object is selected if both select it. It returns nil (storage's "select
// everything") when both selectors are empty. Errors are those of Labels and
// Fields.
func Predicate(kind *resource.Kind, labelSelector, fieldSelector string) (storage.Predicate, error) {
	labelSel, err := Labels(labelSelector)
	if err != nil {
		return nil, err
	}
	terms, err := parseFieldTerms(kind, fieldSelector)
	if err != nil {
		return nil, err
	}
	if labelSel.Empty() && len(terms) == 0 {
		return nil, nil
	}
	fieldsMatch := terms.predicate(kind.Descriptor().FullName())
	return func(obj storage.Object) bool {
		return labelSel.Matches(labels.Set(obj.GetMetadata().GetLabels())) && fieldsMatch(obj)
	}, nil
}

// FromLabelSelector converts the LabelSelector of a ReplicaSet or Deployment
// into a labels.Selector, with the semantics of Kubernetes'
// metav1.LabelSelectorAsSelector:
//
//   - a nil selector selects nothing;
//   - a selector with neither match_labels nor match_expressions selects
//     everything;
//   - otherwise every match_labels entry and every expression must hold.
//     Operators are "In", "NotIn" (both need at least one value), "Exists"
//     and "DoesNotExist" (both take no values).
//
// The error (a plain error, not a status: callers know which field held the
// selector) names the part that is wrong, such as
// `match_expressions[1].operator: "Has" is not a valid label selector operator`.
func FromLabelSelector(sel *capstanv1.LabelSelector) (labels.Selector, error) {
	if sel == nil {
		return labels.Nothing(), nil
	}
	if len(sel.GetMatchLabels())+len(sel.GetMatchExpressions()) == 0 {
		return labels.Everything(), nil
	}
	requirements := make([]labels.Requirement, 0, len(sel.GetMatchLabels())+len(sel.GetMatchExpressions()))
	// Sorted so that, of several bad entries, the same one is always reported.
	for _, key := range slices.Sorted(maps.Keys(sel.GetMatchLabels())) {
		r, err := labels.NewRequirement(key, selection.Equals, []string{sel.GetMatchLabels()[key]})
		if err != nil {
			return nil, fmt.Errorf("match_labels[%s]: %w", key, err)
		}
		requirements = append(requirements, *r)
	}
	for i, expr := range sel.GetMatchExpressions() {
		op, ok := labelSelectorOperators[expr.GetOperator()]
		if !ok {
			return nil, fmt.Errorf("match_expressions[%d].operator: %q is not a valid label selector operator (In, NotIn, Exists or DoesNotExist)", i, expr.GetOperator())
		}
		r, err := labels.NewRequirement(expr.GetKey(), op, slices.Clone(expr.GetValues()))
		if err != nil {
			return nil, fmt.Errorf("match_expressions[%d]: %w", i, err)
		}
		requirements = append(requirements, *r)
	}
	return labels.NewSelector().Add(requirements...), nil
}

// labelSelectorOperators maps the operators of LabelSelectorRequirement to
// those of the labels package.
var labelSelectorOperators = map[string]selection.Operator{
	"In":           selection.In,
	"NotIn":        selection.NotIn,
	"Exists":       selection.Exists,
	"DoesNotExist": selection.DoesNotExist,
}

// fieldTerm is one term of a field selector, resolved against a message.
type fieldTerm struct {
	// path leads from the object's message to the selected scalar field.
	path   []protoreflect.FieldDescriptor
	equals bool
	value  string
}

type fieldTerms []fieldTerm

func parseFieldTerms(kind *resource.Kind, s string) (fieldTerms, error) {
	sel, err := fields.ParseSelector(s)
	if err != nil {
		return nil, apierrors.Invalid(resource.FieldFieldSelector, err.Error())
	}
	var terms fieldTerms
	for _, req := range sel.Requirements() {
		path, err := resolveFieldPath(kind, req.Field)
		if err != nil {
			return nil, apierrors.Invalid(resource.FieldFieldSelector, err.Error())
		}
		term := fieldTerm{path: path, value: req.Value}
		switch req.Operator {
		case selection.Equals, selection.DoubleEquals:
			term.equals = true
		case selection.NotEquals:
			term.equals = false
		default:
			// fields.ParseSelector produces no other operator today.
			return nil, apierrors.Invalid(resource.FieldFieldSelector, fmt.Sprintf("operator %q is not supported in field selectors", req.Operator))
		}
		terms = append(terms, term)
	}
	return terms, nil
}

// predicate matches objects whose message is messageName and which satisfy
// every term.
func (terms fieldTerms) predicate(messageName protoreflect.FullName) storage.Predicate {
	return func(obj storage.Object) bool {
		if len(terms) == 0 {
			return true
		}
		m := obj.ProtoReflect()
		// The field descriptors belong to messageName; reading another
		// message with them would panic.
		if m.Descriptor().FullName() != messageName {
			return false
		}
		for _, t := range terms {
			if (fieldValue(m, t.path) == t.value) != t.equals {
				return false
			}
		}
		return true
	}
}

// resolveFieldPath finds the fields a dotted path names in the message of
// kind. Each segment may be a proto name or a JSON name; every segment but
// the last must be a singular message, the last a singular scalar that has a
// string form (string, bool, integer, enum). The error is the description
// for an INVALID_ARGUMENT.
func resolveFieldPath(kind *resource.Kind, path string) ([]protoreflect.FieldDescriptor, error) {
	const selectable = "only singular string, bool, integer and enum fields can be selected"
	segments := strings.Split(path, ".")
	out := make([]protoreflect.FieldDescriptor, 0, len(segments))
	msg := kind.Descriptor()
	for i, seg := range segments {
		if msg == nil {
			// The previous segment was a scalar: nothing to descend into.
			return nil, fmt.Errorf("unknown field %q for kind %s", path, kind.Name)
		}
		fd := msg.Fields().ByName(protoreflect.Name(seg))
		if fd == nil {
			fd = msg.Fields().ByJSONName(seg)
		}
		if fd == nil {
			return nil, fmt.Errorf("unknown field %q for kind %s", path, kind.Name)
		}
		prefix := strings.Join(segments[:i+1], ".")
		switch {
		case fd.IsMap():
			return nil, fmt.Errorf("field %q of kind %s is a map: %s", prefix, kind.Name, selectable)
		case fd.IsList():
			return nil, fmt.Errorf("field %q of kind %s is a list: %s", prefix, kind.Name, selectable)
		}
		out = append(out, fd)
		switch {
		case fd.Message() != nil:
			if i == len(segments)-1 {
				return nil, fmt.Errorf("field %q of kind %s is a message: %s", path, kind.Name, selectable)
			}
			msg = fd.Message()
		case !selectableKind(fd.Kind()):
			return nil, fmt.Errorf("field %q of kind %s is a %s: %s", path, kind.Name, fd.Kind(), selectable)
		default:
			msg = nil
		}
	}
	return out, nil
}

func selectableKind(k protoreflect.Kind) bool {
	switch k {
	case protoreflect.StringKind, protoreflect.BoolKind, protoreflect.EnumKind,
		protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind,
		protoreflect.Uint32Kind, protoreflect.Fixed32Kind,
		protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return true
	}
	return false
}

// fieldValue reads the scalar at the end of path as a string. Get on an
// unset message field returns an empty read-only message, so fields under
// it read as their zero values.
func fieldValue(m protoreflect.Message, path []protoreflect.FieldDescriptor) string {
	for _, fd := range path[:len(path)-1] {
		m = m.Get(fd).Message()
	}
	fd := path[len(path)-1]
	v := m.Get(fd)
	switch fd.Kind() {
	case protoreflect.StringKind:
		return v.String()
	case protoreflect.BoolKind:
		return strconv.FormatBool(v.Bool())
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name())
		}
		return strconv.FormatInt(int64(v.Enum()), 10)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return strconv.FormatUint(v.Uint(), 10)
	default:
		return strconv.FormatInt(v.Int(), 10)
	}
}
