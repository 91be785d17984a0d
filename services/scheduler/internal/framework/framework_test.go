package framework_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/scheduler/internal/framework"
)

// nodeSpec builds a Node: ready, 4 cpu and 8Gi unless changed.
type nodeSpec struct {
	name          string
	notReady      bool
	noCondition   bool
	unschedulable bool
	cpu, memory   string
	maxPods       string
	labels        map[string]string
	taints        []*capstanv1.Taint
}

func makeNode(t testing.TB, s nodeSpec) *framework.NodeInfo {
	t.Helper()
	if s.name == "" {
		s.name = "node"
	}
	if s.cpu == "" {
		s.cpu = "4"
	}
	if s.memory == "" {
		s.memory = "8Gi"
	}
	status := wellknown.ConditionTrue
	if s.notReady {
		status = wellknown.ConditionFalse
	}
	node := &capstanv1.Node{
		Metadata: &capstanv1.ObjectMeta{Name: s.name, Labels: s.labels},
		Spec:     &capstanv1.NodeSpec{Unschedulable: s.unschedulable, Taints: s.taints},
		Status: &capstanv1.NodeStatus{
			Allocatable: map[string]string{"cpu": s.cpu, "memory": s.memory},
		},
	}
	if s.maxPods != "" {
		node.Status.Allocatable["pods"] = s.maxPods
	}
	if !s.noCondition {
		node.Status.Conditions = []*capstanv1.Condition{{Type: wellknown.NodeReady, Status: status}}
	}
	info := framework.NewNodeInfo(s.name)
	if err := info.SetNode(node); err != nil {
		t.Fatalf("SetNode: %v", err)
	}
	return info
}

// podSpec builds a Pod with one container.
type podSpec struct {
	name         string
	cpu, memory  string
	hostPort     int32
	protocol     string
	selector     map[string]string
	tolerations  []*capstanv1.Toleration
	owner        string
	extraPodCPUs []string // more containers, each requesting this cpu
}

func makePod(t testing.TB, s podSpec) *framework.PodInfo {
	t.Helper()
	if s.name == "" {
		s.name = "pod"
	}
	requests := map[string]string{}
	if s.cpu != "" {
		requests["cpu"] = s.cpu
	}
	if s.memory != "" {
		requests["memory"] = s.memory
	}
	c := &capstanv1.Container{Name: "main", Command: []string{"/bin/true"}, Resources: &capstanv1.ResourceRequirements{Requests: requests}}
	if s.hostPort != 0 {
		c.Ports = []*capstanv1.ContainerPort{{ContainerPort: 80, HostPort: s.hostPort, Protocol: s.protocol}}
	}
	pod := &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Namespace: "ns", Name: s.name},
		Spec:     &capstanv1.PodSpec{Containers: []*capstanv1.Container{c}, NodeSelector: s.selector, Tolerations: s.tolerations},
	}
	for i, cpu := range s.extraPodCPUs {
		pod.Spec.Containers = append(pod.Spec.Containers, &capstanv1.Container{
			Name: fmt.Sprintf("extra-%d", i), Command: []string{"/bin/true"},
			Resources: &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": cpu}},
		})
	}
	if s.owner != "" {
		pod.Metadata.OwnerReferences = []*capstanv1.OwnerReference{{Kind: "ReplicaSet", Name: s.owner, Uid: "uid-" + s.owner, Controller: true}}
	}
	info, err := framework.NewPodInfo(pod)
	if err != nil {
		t.Fatalf("NewPodInfo: %v", err)
	}
	return info
}

func taint(key, value, effect string) *capstanv1.Taint {
	return &capstanv1.Taint{Key: key, Value: value, Effect: effect}
}

func TestNewPodInfo(t *testing.T) {
	p := makePod(t, podSpec{cpu: "500m", memory: "64Mi", extraPodCPUs: []string{"1", "250m"}, hostPort: 8080, owner: "web"})
	if want := (framework.Resources{MilliCPU: 1750, Memory: 64 << 20}); p.Requests != want {
		t.Errorf("Requests = %+v, want %+v", p.Requests, want)
	}
	if want := []framework.HostPort{{Protocol: "TCP", Port: 8080}}; !slices.Equal(p.HostPorts, want) {
		t.Errorf("HostPorts = %v, want %v", p.HostPorts, want)
	}
	if p.Owner != "uid-web" || p.Key != "ns/pod" {
		t.Errorf("Owner, Key = %q, %q; want uid-web, ns/pod", p.Owner, p.Key)
	}

	bad := &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Name: "bad"},
		Spec: &capstanv1.PodSpec{Containers: []*capstanv1.Container{{
			Resources: &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": "lots", "memory": "1Gi"}},
		}}},
	}
	info, err := framework.NewPodInfo(bad)
	if err == nil {
		t.Fatal("NewPodInfo with cpu \"lots\": no error")
	}
	if info.Key != "default/bad" || info.Requests != (framework.Resources{Memory: 1 << 30}) {
		t.Errorf("bad pod info = %q %+v; want default/bad with only 1Gi memory", info.Key, info.Requests)
	}
}

