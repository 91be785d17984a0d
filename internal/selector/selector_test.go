package selector

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/typepb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/apimachinery/pkg/labels"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/storage"
)

// requireInvalid fails unless err is INVALID_ARGUMENT naming field.
func requireInvalid(t *testing.T, err error, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want INVALID_ARGUMENT on %q", field)
	}
	if got := apierrors.Code(err); got != codes.InvalidArgument {
		t.Fatalf("code = %v, want InvalidArgument (err: %v)", got, err)
	}
	if got := apierrors.Field(err); got != field {
		t.Fatalf("field = %q, want %q (err: %v)", got, field, err)
	}
}

func TestLabels(t *testing.T) {
	set := labels.Set{"app": "web", "tier": "frontend", "env": "prod", "replicas": "3"}
	tests := []struct {
		name     string
		selector string
		want     bool
	}{
		{"empty selects everything", "", true},
		{"blank selects everything", "   ", true},
		{"equals match", "app=web", true},
		{"equals mismatch", "app=db", false},
		{"equals on missing key", "missing=x", false},
		{"double equals match", "app==web", true},
		{"double equals mismatch", "app==db", false},
		{"not equals match", "app!=db", true},
		{"not equals mismatch", "app!=web", false},
		{"not equals on missing key", "missing!=x", true},
		{"in match", "env in (prod,staging)", true},
		{"in mismatch", "env in (dev,staging)", false},
		{"in on missing key", "missing in (x)", false},
		{"notin match", "env notin (dev,staging)", true},
		{"notin mismatch", "env notin (prod)", false},
		{"notin on missing key", "missing notin (x)", true},
		{"exists match", "app", true},
		{"exists mismatch", "missing", false},
		{"does not exist match", "!missing", true},
		{"does not exist mismatch", "!app", false},
		{"greater than match", "replicas>2", true},
		{"greater than mismatch", "replicas>3", false},
		{"less than match", "replicas<4", true},
		{"and all hold", "app=web,tier=frontend,env in (prod),!canary", true},
		{"and one fails", "app=web,tier=backend", false},
		{"spaces around terms", " app = web , tier != db ", true},
		{"prefixed key", "capstan.dev/role=x", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := Labels(tt.selector)
			if err != nil {
				t.Fatalf("Labels(%q): %v", tt.selector, err)
			}
			if got := sel.Matches(set); got != tt.want {
				t.Fatalf("Labels(%q).Matches(%v) = %v, want %v", tt.selector, set, got, tt.want)
			}
		})
	}
}

func TestLabelsInvalid(t *testing.T) {
	tests := []struct{ name, selector string }{
		{"unclosed set", "app in (web"},
		{"set without parentheses", "app in web"},
		{"missing key", "=web"},
		{"trailing comma", "app=web,"},
		{"space in key", "bad key=x"},
		{"space in value", "app=not valid"},
		{"value too long", "app=" + strings.Repeat("v", 64)},
		{"key starts with a dash", "-app=x"},
		{"two prefixes", "a/b/c=x"},
		{"does-not-exist with a value", "!app=x"},
		{"greater than a non-integer", "replicas>x"},
		{"unknown operator", "app ~ x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Labels(tt.selector)
			requireInvalid(t, err, "label_selector")
		})
	}
}

// TestLabelsEdgeCases pins selectors Kubernetes accepts that look wrong.
func TestLabelsEdgeCases(t *testing.T) {
	tests := []struct {
		name     string
		selector string
		set      labels.Set
		want     bool
	}{
		{"empty value matches the empty value", "app=", labels.Set{"app": ""}, true},
		{"empty value does not match a value", "app==", labels.Set{"app": "web"}, false},
		{"empty notin set is a not-in of nothing", "app notin ()", labels.Set{"app": "web"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := Labels(tt.selector)
			if err != nil {
				t.Fatalf("Labels(%q): %v", tt.selector, err)
			}
			if got := sel.Matches(tt.set); got != tt.want {
				t.Fatalf("Matches(%v) = %v, want %v", tt.set, got, tt.want)
			}
		})
	}
}

func testPod() *capstanv1.Pod {
	return &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{
			Name:            "web-1",
			Namespace:       "prod",
			ResourceVersion: 42,
			Labels:          map[string]string{"app": "web"},
		},
		Spec:   &capstanv1.PodSpec{NodeName: "node-a", RestartPolicy: "Always"},
		Status: &capstanv1.PodStatus{Phase: "Running", PodIp: "10.0.0.1"},
	}
}

