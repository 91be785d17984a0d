package printer

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/resource"
)

var now = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func ago(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(-d)) }

func meta(ns, name string, age time.Duration) *capstanv1.ObjectMeta {
	return &capstanv1.ObjectMeta{Namespace: ns, Name: name, CreateTime: ago(age)}
}

func ptr[T any](v T) *T { return &v }

func containers(names ...string) []*capstanv1.Container {
	var out []*capstanv1.Container
	for _, n := range names {
		out = append(out, &capstanv1.Container{Name: n})
	}
	return out
}

var (
	runningPod = &capstanv1.Pod{
		Metadata: meta("default", "web-1", 5*time.Minute),
		Spec:     &capstanv1.PodSpec{NodeName: "worker-1", Containers: containers("web", "sidecar")},
		Status: &capstanv1.PodStatus{Phase: "Running", PodIp: "10.0.0.5", ContainerStatuses: []*capstanv1.ContainerStatus{
			{Name: "web", Ready: true, State: &capstanv1.ContainerState{Running: &capstanv1.ContainerStateRunning{}}},
			{Name: "sidecar", Ready: true, State: &capstanv1.ContainerState{Running: &capstanv1.ContainerStateRunning{}}},
		}},
	}
	crashingPod = &capstanv1.Pod{
		Metadata: meta("prod", "api-7", 3*time.Hour+12*time.Minute),
		Spec:     &capstanv1.PodSpec{NodeName: "worker-2", Containers: containers("api")},
		Status: &capstanv1.PodStatus{Phase: "Running", ContainerStatuses: []*capstanv1.ContainerStatus{{
			Name: "api", RestartCount: 4,
			State:     &capstanv1.ContainerState{Waiting: &capstanv1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}},
			LastState: &capstanv1.ContainerState{Terminated: &capstanv1.ContainerStateTerminated{ExitCode: 1, FinishedAt: ago(42 * time.Second)}},
		}}},
	}
	pendingPod = &capstanv1.Pod{
		Metadata: meta("default", "unbound", 10*time.Second),
		Spec:     &capstanv1.PodSpec{Containers: containers("c")},
		Status:   &capstanv1.PodStatus{Phase: "Pending"},
	}
	terminatingPod = &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: "old", CreateTime: ago(48 * time.Hour), DeleteTime: ago(time.Second)},
		Spec:     &capstanv1.PodSpec{NodeName: "worker-1", Containers: containers("c")},
		Status: &capstanv1.PodStatus{Phase: "Running", ContainerStatuses: []*capstanv1.ContainerStatus{{
			Name: "c", State: &capstanv1.ContainerState{Terminated: &capstanv1.ContainerStateTerminated{Signal: 15}},
		}}},
	}
)

