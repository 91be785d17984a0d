package resource

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// Verb is one of the standard methods every <Kind>Service has. The method
// name is the verb and the kind ("GetPod", "ListPods", "UpdatePodStatus"),
// its request and response messages are <Method>Request / <Method>Response
// (buf STANDARD lint keeps the protos to this convention and the package test
// checks every kind against it), so servers and clients can handle every kind
// with one piece of code.
type Verb string

// The standard verbs.
const (
	Create       Verb = "Create"
	Get          Verb = "Get"
	List         Verb = "List"
	Update       Verb = "Update"
	UpdateStatus Verb = "UpdateStatus"
	Delete       Verb = "Delete"
	Watch        Verb = "Watch"
)

// Verbs lists the standard verbs.
var Verbs = []Verb{Create, Get, List, Update, UpdateStatus, Delete, Watch}

// Field names of the standard request and response messages.
const (
	FieldNamespace       = "namespace"
	FieldName            = "name"
	FieldLabelSelector   = "label_selector"
	FieldFieldSelector   = "field_selector"
	FieldPageSize        = "page_size"
	FieldPageToken       = "page_token"
	FieldNextPageToken   = "next_page_token"
	FieldResourceVersion = "resource_version"
	FieldPreconditions   = "preconditions"
	FieldType            = "type"
)

// MethodName is the RPC name of verb for this kind ("ListPods").
func (k *Kind) MethodName(v Verb) string {
	switch v {
	case List, Watch:
		return string(v) + k.Plural
	case UpdateStatus:
		return "Update" + k.Name + "Status"
	default:
		return string(v) + k.Name
	}
}

// Method returns the descriptor of verb's RPC, or nil if the kind has none
// (UpdateStatus of a kind without status).
func (k *Kind) Method(v Verb) protoreflect.MethodDescriptor {
	return k.service.Methods().ByName(protoreflect.Name(k.MethodName(v)))
}

// FullMethod is the gRPC method path of verb ("/capstan.v1.PodService/GetPod").
func (k *Kind) FullMethod(v Verb) string {
	return fmt.Sprintf("/%s/%s", k.service.FullName(), k.MethodName(v))
}

// VerbOf returns the standard verb a method of this kind's service is, if it
// is one (BindPod, say, is not).
func (k *Kind) VerbOf(method protoreflect.Name) (Verb, bool) {
	for _, v := range Verbs {
		if k.MethodName(v) == string(method) {
			return v, true
		}
	}
	return "", false
}

// ObjectField is the field of msg (a request or response of this kind's
// service) that holds the kind's object, or its list; nil if there is none.
func (k *Kind) ObjectField(msg protoreflect.MessageDescriptor) protoreflect.FieldDescriptor {
	fields := msg.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Message() != nil && fd.Message().FullName() == k.Descriptor().FullName() {
			return fd
		}
	}
	return nil
}

// NewMessage returns a new message of the generated type for md.
func NewMessage(md protoreflect.MessageDescriptor) (proto.Message, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName())
	if err != nil {
		return nil, fmt.Errorf("resource: no Go type for %s: %w", md.FullName(), err)
	}
	return mt.New().Interface(), nil
}

// SetField sets the scalar field name of msg if msg has it (a request of a
// cluster-scoped kind has no namespace, for example). It reports whether the
// field exists.
func SetField(msg proto.Message, name string, value protoreflect.Value) bool {
	r := msg.ProtoReflect()
	fd := r.Descriptor().Fields().ByName(protoreflect.Name(name))
	if fd == nil {
		return false
	}
	r.Set(fd, value)
	return true
}

// FieldValue reads field name of msg; the zero Value if msg has no such field.
func FieldValue(msg proto.Message, name string) protoreflect.Value {
	r := msg.ProtoReflect()
	fd := r.Descriptor().Fields().ByName(protoreflect.Name(name))
	if fd == nil {
		return protoreflect.Value{}
	}
	return r.Get(fd)
}

// StringField reads the string field name of msg, or "".
func StringField(msg proto.Message, name string) string {
	v := FieldValue(msg, name)
	if !v.IsValid() {
		return ""
	}
	return v.String()
}

// IntField reads the integer field name of msg, or 0 if msg has no such field.
func IntField(msg proto.Message, name string) int64 {
	v := FieldValue(msg, name)
	if !v.IsValid() {
		return 0
	}
	return v.Int()
}