func TestFields(t *testing.T) {
	pods := resource.MustLookup("Pod")
	nodes := resource.MustLookup("Node")
	replicaSets := resource.MustLookup("ReplicaSet")
	leases := resource.MustLookup("Lease")
	replicas := int32(3)
	tests := []struct {
		name     string
		kind     *resource.Kind
		selector string
		obj      storage.Object
		want     bool
	}{
		{"empty", pods, "", testPod(), true},
		{"name equals", pods, "metadata.name=web-1", testPod(), true},
		{"name differs", pods, "metadata.name=web-2", testPod(), false},
		{"double equals", pods, "metadata.name==web-1", testPod(), true},
		{"not equals holds", pods, "metadata.name!=web-2", testPod(), true},
		{"not equals fails", pods, "metadata.name!=web-1", testPod(), false},
		{"namespace", pods, "metadata.namespace=prod", testPod(), true},
		{"proto name", pods, "spec.node_name=node-a", testPod(), true},
		{"json name", pods, "spec.nodeName=node-a", testPod(), true},
		{"json name of a message", pods, "status.podIp=10.0.0.1", testPod(), true},
		{"status phase", pods, "status.phase=Running", testPod(), true},
		{"status phase differs", pods, "status.phase!=Running", testPod(), false},
		{"and both hold", pods, "spec.node_name=node-a,status.phase=Running", testPod(), true},
		{"and one fails", pods, "spec.node_name=node-a,status.phase=Pending", testPod(), false},
		{"int64 as decimal", pods, "metadata.resource_version=42", testPod(), true},
		{"int64 json name", pods, "metadata.resourceVersion=42", testPod(), true},
		{"unset message reads as zero: unbound", pods, "spec.node_name=", &capstanv1.Pod{Metadata: &capstanv1.ObjectMeta{Name: "p"}}, true},
		{"unset message reads as zero: not bound", pods, "spec.node_name!=", &capstanv1.Pod{Metadata: &capstanv1.ObjectMeta{Name: "p"}}, false},
		{"unset int reads as zero", pods, "metadata.generation=0", testPod(), true},
		{"escaped comma in value", pods, `metadata.name=a\,b`, &capstanv1.Pod{Metadata: &capstanv1.ObjectMeta{Name: "a,b"}}, true},
		{"bool true", nodes, "spec.unschedulable=true", &capstanv1.Node{Spec: &capstanv1.NodeSpec{Unschedulable: true}}, true},
		{"bool false", nodes, "spec.unschedulable=false", &capstanv1.Node{}, true},
		{"bool not capitalised", nodes, "spec.unschedulable=True", &capstanv1.Node{Spec: &capstanv1.NodeSpec{Unschedulable: true}}, false},
		{"optional int32 set", replicaSets, "spec.replicas=3", &capstanv1.ReplicaSet{Spec: &capstanv1.ReplicaSetSpec{Replicas: &replicas}}, true},
		{"optional int32 unset", replicaSets, "spec.replicas=0", &capstanv1.ReplicaSet{}, true},
		{"int32", leases, "spec.lease_duration_seconds=15", &capstanv1.Lease{Spec: &capstanv1.LeaseSpec{LeaseDurationSeconds: 15}}, true},
		{"other kind never matches", pods, "metadata.name=n", &capstanv1.Node{Metadata: &capstanv1.ObjectMeta{Name: "n"}}, false},
		{"empty matches other kind", pods, "", &capstanv1.Node{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pred, err := Fields(tt.kind, tt.selector)
			if err != nil {
				t.Fatalf("Fields(%s, %q): %v", tt.kind.Name, tt.selector, err)
			}
			if pred == nil {
				t.Fatal("Fields returned a nil predicate")
			}
			if got := pred(tt.obj); got != tt.want {
				t.Fatalf("Fields(%s, %q) on %v = %v, want %v", tt.kind.Name, tt.selector, tt.obj, got, tt.want)
			}
		})
	}
}

