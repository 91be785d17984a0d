package client

import (
	"maps"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/capstan-dev/capstan/internal/resource"
)

// The comparisons below decide whether a stored object is the result of a
// write whose answer was lost (see the package doc). Fields the caller left
// empty are not compared, because the server may have filled in defaults;
// every field the caller set must be stored as sent.

const (
	fieldMetadata = "metadata"
	fieldStatus   = "status"
)

// createApplied: the stored object has the labels, spec and data that a
// Create sent.
func createApplied(sent, stored resource.Object) bool {
	return maps.Equal(sent.GetMetadata().GetLabels(), stored.GetMetadata().GetLabels()) &&
		contentCovered(sent, stored)
}

// updateApplied: the stored object has the metadata a client may write and
// the spec and data that an Update sent.
func updateApplied(sent, stored resource.Object) bool {
	sm, tm := sent.GetMetadata(), stored.GetMetadata()
	if sm.GetName() != tm.GetName() ||
		!maps.Equal(sm.GetLabels(), tm.GetLabels()) ||
		!maps.Equal(sm.GetAnnotations(), tm.GetAnnotations()) ||
		len(sm.GetOwnerReferences()) != len(tm.GetOwnerReferences()) {
		return false
	}
	for i, ref := range sm.GetOwnerReferences() {
		if !proto.Equal(ref, tm.GetOwnerReferences()[i]) {
			return false
		}
	}
	return contentCovered(sent, stored)
}

// statusUpdateApplied: the stored object has the status an UpdateStatus sent.
func statusUpdateApplied(sent, stored resource.Object) bool {
	s, t := sent.ProtoReflect(), stored.ProtoReflect()
	fd := s.Descriptor().Fields().ByName(fieldStatus)
	if fd == nil {
		return false
	}
	return valueCovered(fd, s.Get(fd), t.Get(fd))
}

// contentCovered compares every field but metadata and status.
func contentCovered(sent, stored resource.Object) bool {
	s, t := sent.ProtoReflect(), stored.ProtoReflect()
	fields := s.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Name() == fieldMetadata || fd.Name() == fieldStatus || !s.Has(fd) {
			continue
		}
		if !valueCovered(fd, s.Get(fd), t.Get(fd)) {
			return false
		}
	}
	return true
}

// messageCovered: every field set in sent is equal in stored.
func messageCovered(sent, stored protoreflect.Message) bool {
	covered := true
	sent.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		covered = valueCovered(fd, v, stored.Get(fd))
		return covered
	})
	return covered
}

func valueCovered(fd protoreflect.FieldDescriptor, sent, stored protoreflect.Value) bool {
	switch {
	case fd.IsList():
		a, b := sent.List(), stored.List()
		if a.Len() != b.Len() {
			return false
		}
		for i := 0; i < a.Len(); i++ {
			if !elementCovered(fd, a.Get(i), b.Get(i)) {
				return false
			}
		}
		return true
	case fd.IsMap():
		a, b := sent.Map(), stored.Map()
		if a.Len() != b.Len() {
			return false
		}
		covered := true
		a.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
			covered = b.Has(k) && elementCovered(fd.MapValue(), v, b.Get(k))
			return covered
		})
		return covered
	default:
		return elementCovered(fd, sent, stored)
	}
}

// elementCovered compares one singular value (or list element, or map value)
// of field fd.
func elementCovered(fd protoreflect.FieldDescriptor, sent, stored protoreflect.Value) bool {
	if fd.Message() != nil {
		return messageCovered(sent.Message(), stored.Message())
	}
	return sent.Equal(stored)
}