func TestFilters(t *testing.T) {
	occupied := func(n *framework.NodeInfo, pods ...*framework.PodInfo) *framework.NodeInfo {
		for _, p := range pods {
			n.AddPod(p)
		}
		return n
	}
	tests := []struct {
		name string
		pod  podSpec
		node func(t *testing.T) *framework.NodeInfo
		want []string // nil: the node fits
	}{
		{"ready node fits", podSpec{cpu: "1"}, func(t *testing.T) *framework.NodeInfo { return makeNode(t, nodeSpec{}) }, nil},
		{"not ready", podSpec{}, func(t *testing.T) *framework.NodeInfo { return makeNode(t, nodeSpec{notReady: true}) },
			[]string{framework.ReasonNotReady}},
		{"no Ready condition", podSpec{}, func(t *testing.T) *framework.NodeInfo { return makeNode(t, nodeSpec{noCondition: true}) },
			[]string{framework.ReasonNotReady}},
		{"cordoned", podSpec{}, func(t *testing.T) *framework.NodeInfo { return makeNode(t, nodeSpec{unschedulable: true}) },
			[]string{framework.ReasonUnschedulable}},
		{"selector matches", podSpec{selector: map[string]string{"disk": "ssd"}},
			func(t *testing.T) *framework.NodeInfo {
				return makeNode(t, nodeSpec{labels: map[string]string{"disk": "ssd", "zone": "a"}})
			}, nil},
		{"selector value differs", podSpec{selector: map[string]string{"disk": "ssd"}},
			func(t *testing.T) *framework.NodeInfo {
				return makeNode(t, nodeSpec{labels: map[string]string{"disk": "hdd"}})
			},
			[]string{framework.ReasonNodeSelector}},
		{"selector label missing", podSpec{selector: map[string]string{"disk": "ssd"}},
			func(t *testing.T) *framework.NodeInfo { return makeNode(t, nodeSpec{}) },
			[]string{framework.ReasonNodeSelector}},
		{"NoSchedule taint not tolerated", podSpec{},
			func(t *testing.T) *framework.NodeInfo {
				return makeNode(t, nodeSpec{taints: []*capstanv1.Taint{taint("dedicated", "db", wellknown.TaintNoSchedule)}})
			}, []string{"node(s) had untolerated taint {dedicated: db}"}},
		{"NoExecute taint not tolerated", podSpec{},
			func(t *testing.T) *framework.NodeInfo {
				return makeNode(t, nodeSpec{taints: []*capstanv1.Taint{taint(wellknown.TaintNodeUnreachable, "", wellknown.TaintNoExecute)}})
			}, []string{"node(s) had untolerated taint {node.capstan.dev/unreachable: }"}},
		{"PreferNoSchedule taint does not filter", podSpec{},
			func(t *testing.T) *framework.NodeInfo {
				return makeNode(t, nodeSpec{taints: []*capstanv1.Taint{taint("spot", "yes", wellknown.TaintPreferNoSchedule)}})
			}, nil},
		{"taint tolerated with Equal", podSpec{tolerations: []*capstanv1.Toleration{{Key: "dedicated", Value: "db", Effect: wellknown.TaintNoSchedule}}},
			func(t *testing.T) *framework.NodeInfo {
				return makeNode(t, nodeSpec{taints: []*capstanv1.Taint{taint("dedicated", "db", wellknown.TaintNoSchedule)}})
			}, nil},
		{"toleration of another value", podSpec{tolerations: []*capstanv1.Toleration{{Key: "dedicated", Value: "web"}}},
			func(t *testing.T) *framework.NodeInfo {
				return makeNode(t, nodeSpec{taints: []*capstanv1.Taint{taint("dedicated", "db", wellknown.TaintNoSchedule)}})
			}, []string{"node(s) had untolerated taint {dedicated: db}"}},
		{"toleration of another effect", podSpec{tolerations: []*capstanv1.Toleration{{Key: "dedicated", Operator: "Exists", Effect: wellknown.TaintNoExecute}}},
			func(t *testing.T) *framework.NodeInfo {
				return makeNode(t, nodeSpec{taints: []*capstanv1.Taint{taint("dedicated", "db", wellknown.TaintNoSchedule)}})
			}, []string{"node(s) had untolerated taint {dedicated: db}"}},
		{"empty key Exists tolerates everything", podSpec{tolerations: []*capstanv1.Toleration{{Operator: "Exists"}}},
			func(t *testing.T) *framework.NodeInfo {
				return makeNode(t, nodeSpec{taints: []*capstanv1.Taint{
					taint("a", "1", wellknown.TaintNoSchedule), taint("b", "2", wellknown.TaintNoExecute),
				}})
			}, nil},
		{"host port taken", podSpec{hostPort: 8080},
			func(t *testing.T) *framework.NodeInfo {
				return occupied(makeNode(t, nodeSpec{}), makePod(t, podSpec{name: "other", hostPort: 8080}))
			}, []string{framework.ReasonHostPorts}},
		{"same host port, other protocol", podSpec{hostPort: 8080, protocol: "UDP"},
			func(t *testing.T) *framework.NodeInfo {
				return occupied(makeNode(t, nodeSpec{}), makePod(t, podSpec{name: "other", hostPort: 8080}))
			}, nil},
		{"host port freed", podSpec{hostPort: 8080},
			func(t *testing.T) *framework.NodeInfo {
				n := occupied(makeNode(t, nodeSpec{}), makePod(t, podSpec{name: "other", hostPort: 8080}))
				n.RemovePod("ns/other")
				return n
			}, nil},
		{"cpu exactly fits", podSpec{cpu: "1"},
			func(t *testing.T) *framework.NodeInfo {
				return occupied(makeNode(t, nodeSpec{cpu: "4"}), makePod(t, podSpec{name: "a", cpu: "3"}))
			}, nil},
		{"insufficient cpu", podSpec{cpu: "1001m"},
			func(t *testing.T) *framework.NodeInfo {
				return occupied(makeNode(t, nodeSpec{cpu: "4"}), makePod(t, podSpec{name: "a", cpu: "3"}))
			}, []string{framework.ReasonInsufficientCPU}},
		{"insufficient cpu and memory", podSpec{cpu: "5", memory: "9Gi"},
			func(t *testing.T) *framework.NodeInfo { return makeNode(t, nodeSpec{}) },
			[]string{framework.ReasonInsufficientCPU, framework.ReasonInsufficientMemory}},
		{"no request fits a full node", podSpec{},
			func(t *testing.T) *framework.NodeInfo {
				return occupied(makeNode(t, nodeSpec{cpu: "1", memory: "1Gi"}), makePod(t, podSpec{name: "a", cpu: "1", memory: "1Gi"}))
			}, nil},
		{"node without cpu", podSpec{cpu: "1m"},
			func(t *testing.T) *framework.NodeInfo { return makeNode(t, nodeSpec{cpu: "0"}) },
			[]string{framework.ReasonInsufficientCPU}},
		{"pod cap reached", podSpec{},
			func(t *testing.T) *framework.NodeInfo {
				return occupied(makeNode(t, nodeSpec{maxPods: "1"}), makePod(t, podSpec{name: "a"}))
			}, []string{framework.ReasonTooManyPods}},
		{"first failing filter only", podSpec{cpu: "100"},
			func(t *testing.T) *framework.NodeInfo {
				return makeNode(t, nodeSpec{notReady: true, unschedulable: true})
			},
			[]string{framework.ReasonNotReady}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := framework.FilterNode(makePod(t, tt.pod), tt.node(t), nil)
			if !slices.Equal(got, tt.want) {
				t.Errorf("FilterNode = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestScores(t *testing.T) {
	t.Run("LeastAllocated", func(t *testing.T) {
		tests := []struct {
			name     string
			node     nodeSpec
			placed   podSpec
			pod      podSpec
			want     int64
			wantNote string
		}{
			{"empty node, empty pod", nodeSpec{}, podSpec{}, podSpec{}, 100, ""},
			{"pod takes half the cpu", nodeSpec{cpu: "4", memory: "8Gi"}, podSpec{}, podSpec{cpu: "2"}, 75, "(50+100)/2"},
			{"placed and pod", nodeSpec{cpu: "4", memory: "8Gi"}, podSpec{name: "a", cpu: "1", memory: "4Gi"}, podSpec{cpu: "1", memory: "2Gi"}, 37, "(50+25)/2"},
			{"full", nodeSpec{cpu: "1", memory: "1Gi"}, podSpec{}, podSpec{cpu: "1", memory: "1Gi"}, 0, ""},
			{"no allocatable memory", nodeSpec{cpu: "4", memory: "0"}, podSpec{}, podSpec{}, 50, "memory scores 0"},
			{"huge memory does not overflow", nodeSpec{cpu: "4", memory: "1000Ti"}, podSpec{}, podSpec{memory: "500Ti"}, 75, ""},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				n := makeNode(t, tt.node)
				if tt.placed.name != "" {
					n.AddPod(makePod(t, tt.placed))
				}
				if got := framework.LeastAllocated(makePod(t, tt.pod), n); got != tt.want {
					t.Errorf("LeastAllocated = %d, want %d %s", got, tt.want, tt.wantNote)
				}
			})
		}
	})
	t.Run("OwnerSpread", func(t *testing.T) {
		tests := []struct{ count, most, want int }{{0, 0, 100}, {0, 2, 100}, {1, 2, 50}, {2, 2, 0}, {1, 3, 66}}
		for _, tt := range tests {
			if got := framework.OwnerSpread(tt.count, tt.most); got != int64(tt.want) {
				t.Errorf("OwnerSpread(%d, %d) = %d, want %d", tt.count, tt.most, got, tt.want)
			}
		}
	})
	t.Run("PreferNoSchedule", func(t *testing.T) {
		n := makeNode(t, nodeSpec{taints: []*capstanv1.Taint{
			taint("spot", "yes", wellknown.TaintPreferNoSchedule),
			taint("old", "yes", wellknown.TaintPreferNoSchedule),
			taint("db", "yes", wellknown.TaintNoSchedule),
		}})
		tests := []struct {
			name        string
			tolerations []*capstanv1.Toleration
			want        int
		}{
			{"none tolerated", nil, 2},
			{"one tolerated", []*capstanv1.Toleration{{Key: "spot", Operator: "Exists"}}, 1},
			{"all tolerated", []*capstanv1.Toleration{{Operator: "Exists", Effect: wellknown.TaintPreferNoSchedule}}, 0},
		}
		for _, tt := range tests {
			if got := framework.IntolerablePreferNoSchedule(makePod(t, podSpec{tolerations: tt.tolerations}), n); got != tt.want {
				t.Errorf("%s: IntolerablePreferNoSchedule = %d, want %d", tt.name, got, tt.want)
			}
		}
		if got := framework.PreferNoTaint(1, 2); got != 50 {
			t.Errorf("PreferNoTaint(1, 2) = %d, want 50", got)
		}
	})
}

func TestSchedule(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name  string
		nodes []nodeSpec
		pod   podSpec
		want  []string // acceptable nodes; nil: a FitError
		msg   string   // the FitError's message
	}{
		{"only the ready node", []nodeSpec{{name: "a", notReady: true}, {name: "b"}}, podSpec{}, []string{"b"}, ""},
		{"the emptier node", []nodeSpec{{name: "a", cpu: "2"}, {name: "b", cpu: "8"}}, podSpec{cpu: "1"}, []string{"b"}, ""},
		{"avoids PreferNoSchedule", []nodeSpec{
			{name: "a", taints: []*capstanv1.Taint{taint("spot", "", wellknown.TaintPreferNoSchedule)}, cpu: "64"},
			{name: "b"},
		}, podSpec{}, []string{"b"}, ""},
		{"selector and cpu", []nodeSpec{
			{name: "a", labels: map[string]string{"disk": "hdd"}},
			{name: "b", labels: map[string]string{"disk": "ssd"}, cpu: "1"},
			{name: "c", labels: map[string]string{"disk": "ssd"}, cpu: "1"},
		}, podSpec{cpu: "2", selector: map[string]string{"disk": "ssd"}}, nil,
			"0/3 nodes are available: 1 node(s) didn't match node selector, 2 Insufficient cpu."},
		{"no nodes", nil, podSpec{}, nil, "0/0 nodes are available."},
		{"cpu and memory counted apart", []nodeSpec{{name: "a", cpu: "1"}, {name: "b", memory: "1Gi", cpu: "1"}},
			podSpec{cpu: "2", memory: "2Gi"}, nil,
			"0/2 nodes are available: 1 Insufficient memory, 2 Insufficient cpu."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var nodes []*framework.NodeInfo
			for _, s := range tt.nodes {
				nodes = append(nodes, makeNode(t, s))
			}
			nodes = append(nodes, framework.NewNodeInfo("known-only-by-its-pods"))
			d, err := framework.Schedule(makePod(t, tt.pod), nodes, rng)
			if tt.want == nil {
				var fit *framework.FitError
				if !errors.As(err, &fit) {
					t.Fatalf("Schedule = %+v, %v; want a FitError", d, err)
				}
				if err.Error() != tt.msg {
					t.Errorf("message = %q, want %q", err.Error(), tt.msg)
				}
				return
			}
			if err != nil || !slices.Contains(tt.want, d.Node) {
				t.Errorf("Schedule = %+v, %v; want one of %q", d, err, tt.want)
			}
		})
	}
}