func TestFieldsInvalid(t *testing.T) {
	pods := resource.MustLookup("Pod")
	tests := []struct {
		name     string
		selector string
		wantMsg  string
	}{
		{"no operator", "metadata.name", "can't understand"},
		{"set operator", "metadata.name in (a)", "can't understand"},
		{"unknown top field", "foo=x", `unknown field "foo" for kind Pod`},
		{"unknown nested field", "spec.foo=x", `unknown field "spec.foo" for kind Pod`},
		{"below a scalar", "metadata.name.first=x", `unknown field "metadata.name.first" for kind Pod`},
		{"empty path", "=x", `unknown field "" for kind Pod`},
		{"empty segment", "spec..node_name=x", `unknown field "spec..node_name" for kind Pod`},
		{"wrong case", "Metadata.Name=x", `unknown field "Metadata.Name" for kind Pod`},
		{"message", "metadata=x", `field "metadata" of kind Pod is a message`},
		{"timestamp message", "metadata.create_time=x", `field "metadata.create_time" of kind Pod is a message`},
		{"map", "metadata.labels=x", `field "metadata.labels" of kind Pod is a map`},
		{"map entry", "metadata.labels.app=x", `field "metadata.labels" of kind Pod is a map`},
		{"list", "spec.containers=x", `field "spec.containers" of kind Pod is a list`},
		{"through a list", "spec.containers.name=x", `field "spec.containers" of kind Pod is a list`},
		{"bad escape", `metadata.name=a\x`, "invalid escape"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Fields(pods, tt.selector)
			requireInvalid(t, err, "field_selector")
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("error %q does not contain %q", err, tt.wantMsg)
			}
		})
	}
}

// TestFieldValueFormats covers the scalar kinds Capstan's objects do not
// use yet (enums, unsigned and floating point) with well-known types.
func TestFieldValueFormats(t *testing.T) {
	fields := (&typepb.Field{}).ProtoReflect().Descriptor().Fields()
	tests := []struct {
		name  string
		msg   proto.Message
		field protoreflect.FieldDescriptor
		want  string
	}{
		{"enum by name", &typepb.Field{Kind: typepb.Field_TYPE_STRING}, fields.ByName("kind"), "TYPE_STRING"},
		{"unset enum by name", &typepb.Field{}, fields.ByName("cardinality"), "CARDINALITY_UNKNOWN"},
		{"unknown enum number", &typepb.Field{Kind: typepb.Field_Kind(99)}, fields.ByName("kind"), "99"},
		{"negative int32", &typepb.Field{Number: -7}, fields.ByName("number"), "-7"},
		{"bool", &typepb.Field{Packed: true}, fields.ByName("packed"), "true"},
		{"string", &typepb.Field{Name: "n"}, fields.ByName("name"), "n"},
		{"uint64", wrapperspb.UInt64(18446744073709551615), wrapperspb.UInt64(0).ProtoReflect().Descriptor().Fields().ByName("value"), "18446744073709551615"},
		{"uint32", wrapperspb.UInt32(4294967295), wrapperspb.UInt32(0).ProtoReflect().Descriptor().Fields().ByName("value"), "4294967295"},
		{"int64", wrapperspb.Int64(-9223372036854775808), wrapperspb.Int64(0).ProtoReflect().Descriptor().Fields().ByName("value"), "-9223372036854775808"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !selectableKind(tt.field.Kind()) {
				t.Fatalf("%s fields must be selectable", tt.field.Kind())
			}
			got := fieldValue(tt.msg.ProtoReflect(), []protoreflect.FieldDescriptor{tt.field})
			if got != tt.want {
				t.Fatalf("fieldValue = %q, want %q", got, tt.want)
			}
		})
	}
	for _, msg := range []proto.Message{wrapperspb.Double(0), wrapperspb.Float(0), wrapperspb.Bytes(nil)} {
		fd := msg.ProtoReflect().Descriptor().Fields().ByName("value")
		if selectableKind(fd.Kind()) {
			t.Errorf("%s fields must not be selectable", fd.Kind())
		}
	}
}

func TestPredicate(t *testing.T) {
	pods := resource.MustLookup("Pod")
	tests := []struct {
		name          string
		labelSelector string
		fieldSelector string
		wantNil       bool
		want          bool
	}{
		{"both empty is nil", "", "", true, true},
		{"blank label selector is nil", "  ", "", true, true},
		{"labels only", "app=web", "", false, true},
		{"labels only, mismatch", "app=db", "", false, false},
		{"fields only", "", "spec.node_name=node-a", false, true},
		{"fields only, mismatch", "", "spec.node_name=node-b", false, false},
		{"both hold", "app=web", "status.phase=Running", false, true},
		{"labels fail", "app!=web", "status.phase=Running", false, false},
		{"fields fail", "app=web", "status.phase=Pending", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pred, err := Predicate(pods, tt.labelSelector, tt.fieldSelector)
			if err != nil {
				t.Fatal(err)
			}
			if (pred == nil) != tt.wantNil {
				t.Fatalf("predicate nil = %v, want %v", pred == nil, tt.wantNil)
			}
			if got := pred.Matches(testPod()); got != tt.want {
				t.Fatalf("Matches = %v, want %v", got, tt.want)
			}
		})
	}

	t.Run("pod without labels or metadata", func(t *testing.T) {
		pred, err := Predicate(pods, "!app", "metadata.name=")
		if err != nil {
			t.Fatal(err)
		}
		if !pred.Matches(&capstanv1.Pod{}) {
			t.Fatal("an empty pod has no app label and an empty name")
		}
	})

	t.Run("bad label selector", func(t *testing.T) {
		_, err := Predicate(pods, "app in (", "metadata.name=x")
		requireInvalid(t, err, "label_selector")
	})
	t.Run("bad field selector", func(t *testing.T) {
		_, err := Predicate(pods, "app=web", "spec.nope=x")
		requireInvalid(t, err, "field_selector")
	})
}

