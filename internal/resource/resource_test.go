package resource

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestServicesFollowConvention checks every kind's service against the
// standard-method convention the server and client dispatch on.
func TestServicesFollowConvention(t *testing.T) {
	for _, k := range All() {
		for _, v := range Verbs {
			m := k.Method(v)
			if m == nil {
				if v == UpdateStatus && !k.HasStatus {
					continue
				}
				t.Errorf("%s: no method %s", k.Name, k.MethodName(v))
				continue
			}
			if got, want := m.IsStreamingServer(), v == Watch; got != want {
				t.Errorf("%s: server streaming = %v, want %v", m.FullName(), got, want)
			}
			in, out := m.Input(), m.Output()
			switch v {
			case Create, Update, UpdateStatus:
				requireObjectField(t, k, in, false)
			case Get, Delete:
				requireField(t, in, FieldName)
				if k.Namespaced {
					requireField(t, in, FieldNamespace)
				}
			case List, Watch:
				requireField(t, in, FieldLabelSelector)
				requireField(t, in, FieldFieldSelector)
				if k.Namespaced {
					requireField(t, in, FieldNamespace)
				}
			}
			switch v {
			case List:
				requireObjectField(t, k, out, true)
				requireField(t, out, FieldNextPageToken)
				requireField(t, out, FieldResourceVersion)
			case Watch:
				requireObjectField(t, k, out, false)
				requireField(t, out, FieldType)
				requireField(t, out, FieldResourceVersion)
			default:
				requireObjectField(t, k, out, false)
			}
			if _, err := NewMessage(in); err != nil {
				t.Error(err)
			}
		}
	}
}

func requireField(t *testing.T, md protoreflect.MessageDescriptor, name string) {
	t.Helper()
	if md.Fields().ByName(protoreflect.Name(name)) == nil {
		t.Errorf("%s has no field %s", md.FullName(), name)
	}
}

func requireObjectField(t *testing.T, k *Kind, md protoreflect.MessageDescriptor, list bool) {
	t.Helper()
	fd := k.ObjectField(md)
	if fd == nil {
		t.Errorf("%s has no %s field", md.FullName(), k.Name)
		return
	}
	if fd.IsList() != list {
		t.Errorf("%s.%s: repeated = %v, want %v", md.FullName(), fd.Name(), fd.IsList(), list)
	}
}

func TestLookupAndKeys(t *testing.T) {
	tests := []struct {
		name, key string
		ns, obj   string
	}{
		{"po", "/capstan/pods/default/web", "", "web"},
		{"Pods", "/capstan/pods/prod/web", "prod", "web"},
		{"node", "/capstan/nodes/n1", "ignored", "n1"},
		{"rs", "/capstan/replicasets/default/r", "", "r"},
		{"ConfigMap", "/capstan/configmaps/a/b", "a", "b"},
	}
	for _, tt := range tests {
		k, ok := Lookup(tt.name)
		if !ok {
			t.Fatalf("Lookup(%q) failed", tt.name)
		}
		if got := k.Key(tt.ns, tt.obj); got != tt.key {
			t.Errorf("%s.Key(%q,%q) = %q, want %q", k.Name, tt.ns, tt.obj, got, tt.key)
		}
	}
	if _, ok := Lookup("nope"); ok {
		t.Error("Lookup(nope) succeeded")
	}
	if got := MustLookup("pod").Prefix(AllNamespaces); got != "/capstan/pods/" {
		t.Errorf("all-namespace prefix = %q", got)
	}
}