func TestTables(t *testing.T) {
	tests := []struct {
		name string
		kind string
		opts Options
		objs []resource.Object
		want string
	}{
		{
			name: "pods",
			kind: "Pod",
			objs: []resource.Object{runningPod, crashingPod, pendingPod, terminatingPod},
			want: `
NAME      READY   STATUS             RESTARTS      NODE       AGE
web-1     2/2     Running            0             worker-1   5m
api-7     0/1     CrashLoopBackOff   4 (42s ago)   worker-2   3h12m
unbound   0/1     Pending            0             <none>     10s
old       0/1     Terminating        0             worker-1   2d
`,
		},
		{
			name: "pods in all namespaces, wide",
			kind: "Pod",
			opts: Options{AllNamespaces: true, Format: Wide},
			objs: []resource.Object{runningPod, crashingPod},
			want: `
NAMESPACE   NAME    READY   STATUS             RESTARTS      NODE       AGE     IP
default     web-1   2/2     Running            0             worker-1   5m      10.0.0.5
prod        api-7   0/1     CrashLoopBackOff   4 (42s ago)   worker-2   3h12m   <none>
`,
		},
		{
			name: "no headers",
			kind: "Pod",
			opts: Options{NoHeaders: true},
			objs: []resource.Object{pendingPod},
			want: `
unbound   0/1   Pending   0   <none>   10s
`,
		},
		{
			name: "nodes ignore -A",
			kind: "Node",
			opts: Options{AllNamespaces: true},
			objs: []resource.Object{
				&capstanv1.Node{Metadata: meta("", "worker-1", time.Hour), Status: &capstanv1.NodeStatus{
					Conditions: []*capstanv1.Condition{{Type: "Ready", Status: "True"}}}},
				&capstanv1.Node{Metadata: meta("", "worker-2", time.Hour), Spec: &capstanv1.NodeSpec{Unschedulable: true},
					Status: &capstanv1.NodeStatus{Conditions: []*capstanv1.Condition{{Type: "Ready", Status: "Unknown"}}}},
				&capstanv1.Node{Metadata: meta("", "new", time.Second)},
			},
			want: `
NAME       STATUS                        AGE
worker-1   Ready                         60m
worker-2   NotReady,SchedulingDisabled   60m
new        Unknown                       1s
`,
		},
		{
			name: "nodes wide",
			kind: "Node",
			opts: Options{Format: Wide},
			objs: []resource.Object{&capstanv1.Node{Metadata: meta("", "worker-1", 90*time.Minute), Status: &capstanv1.NodeStatus{
				Conditions: []*capstanv1.Condition{{Type: "Ready", Status: "True"}},
				Addresses:  []*capstanv1.NodeAddress{{Type: "Hostname", Address: "w1"}, {Type: "InternalIP", Address: "192.0.2.1"}},
				NodeInfo:   &capstanv1.NodeInfo{AgentVersion: "v0.1.0", OperatingSystem: "linux", Architecture: "amd64", Runtime: "process"},
			}}},
			want: `
NAME       STATUS   AGE   VERSION   INTERNAL-IP   OS      ARCH    RUNTIME
worker-1   Ready    90m   v0.1.0    192.0.2.1     linux   amd64   process
`,
		},
		{
			name: "replicasets",
			kind: "ReplicaSet",
			opts: Options{Format: Wide},
			objs: []resource.Object{
				&capstanv1.ReplicaSet{Metadata: meta("default", "web-5d8f", 2*time.Minute),
					Spec: &capstanv1.ReplicaSetSpec{Replicas: ptr(int32(3)), Selector: &capstanv1.LabelSelector{
						MatchLabels:      map[string]string{"app": "web", "hash": "5d8f"},
						MatchExpressions: []*capstanv1.LabelSelectorRequirement{{Key: "tier", Operator: "In", Values: []string{"a", "b"}}}}},
					Status: &capstanv1.ReplicaSetStatus{Replicas: 3, ReadyReplicas: 2}},
				&capstanv1.ReplicaSet{Metadata: meta("default", "defaulted", 2*time.Minute)},
			},
			want: `
NAME        DESIRED   CURRENT   READY   AGE   SELECTOR
web-5d8f    3         3         2       2m    app=web,hash=5d8f,tier in (a,b)
defaulted   1         0         0       2m    <none>
`,
		},
		{
			name: "deployments",
			kind: "Deployment",
			objs: []resource.Object{&capstanv1.Deployment{Metadata: meta("default", "web", 26*time.Hour),
				Spec:   &capstanv1.DeploymentSpec{Replicas: ptr(int32(3))},
				Status: &capstanv1.DeploymentStatus{ReadyReplicas: 2, UpdatedReplicas: 3, AvailableReplicas: 2}}},
			want: `
NAME   READY   UP-TO-DATE   AVAILABLE   AGE
web    2/3     3            2           26h
`,
		},
		{
			name: "leases",
			kind: "Lease",
			opts: Options{Format: Wide},
			objs: []resource.Object{
				&capstanv1.Lease{Metadata: meta("capstan-system", "scheduler", 30*time.Second),
					Spec:   &capstanv1.LeaseSpec{HolderIdentity: "master-2", LeaseDurationSeconds: 2},
					Status: &capstanv1.LeaseStatus{Epoch: 1042, RenewTime: ago(300 * time.Millisecond), LeaseTransitions: 3, SessionReplica: "apiserver-3"}},
				&capstanv1.Lease{Metadata: meta("capstan-system", "free", time.Minute)},
			},
			want: `
NAME        HOLDER     EPOCH   AGE   SESSION       DURATION   RENEWED   TRANSITIONS
scheduler   master-2   1042    30s   apiserver-3   2s         0s ago    3
free        <none>     0       60s   <none>        0s         never     0
`,
		},
		{
			// The session is a wide column: the default table stays narrow.
			name: "leases without -o wide",
			kind: "Lease",
			objs: []resource.Object{
				&capstanv1.Lease{Metadata: meta("capstan-node-lease", "node-1", 30*time.Second),
					Spec:   &capstanv1.LeaseSpec{HolderIdentity: "node-1_9e3a77d0", LeaseDurationSeconds: 6},
					Status: &capstanv1.LeaseStatus{Epoch: 77, SessionReplica: "apiserver-1"}},
			},
			want: `
NAME     HOLDER            EPOCH   AGE
node-1   node-1_9e3a77d0   77      30s
`,
		},
		{
			name: "events",
			kind: "Event",
			objs: []resource.Object{
				&capstanv1.Event{Metadata: meta("default", "web-1.abc", time.Minute), InvolvedObject: &capstanv1.ObjectReference{Kind: "Pod", Name: "web-1"},
					Type: "Warning", Reason: "FailedScheduling", Message: "0/2 nodes are available:\n2 Insufficient cpu.", LastTime: ago(20 * time.Second)},
				&capstanv1.Event{Metadata: meta("default", "web-1.abd", 7*time.Second), InvolvedObject: &capstanv1.ObjectReference{Kind: "Pod", Name: "web-1"},
					Type: "Normal", Reason: "Scheduled"},
			},
			want: `
LAST SEEN   TYPE      REASON             OBJECT      MESSAGE
20s         Warning   FailedScheduling   pod/web-1   0/2 nodes are available: 2 Insufficient cpu.
7s          Normal    Scheduled          pod/web-1   <none>
`,
		},
		{
			name: "events in all namespaces",
			kind: "Event",
			opts: Options{AllNamespaces: true},
			objs: []resource.Object{&capstanv1.Event{Metadata: meta("prod", "e", time.Minute), InvolvedObject: &capstanv1.ObjectReference{Kind: "Node", Name: "n1"},
				Type: "Normal", Reason: "NodeReady", Message: "ok", FirstTime: ago(time.Hour)}},
			want: `
NAMESPACE   LAST SEEN   TYPE     REASON      OBJECT    MESSAGE
prod        60m         Normal   NodeReady   node/n1   ok
`,
		},
		{
			name: "config maps",
			kind: "ConfigMap",
			objs: []resource.Object{&capstanv1.ConfigMap{Metadata: meta("default", "settings", 3*24*time.Hour), Data: map[string]string{"a": "1", "b": "2"}}},
			want: `
NAME       DATA   AGE
settings   2      3d
`,
		},
		{
			name: "names",
			kind: "ReplicaSet",
			opts: Options{Format: Name},
			objs: []resource.Object{&capstanv1.ReplicaSet{Metadata: meta("default", "a", 0)}, &capstanv1.ReplicaSet{Metadata: meta("default", "b", 0)}},
			want: `
replicaset/a
replicaset/b
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			tt.opts.Now = func() time.Time { return now }
			p := New(&out, resource.MustLookup(tt.kind), tt.opts)
			if err := p.PrintList(tt.objs); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(strings.TrimPrefix(tt.want, "\n"), out.String()); diff != "" {
				t.Errorf("table (-want +got):\n%s", diff)
			}
		})
	}
}

func TestManifests(t *testing.T) {
	cm := &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "c", Namespace: "default", ResourceVersion: 7}, Data: map[string]string{"k": "v"}}
	kind := resource.MustLookup("cm")
	tests := []struct {
		name  string
		opts  Options
		print func(p *Printer) error
		want  string
	}{
		{
			name:  "one object as YAML",
			opts:  Options{Format: YAML},
			print: func(p *Printer) error { return p.PrintObject(cm) },
			want: `apiVersion: capstan.dev/v1
data:
  k: v
kind: ConfigMap
metadata:
  name: c
  namespace: default
  resourceVersion: 7
`,
		},
		{
			name:  "a list as YAML",
			opts:  Options{Format: YAML},
			print: func(p *Printer) error { return p.PrintList([]resource.Object{cm}) },
			want: `apiVersion: capstan.dev/v1
items:
- apiVersion: capstan.dev/v1
  data:
    k: v
  kind: ConfigMap
  metadata:
    name: c
    namespace: default
    resourceVersion: 7
kind: List
`,
		},
		{
			name:  "one object as JSON",
			opts:  Options{Format: JSON},
			print: func(p *Printer) error { return p.PrintObject(cm) },
			want: `{
    "apiVersion": "capstan.dev/v1",
    "data": {
        "k": "v"
    },
    "kind": "ConfigMap",
    "metadata": {
        "name": "c",
        "namespace": "default",
        "resourceVersion": 7
    }
}
`,
		},
		{
			name: "watch events as YAML documents",
			opts: Options{Format: YAML},
			print: func(p *Printer) error {
				if err := p.PrintEvent(capstanv1.WatchEventType_WATCH_EVENT_TYPE_ADDED, cm); err != nil {
					return err
				}
				return p.PrintEvent(capstanv1.WatchEventType_WATCH_EVENT_TYPE_DELETED, &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "c"}})
			},
			want: `apiVersion: capstan.dev/v1
data:
  k: v
kind: ConfigMap
metadata:
  name: c
  namespace: default
  resourceVersion: 7
---
apiVersion: capstan.dev/v1
kind: ConfigMap
metadata:
  name: c
`,
		},
		{
			name: "watch events with their types",
			opts: Options{Format: JSON, WatchEvents: true},
			print: func(p *Printer) error {
				return p.PrintEvent(capstanv1.WatchEventType_WATCH_EVENT_TYPE_MODIFIED, &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "c"}})
			},
			want: `{
    "object": {
        "apiVersion": "capstan.dev/v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "c"
        }
    },
    "type": "MODIFIED"
}
`,
		},
		{
			// Rows flushed one by one stay in the columns of the rows
			// before them; a wider cell (DELETED) widens its column.
			name: "watch rows with an EVENT column",
			opts: Options{WatchEvents: true},
			print: func(p *Printer) error {
				if err := p.PrintEvent(capstanv1.WatchEventType_WATCH_EVENT_TYPE_ADDED, cm); err != nil {
					return err
				}
				if err := p.Flush(); err != nil {
					return err
				}
				if err := p.PrintEvent(capstanv1.WatchEventType_WATCH_EVENT_TYPE_DELETED, cm); err != nil {
					return err
				}
				return p.Flush()
			},
			want: `EVENT   NAME   DATA   AGE
ADDED   c      1      <unknown>
DELETED   c      1      <unknown>
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			tt.opts.Now = func() time.Time { return now }
			if err := tt.print(New(&out, kind, tt.opts)); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, out.String()); diff != "" {
				t.Errorf("output (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseFormat(t *testing.T) {
	for _, ok := range []string{"", "wide", "yaml", "JSON", "name"} {
		if _, err := ParseFormat(ok); err != nil {
			t.Errorf("ParseFormat(%q): %v", ok, err)
		}
	}
	_, err := ParseFormat("xml")
	if err == nil || !strings.Contains(err.Error(), `output format "xml", allowed formats are: json,name,wide,yaml`) {
		t.Errorf("ParseFormat(xml) error = %v", err)
	}
}

func TestClusterStatus(t *testing.T) {
	st := &capstanv1.GetClusterStatusResponse{
		Self: &capstanv1.ApiServer{Name: "master-2", Address: "127.0.0.1:6442", StartTime: ago(5 * time.Minute), Version: "v0.1.0", EtcdMember: "m2"},
		ApiServers: []*capstanv1.ApiServer{
			{Name: "master-1", Address: "127.0.0.1:6441", StartTime: ago(6 * time.Minute), Version: "v0.1.0", EtcdMember: "m1"},
			{Name: "master-2", Address: "127.0.0.1:6442", StartTime: ago(5 * time.Minute), Version: "v0.1.0", EtcdMember: "m2"},
		},
		EtcdMembers: []*capstanv1.EtcdMember{
			{Name: "m1", Id: "8e9e05c52164694d", RaftTerm: 3, RaftIndex: 1234, DbSize: 20480, Healthy: true, ClientUrls: []string{"http://127.0.0.1:2379"}},
			{Name: "m2", Id: "91bc3c398fb3c146", Leader: true, RaftTerm: 3, RaftIndex: 1234, DbSize: 3 << 20, Healthy: true, ClientUrls: []string{"http://127.0.0.1:22379"}},
			{Name: "m3", Id: "fd422379fda50e48", DbSize: 0, Error: "context deadline exceeded", ClientUrls: []string{"http://127.0.0.1:32379"}},
		},
		Quorum:   true,
		Revision: 1234,
		Leases: []*capstanv1.ComponentLease{
			// A lease known only from its standbys comes after the held
			// ones from the server; the table sorts by name.
			{Name: "scheduler", Namespace: "capstan-system", Standbys: []string{"master-3"}},
			{Name: "controller-manager", Namespace: "capstan-system", HolderIdentity: "master-1", Epoch: 1001, RenewTime: ago(time.Second), LeaseDurationSeconds: 2, Standbys: []string{"master-3", "master-2"}, SessionReplica: "master-2"},
			// A holder that keeps no session.
			{Name: "quiet", Namespace: "capstan-system", HolderIdentity: "master-2", Epoch: 7, RenewTime: ago(3 * time.Second), LeaseDurationSeconds: 15},
		},
	}
	var out bytes.Buffer
	if err := ClusterStatus(&out, st, now); err != nil {
		t.Fatal(err)
	}
	want := `API SERVERS
ANSWERED   NAME       ADDRESS          AGE   VERSION   ETCD-MEMBER
           master-1   127.0.0.1:6441   6m    v0.1.0    m1
*          master-2   127.0.0.1:6442   5m    v0.1.0    m2

ETCD MEMBERS
NAME   ID                 LEADER   TERM   INDEX   DB-SIZE    HEALTHY   CLIENT-URLS
m1     8e9e05c52164694d            3      1234    20.0 KiB   yes       http://127.0.0.1:2379
m2     91bc3c398fb3c146   *        3      1234    3.0 MiB    yes       http://127.0.0.1:22379
m3     fd422379fda50e48            0      0       0 B        NO        http://127.0.0.1:32379

QUORUM: yes   REVISION: 1234

LEASES
LEASE                HOLDER     EPOCH   SESSION    RENEWED   DURATION   STANDBYS
controller-manager   master-1   1001    master-2   1s ago    2s         master-2,master-3
quiet                master-2   7       <none>     3s ago    15s        <none>
scheduler            <nobody>   -       -          -         -          master-3
etcd member m3: context deadline exceeded
`
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("cluster status (-want +got):\n%s", diff)
	}
}

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}
