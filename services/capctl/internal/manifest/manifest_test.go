package manifest

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/resource"
)

func ptr[T any](v T) *T { return &v }

func TestDecodeGood(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []resource.Object
		// lines are the documents' first lines, when the test checks them.
		lines []int
	}{
		{
			name: "pod",
			in: `
apiVersion: capstan.dev/v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  restartPolicy: Always
  containers:
  - name: web
    command: [/bin/sleep, "3600"]
    env: [{name: A, value: "1"}]
    ports: [{containerPort: 8080}]
`,
			want: []resource.Object{&capstanv1.Pod{
				Metadata: &capstanv1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
				Spec: &capstanv1.PodSpec{RestartPolicy: "Always", Containers: []*capstanv1.Container{{
					Name: "web", Command: []string{"/bin/sleep", "3600"},
					Env: []*capstanv1.EnvVar{{Name: "A", Value: "1"}}, Ports: []*capstanv1.ContainerPort{{ContainerPort: 8080}},
				}}},
			}},
		},
		{
			name: "apiVersion may be left out and proto names work too",
			in: `
kind: pod
metadata: {name: bound}
spec: {node_name: n1, terminationGracePeriodSeconds: 5}
`,
			want: []resource.Object{&capstanv1.Pod{
				Metadata: &capstanv1.ObjectMeta{Name: "bound"},
				Spec:     &capstanv1.PodSpec{NodeName: "n1", TerminationGracePeriodSeconds: ptr(int64(5))},
			}},
		},
		{
			name: "int-or-string as numbers and as strings",
			in: `
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, max_unavailable: 25%}
`,
			want: []resource.Object{&capstanv1.Deployment{
				Metadata: &capstanv1.ObjectMeta{Name: "web"},
				Spec: &capstanv1.DeploymentSpec{Replicas: ptr(int32(3)), Strategy: &capstanv1.DeploymentStrategy{
					Type: "RollingUpdate", RollingUpdate: &capstanv1.RollingUpdateDeployment{MaxSurge: "1", MaxUnavailable: "25%"},
				}},
			}},
		},
		{
			name: "config map data",
			in: `
kind: ConfigMap
metadata: {name: settings, namespace: prod}
data:
  port: "8080"
  enabled: "yes"
  script: |
    echo hi
    exit 0
`,
			want: []resource.Object{&capstanv1.ConfigMap{
				Metadata: &capstanv1.ObjectMeta{Name: "settings", Namespace: "prod"},
				Data:     map[string]string{"port": "8080", "enabled": "yes", "script": "echo hi\nexit 0\n"},
			}},
		},
		{
			name: "several documents, empty ones and comments skipped",
			in: `# leading comment
---
kind: ConfigMap
metadata: {name: a}
--- # the second
# only a comment
---
kind: Node
metadata: {name: n1}
spec: {unschedulable: true}
---
...
---
kind: Lease
metadata: {name: l}
spec: {holderIdentity: me, leaseDurationSeconds: 10}
`,
			want: []resource.Object{
				&capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "a"}},
				&capstanv1.Node{Metadata: &capstanv1.ObjectMeta{Name: "n1"}, Spec: &capstanv1.NodeSpec{Unschedulable: true}},
				&capstanv1.Lease{Metadata: &capstanv1.ObjectMeta{Name: "l"}, Spec: &capstanv1.LeaseSpec{HolderIdentity: "me", LeaseDurationSeconds: 10}},
			},
			lines: []int{3, 8, 14},
		},
		{
			name: "JSON",
			in:   `{"kind": "ReplicaSet", "metadata": {"name": "rs"}, "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "x"}}}}`,
			want: []resource.Object{&capstanv1.ReplicaSet{
				Metadata: &capstanv1.ObjectMeta{Name: "rs"},
				Spec:     &capstanv1.ReplicaSetSpec{Replicas: ptr(int32(0)), Selector: &capstanv1.LabelSelector{MatchLabels: map[string]string{"app": "x"}}},
			}},
		},
		{
			name: "server-set fields, as get -o yaml prints them",
			in: `
apiVersion: capstan.dev/v1
kind: Event
metadata:
  name: e1
  namespace: default
  resourceVersion: 42
  uid: "1234"
  createTime: "2025-01-02T03:04:05Z"
involvedObject: {kind: Pod, name: web}
reason: Scheduled
type: Normal
count: 2
`,
			want: []resource.Object{&capstanv1.Event{
				Metadata: &capstanv1.ObjectMeta{Name: "e1", Namespace: "default", ResourceVersion: 42, Uid: "1234",
					CreateTime: timestamppb.New(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))},
				InvolvedObject: &capstanv1.ObjectReference{Kind: "Pod", Name: "web"},
				Reason:         "Scheduled", Type: "Normal", Count: 2,
			}},
		},
		{
			name: "a List's items",
			in: `
apiVersion: capstan.dev/v1
kind: List
items:
- kind: ConfigMap
  metadata: {name: a}
- kind: ConfigMap
  metadata: {name: b}
`,
			want: []resource.Object{
				&capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "a"}},
				&capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "b"}},
			},
		},
		{
			name: "null fields are unset",
			in: `
kind: ConfigMap
metadata:
  name: a
  labels:
data:
`,
			want: []resource.Object{&capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "a"}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			docs, err := Decode(strings.NewReader(tt.in), "test.yaml")
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			var got []resource.Object
			for _, d := range docs {
				got = append(got, d.Object)
				if want, _ := resource.ForMessage(d.Object); d.Kind != want {
					t.Errorf("document %d: Kind %v, object is %v", d.Index, d.Kind.Name, want.Name)
				}
			}
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("objects (-want +got):\n%s", diff)
			}
			if tt.lines != nil {
				var lines []int
				for _, d := range docs {
					lines = append(lines, d.Line)
				}
				if diff := cmp.Diff(tt.lines, lines); diff != "" {
					t.Errorf("lines (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestDecodeBad(t *testing.T) {
	tests := []struct {
		name string
		in   string
		// want are substrings of the error.
		want []string
		// good is how many documents still decode.
		good int
	}{
		{
			name: "unknown top-level field",
			in:   "kind: Pod\nmetadata: {name: web}\nspex: {}\n",
			want: []string{`test.yaml: document 1 (line 1) Pod "web"`, `unknown field "spex"`, `did you mean "spec"?`},
		},
		{
			name: "unknown nested field",
			in:   "kind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: c\n    imagee: nginx\n",
			want: []string{`unknown field "spec.containers[0].imagee"`},
		},
		{
			name: "wrong case is suggested",
			in:   "kind: Pod\nmetadata: {name: web}\nspec: {NodeName: n1}\n",
			want: []string{`unknown field "spec.NodeName" (did you mean "nodeName"?)`},
		},
		{
			name: "kind missing",
			in:   "metadata: {name: web}\n",
			want: []string{"kind is missing", "Pod, Node"},
		},
		{
			name: "unknown kind",
			in:   "kind: Service\nmetadata: {name: web}\n",
			want: []string{`unknown kind "Service"`},
		},
		{
			name: "Kubernetes apiVersion",
			in:   "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
			want: []string{`apiVersion "apps/v1" is not served`, "capstan.dev/v1"},
		},
		{
			name: "config map value must be a string",
			in:   "kind: ConfigMap\nmetadata: {name: c}\ndata:\n  port: 8080\n",
			want: []string{`data.port: want a string, got the number 8080 (quote the value)`},
		},
		{
			name: "YAML 1.1 booleans",
			in:   "kind: ConfigMap\nmetadata: {name: c}\ndata:\n  enabled: yes\n",
			want: []string{`data.enabled: want a string, got the boolean true`, "quote the value"},
		},
		{
			name: "label keys with dots are quoted in the path",
			in:   "kind: ConfigMap\nmetadata:\n  name: c\n  labels:\n    app.kubernetes.io/name: 1\n",
			want: []string{`metadata.labels["app.kubernetes.io/name"]: want a string`},
		},
		{
			name: "int-or-string only where Kubernetes has it",
			in:   "kind: Pod\nmetadata: {name: p}\nspec: {restartPolicy: 1}\n",
			want: []string{"spec.restartPolicy: want a string, got the number 1"},
		},
		{
			name: "a number that is not",
			in:   "kind: Deployment\nmetadata: {name: d}\nspec: {replicas: three}\n",
			want: []string{`Deployment "d": spec.replicas: want a number, got the string "three"`},
		},
		{
			name: "a list where a mapping belongs",
			in:   "kind: Pod\nmetadata: {name: p}\nspec: [a]\n",
			want: []string{"spec: want a mapping, got a list"},
		},
		{
			name: "a mapping where a list belongs",
			in:   "kind: Pod\nmetadata: {name: p}\nspec: {containers: {name: c}}\n",
			want: []string{"spec.containers: want a list, got a mapping"},
		},
		{
			name: "not a mapping",
			in:   "- kind: Pod\n",
			want: []string{"want an object", "got a list"},
		},
		{
			name: "bad YAML",
			in:   "kind: Pod\nmetadata:\n  name: web\n\tspec: {}\n",
			want: []string{"not valid YAML"},
		},
		{
			name: "duplicate key",
			in:   "kind: Pod\nmetadata: {name: a}\nmetadata: {name: b}\n",
			want: []string{"not valid YAML", "metadata"},
		},
		{
			name: "bad timestamp",
			in:   "kind: Pod\nmetadata: {name: a, createTime: yesterday}\n",
			want: []string{`Pod "a": metadata.createTime: want a time such as`, `got the string "yesterday"`},
		},
		{
			name: "only the bad document of several fails, with its line",
			in:   "kind: ConfigMap\nmetadata: {name: a}\n---\nkind: ConfigMap\nmetadata: {name: b}\ndata: {x: [1]}\n---\nkind: ConfigMap\nmetadata: {name: c}\n",
			want: []string{`document 2 (line 4) ConfigMap "b": data.x: want a string, got a list`},
			good: 2,
		},
		{
			name: "a bad List item",
			in:   "kind: List\nitems:\n- kind: ConfigMap\n  metadata: {name: a}\n- kind: ConfigMap\n  metadata: {name: b}\n  extra: 1\n",
			want: []string{`document 1, item 2 (line 1) ConfigMap "b": unknown field "extra"`},
			good: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			docs, err := Decode(strings.NewReader(tt.in), "test.yaml")
			if err == nil {
				t.Fatalf("Decode succeeded with %d documents, want an error", len(docs))
			}
			t.Logf("error: %v", err)
			var de *DocumentError
			if !errors.As(err, &de) {
				t.Errorf("error %v is not a *DocumentError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if len(docs) != tt.good {
				t.Errorf("%d documents decoded, want %d", len(docs), tt.good)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	created := timestamppb.New(time.Date(2025, 3, 4, 5, 6, 7, 890, time.UTC))
	objs := []resource.Object{
		&capstanv1.Pod{
			Metadata: &capstanv1.ObjectMeta{Name: "web", Namespace: "default", Uid: "u-1", ResourceVersion: 1 << 40,
				Generation: 3, CreateTime: created, Labels: map[string]string{"app": "web"},
				OwnerReferences: []*capstanv1.OwnerReference{{Kind: "ReplicaSet", Name: "rs", Uid: "u-0", Controller: true}}},
			Spec: &capstanv1.PodSpec{NodeName: "n1", TerminationGracePeriodSeconds: ptr(int64(30)),
				Containers: []*capstanv1.Container{{Name: "c", Command: []string{"sh", "-c", "echo <a> && exit 0"}}}},
			Status: &capstanv1.PodStatus{Phase: "Running", StartTime: created,
				ContainerStatuses: []*capstanv1.ContainerStatus{{Name: "c", Ready: true, RestartCount: 2}}},
		},
		&capstanv1.Deployment{
			Metadata: &capstanv1.ObjectMeta{Name: "d"},
			Spec: &capstanv1.DeploymentSpec{Replicas: ptr(int32(0)), Strategy: &capstanv1.DeploymentStrategy{
				RollingUpdate: &capstanv1.RollingUpdateDeployment{MaxSurge: "1"}}},
		},
		&capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "c"}, Data: map[string]string{"a": "1", "b": "yes", "c": ""}},
		&capstanv1.Node{Metadata: &capstanv1.ObjectMeta{Name: "n"}},
	}
	for _, obj := range objs {
		kind, _ := resource.ForMessage(obj)
		t.Run(kind.Name, func(t *testing.T) {
			for _, enc := range []struct {
				name string
				fn   func(resource.Object) ([]byte, error)
			}{{"yaml", ToYAML}, {"json", ToJSON}} {
				out, err := enc.fn(obj)
				if err != nil {
					t.Fatalf("%s: %v", enc.name, err)
				}
				doc, err := DecodeOne(out, enc.name)
				if err != nil {
					t.Fatalf("decode own %s: %v\n%s", enc.name, err, out)
				}
				if !proto.Equal(doc.Object, obj) {
					t.Errorf("%s round trip changed the object:\n%s", enc.name, cmp.Diff(obj, doc.Object, protocmp.Transform()))
				}
			}
		})
	}
}

func TestYAMLShape(t *testing.T) {
	pod := &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Name: "web", ResourceVersion: 42, Labels: map[string]string{"app": "web"}},
		Spec:     &capstanv1.PodSpec{NodeName: "n1"},
	}
	out, err := ToYAML(pod)
	if err != nil {
		t.Fatal(err)
	}
	want := `apiVersion: capstan.dev/v1
kind: Pod
metadata:
  labels:
    app: web
  name: web
  resourceVersion: 42
spec:
  nodeName: n1
`
	if diff := cmp.Diff(want, string(out)); diff != "" {
		t.Errorf("YAML (-want +got):\n%s", diff)
	}

	list, err := List([]resource.Object{pod})
	if err != nil {
		t.Fatal(err)
	}
	js, err := JSON(list)
	if err != nil {
		t.Fatal(err)
	}
	wantJSON := `{
    "apiVersion": "capstan.dev/v1",
    "items": [
        {
            "apiVersion": "capstan.dev/v1",
            "kind": "Pod",
            "metadata": {
                "labels": {
                    "app": "web"
                },
                "name": "web",
                "resourceVersion": 42
            },
            "spec": {
                "nodeName": "n1"
            }
        }
    ],
    "kind": "List"
}
`
	if diff := cmp.Diff(wantJSON, string(js)); diff != "" {
		t.Errorf("JSON (-want +got):\n%s", diff)
	}
}