func TestFromLabelSelector(t *testing.T) {
	set := labels.Set{"app": "web", "env": "prod"}
	tests := []struct {
		name string
		sel  *capstanv1.LabelSelector
		want bool
	}{
		{"nil selects nothing", nil, false},
		{"empty selects everything", &capstanv1.LabelSelector{}, true},
		{"match labels hold", &capstanv1.LabelSelector{MatchLabels: map[string]string{"app": "web", "env": "prod"}}, true},
		{"match labels fail", &capstanv1.LabelSelector{MatchLabels: map[string]string{"app": "web", "env": "dev"}}, false},
		{"In holds", expr("env", "In", "prod", "staging"), true},
		{"In fails", expr("env", "In", "dev"), false},
		{"NotIn holds", expr("env", "NotIn", "dev"), true},
		{"NotIn fails", expr("env", "NotIn", "prod"), false},
		{"NotIn on missing key holds", expr("tier", "NotIn", "db"), true},
		{"Exists holds", expr("app", "Exists"), true},
		{"Exists fails", expr("tier", "Exists"), false},
		{"DoesNotExist holds", expr("tier", "DoesNotExist"), true},
		{"DoesNotExist fails", expr("app", "DoesNotExist"), false},
		{"labels and expressions both hold", &capstanv1.LabelSelector{
			MatchLabels:      map[string]string{"app": "web"},
			MatchExpressions: []*capstanv1.LabelSelectorRequirement{{Key: "env", Operator: "In", Values: []string{"prod"}}},
		}, true},
		{"labels hold, expression fails", &capstanv1.LabelSelector{
			MatchLabels:      map[string]string{"app": "web"},
			MatchExpressions: []*capstanv1.LabelSelectorRequirement{{Key: "env", Operator: "DoesNotExist"}},
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := FromLabelSelector(tt.sel)
			if err != nil {
				t.Fatal(err)
			}
			if got := sel.Matches(set); got != tt.want {
				t.Fatalf("Matches(%v) = %v, want %v", set, got, tt.want)
			}
		})
	}
}

func TestFromLabelSelectorInvalid(t *testing.T) {
	tests := []struct {
		name    string
		sel     *capstanv1.LabelSelector
		wantMsg string
	}{
		{"bad match label key", &capstanv1.LabelSelector{MatchLabels: map[string]string{"bad key": "x"}}, "match_labels[bad key]"},
		{"bad match label value", &capstanv1.LabelSelector{MatchLabels: map[string]string{"app": "not valid"}}, "match_labels[app]"},
		{"first bad key in sorted order", &capstanv1.LabelSelector{MatchLabels: map[string]string{"z z": "x", "a a": "x"}}, "match_labels[a a]"},
		{"unknown operator", expr("app", "Has", "x"), `match_expressions[0].operator: "Has" is not a valid`},
		{"lower-case operator", expr("app", "in", "x"), `match_expressions[0].operator: "in"`},
		{"In without values", expr("app", "In"), "match_expressions[0]"},
		{"NotIn without values", expr("app", "NotIn"), "match_expressions[0]"},
		{"Exists with values", expr("app", "Exists", "x"), "match_expressions[0]"},
		{"DoesNotExist with values", expr("app", "DoesNotExist", "x"), "match_expressions[0]"},
		{"bad expression key", expr("-app", "Exists"), "match_expressions[0]"},
		{"bad expression value", expr("app", "In", "not valid"), "match_expressions[0]"},
		{"second expression", &capstanv1.LabelSelector{MatchExpressions: []*capstanv1.LabelSelectorRequirement{
			{Key: "app", Operator: "Exists"}, {Key: "app", Operator: "Nope"},
		}}, "match_expressions[1].operator"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := FromLabelSelector(tt.sel)
			if err == nil {
				t.Fatal("got no error")
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("error %q does not contain %q", err, tt.wantMsg)
			}
		})
	}
}

func expr(key, op string, values ...string) *capstanv1.LabelSelector {
	return &capstanv1.LabelSelector{MatchExpressions: []*capstanv1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}