// TestScheduleSpreadsOwner places 6 pods of one owner, one at a time, on 3
// equal nodes, as the scheduler does with its assume cache.
func TestScheduleSpreadsOwner(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, seed))
		nodes := []*framework.NodeInfo{makeNode(t, nodeSpec{name: "a"}), makeNode(t, nodeSpec{name: "b"}), makeNode(t, nodeSpec{name: "c"})}
		for i := range 6 {
			pod := makePod(t, podSpec{name: fmt.Sprintf("web-%d", i), cpu: "100m", owner: "web"})
			d, err := framework.Schedule(pod, nodes, rng)
			if err != nil {
				t.Fatalf("Schedule: %v", err)
			}
			for _, n := range nodes {
				if n.Name == d.Node {
					n.AddPod(pod)
				}
			}
		}
		for _, n := range nodes {
			if n.NumPods() != 2 {
				t.Fatalf("seed %d: node %s has %d pods, want 2 on each", seed, n.Name, n.NumPods())
			}
		}
	}
}

// TestScheduleBreaksTiesRandomly: equal nodes are all chosen sometimes.
func TestScheduleBreaksTiesRandomly(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	nodes := []*framework.NodeInfo{makeNode(t, nodeSpec{name: "a"}), makeNode(t, nodeSpec{name: "b"}), makeNode(t, nodeSpec{name: "c"})}
	pod := makePod(t, podSpec{})
	seen := map[string]bool{}
	for range 200 {
		d, err := framework.Schedule(pod, nodes, rng)
		if err != nil {
			t.Fatal(err)
		}
		seen[d.Node] = true
	}
	if len(seen) != 3 {
		t.Errorf("200 decisions among 3 equal nodes chose only %v", seen)
	}
}

// BenchmarkSchedule1000Nodes measures one decision over 1,000 nodes that each
// run 30 pods, for a pod with requests, an owner, a host port and a toleration.
func BenchmarkSchedule1000Nodes(b *testing.B) {
	rng := rand.New(rand.NewPCG(5, 6))
	nodes := make([]*framework.NodeInfo, 1000)
	for i := range nodes {
		s := nodeSpec{name: fmt.Sprintf("node-%04d", i), cpu: "32", memory: "128Gi", maxPods: "110",
			labels: map[string]string{"zone": fmt.Sprintf("z%d", i%3), wellknown.LabelHostname: fmt.Sprintf("node-%04d", i)}}
		switch i % 10 {
		case 0:
			s.taints = []*capstanv1.Taint{taint("spot", "", wellknown.TaintPreferNoSchedule)}
		case 1:
			s.taints = []*capstanv1.Taint{taint("dedicated", "db", wellknown.TaintNoSchedule)}
		case 2:
			s.unschedulable = i%20 == 2
		}
		nodes[i] = makeNode(b, s)
		for j := range 30 {
			nodes[i].AddPod(makePod(b, podSpec{name: fmt.Sprintf("p-%d-%d", i, j), cpu: "500m", memory: "1Gi", owner: fmt.Sprintf("rs-%d", j%7)}))
		}
	}
	pod := makePod(b, podSpec{name: "new", cpu: "250m", memory: "512Mi", owner: "rs-3", hostPort: 9000,
		tolerations: []*capstanv1.Toleration{{Key: "spot", Operator: "Exists"}}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := framework.Schedule(pod, nodes, rng); err != nil {
			b.Fatal(err)
		}
	}
}
