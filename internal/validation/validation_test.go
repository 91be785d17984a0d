package validation

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
)

// testCase is one rule, valid or broken: wantField is the field the error
// must name, or "" if obj is valid.
type testCase struct {
	name      string
	obj       resource.Object
	wantField string
}

// checkField fails unless err is nil (wantField "") or an INVALID_ARGUMENT
// naming wantField.
func checkField(t *testing.T, err error, wantField string) {
	t.Helper()
	if wantField == "" {
		if err != nil {
			t.Fatalf("want valid, got %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("got no error, want INVALID_ARGUMENT on %q", wantField)
	}
	if got := apierrors.Code(err); got != codes.InvalidArgument {
		t.Fatalf("code = %v, want InvalidArgument (err: %v)", got, err)
	}
	if got := apierrors.Field(err); got != wantField {
		t.Fatalf("field = %q, want %q (err: %v)", got, wantField, err)
	}
}

func runCases(t *testing.T, kind, root string, cases []testCase) {
	t.Helper()
	k := resource.MustLookup(kind)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Object(k, tc.obj, root)
			checkField(t, err, tc.wantField)
			if err != nil {
				t.Logf("%v", err)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func validPodSpec() *capstanv1.PodSpec {
	return &capstanv1.PodSpec{
		Containers: []*capstanv1.Container{{
			Name:    "main",
			Command: []string{"/bin/sleep", "3600"},
			Env:     []*capstanv1.EnvVar{{Name: "MODE", Value: "any value at all"}},
			Ports:   []*capstanv1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: "TCP"}},
			Resources: &capstanv1.ResourceRequirements{
				Requests: map[string]string{"cpu": "100m", "memory": "64Mi"},
				Limits:   map[string]string{"cpu": "1", "memory": "128Mi"},
			},
			LivenessProbe:  &capstanv1.Probe{HttpGet: &capstanv1.HttpGetAction{Path: "/healthz", Port: 8080}},
			ReadinessProbe: &capstanv1.Probe{TcpSocket: &capstanv1.TcpSocketAction{Port: 8080}},
		}},
		RestartPolicy: "Always",
		NodeSelector:  map[string]string{"capstan.dev/zone": "a"},
		Tolerations:   []*capstanv1.Toleration{{Key: "dedicated", Operator: "Equal", Value: "web", Effect: "NoSchedule"}},
	}
}

func pod(mutate func(*capstanv1.Pod)) resource.Object {
	p := &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{
			Name:        "web-1",
			Namespace:   "default",
			Labels:      map[string]string{"app": "web"},
			Annotations: map[string]string{"capstan.dev/note": "free text, even with spaces!"},
		},
		Spec: validPodSpec(),
	}
	if mutate != nil {
		mutate(p)
	}
	return p
}

// container mutates the first container of a valid pod.
func container(mutate func(*capstanv1.Container)) resource.Object {
	return pod(func(p *capstanv1.Pod) { mutate(p.Spec.Containers[0]) })
}

func TestObjectMetadata(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	name253 := strings.Join([]string{label63, label63, label63, strings.Repeat("b", 61)}, ".")
	runCases(t, "Pod", "pod", []testCase{
		{"valid pod", pod(nil), ""},
		{"missing object", (*capstanv1.Pod)(nil), "pod"},
		{"missing metadata", pod(func(p *capstanv1.Pod) { p.Metadata = nil }), "pod.metadata.name"},
		{"name required", pod(func(p *capstanv1.Pod) { p.Metadata.Name = "" }), "pod.metadata.name"},
		{"name upper case", pod(func(p *capstanv1.Pod) { p.Metadata.Name = "Web" }), "pod.metadata.name"},
		{"name with underscore", pod(func(p *capstanv1.Pod) { p.Metadata.Name = "web_1" }), "pod.metadata.name"},
		{"name with dots", pod(func(p *capstanv1.Pod) { p.Metadata.Name = "web.v1" }), ""},
		{"name of 253 characters", pod(func(p *capstanv1.Pod) { p.Metadata.Name = name253 }), ""},
		{"name of 254 characters", pod(func(p *capstanv1.Pod) { p.Metadata.Name = name253 + "b" }), "pod.metadata.name"},
		{"namespace empty", pod(func(p *capstanv1.Pod) { p.Metadata.Namespace = "" }), ""},
		{"namespace upper case", pod(func(p *capstanv1.Pod) { p.Metadata.Namespace = "Prod" }), "pod.metadata.namespace"},
		{"namespace with dots", pod(func(p *capstanv1.Pod) { p.Metadata.Namespace = "a.b" }), "pod.metadata.namespace"},
		{"namespace of 64 characters", pod(func(p *capstanv1.Pod) { p.Metadata.Namespace = label63 + "a" }), "pod.metadata.namespace"},
		{"namespace all", pod(func(p *capstanv1.Pod) { p.Metadata.Namespace = "*" }), "pod.metadata.namespace"},
		{"label prefixed key", pod(func(p *capstanv1.Pod) { p.Metadata.Labels["capstan.dev/role"] = "x" }), ""},
		{"label empty value", pod(func(p *capstanv1.Pod) { p.Metadata.Labels["canary"] = "" }), ""},
		{"label bad key", pod(func(p *capstanv1.Pod) { p.Metadata.Labels["bad key"] = "x" }), "pod.metadata.labels[bad key]"},
		{"label bad prefix", pod(func(p *capstanv1.Pod) { p.Metadata.Labels["Capstan.dev/role"] = "x" }), "pod.metadata.labels[Capstan.dev/role]"},
		{"label bad value", pod(func(p *capstanv1.Pod) { p.Metadata.Labels["app"] = "web server" }), "pod.metadata.labels[app]"},
		{"label value too long", pod(func(p *capstanv1.Pod) { p.Metadata.Labels["app"] = label63 + "a" }), "pod.metadata.labels[app]"},
		{"first bad label in key order", pod(func(p *capstanv1.Pod) { p.Metadata.Labels = map[string]string{"z z": "", "a a": ""} }), "pod.metadata.labels[a a]"},
		{"annotation bad key", pod(func(p *capstanv1.Pod) { p.Metadata.Annotations["bad key"] = "x" }), "pod.metadata.annotations[bad key]"},
		{"annotations at the size limit", pod(func(p *capstanv1.Pod) {
			p.Metadata.Annotations = map[string]string{"k": strings.Repeat("x", TotalAnnotationSizeLimit-1)}
		}), ""},
		{"annotations over the size limit", pod(func(p *capstanv1.Pod) {
			p.Metadata.Annotations = map[string]string{"k": strings.Repeat("x", TotalAnnotationSizeLimit)}
		}), "pod.metadata.annotations"},
		{"owner references valid", pod(func(p *capstanv1.Pod) {
			p.Metadata.OwnerReferences = []*capstanv1.OwnerReference{
				{Kind: "ReplicaSet", Name: "web", Uid: "u1", Controller: true},
				{Kind: "ConfigMap", Name: "cfg", Uid: "u2"},
			}
		}), ""},
		{"owner reference kind required", pod(func(p *capstanv1.Pod) {
			p.Metadata.OwnerReferences = []*capstanv1.OwnerReference{{Name: "web", Uid: "u1"}}
		}), "pod.metadata.owner_references[0].kind"},
		{"owner reference name required", pod(func(p *capstanv1.Pod) {
			p.Metadata.OwnerReferences = []*capstanv1.OwnerReference{{Kind: "ReplicaSet", Uid: "u1"}}
		}), "pod.metadata.owner_references[0].name"},
		{"owner reference uid required", pod(func(p *capstanv1.Pod) {
			p.Metadata.OwnerReferences = []*capstanv1.OwnerReference{{Kind: "ReplicaSet", Name: "web"}}
		}), "pod.metadata.owner_references[0].uid"},
		{"two controllers", pod(func(p *capstanv1.Pod) {
			p.Metadata.OwnerReferences = []*capstanv1.OwnerReference{
				{Kind: "ReplicaSet", Name: "a", Uid: "u1", Controller: true},
				{Kind: "ConfigMap", Name: "b", Uid: "u2"},
				{Kind: "ReplicaSet", Name: "c", Uid: "u3", Controller: true},
			}
		}), "pod.metadata.owner_references[2].controller"},
	})

	t.Run("empty root", func(t *testing.T) {
		err := Object(resource.MustLookup("Pod"), pod(func(p *capstanv1.Pod) { p.Metadata.Name = "" }), "")
		checkField(t, err, "metadata.name")
	})
	t.Run("cluster-scoped kind with a namespace", func(t *testing.T) {
		node := &capstanv1.Node{Metadata: &capstanv1.ObjectMeta{Name: "n1", Namespace: "default"}}
		checkField(t, Object(resource.MustLookup("Node"), node, "node"), "node.metadata.namespace")
	})
}

func TestPodSpec(t *testing.T) {
	runCases(t, "Pod", "pod", []testCase{
		{"missing spec", pod(func(p *capstanv1.Pod) { p.Spec = nil }), "pod.spec.containers"},
		{"no containers", pod(func(p *capstanv1.Pod) { p.Spec.Containers = nil }), "pod.spec.containers"},
		{"container name required", container(func(c *capstanv1.Container) { c.Name = "" }), "pod.spec.containers[0].name"},
		{"container name upper case", container(func(c *capstanv1.Container) { c.Name = "Main" }), "pod.spec.containers[0].name"},
		{"container name with a dot", container(func(c *capstanv1.Container) { c.Name = "main.1" }), "pod.spec.containers[0].name"},
		{"second container valid", pod(func(p *capstanv1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, &capstanv1.Container{Name: "sidecar", Command: []string{"proxy"}})
		}), ""},
		{"duplicate container name", pod(func(p *capstanv1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, &capstanv1.Container{Name: "main"})
		}), "pod.spec.containers[1].name"},
		{"command required", container(func(c *capstanv1.Container) { c.Command = nil }), "pod.spec.containers[0].command"},
		{"empty executable", container(func(c *capstanv1.Container) { c.Command = []string{"", "x"} }), "pod.spec.containers[0].command[0]"},
		{"env name required", container(func(c *capstanv1.Container) { c.Env[0].Name = "" }), "pod.spec.containers[0].env[0].name"},
		{"env name with a space", container(func(c *capstanv1.Container) { c.Env[0].Name = "MY VAR" }), "pod.spec.containers[0].env[0].name"},
		{"env name starts with a digit", container(func(c *capstanv1.Container) {
			c.Env = append(c.Env, &capstanv1.EnvVar{Name: "1X"})
		}), "pod.spec.containers[0].env[1].name"},
		{"env name with dots and dashes", container(func(c *capstanv1.Container) { c.Env[0].Name = "my.env-name" }), ""},
		{"container port 0", container(func(c *capstanv1.Container) { c.Ports[0].ContainerPort = 0 }), "pod.spec.containers[0].ports[0].container_port"},
		{"container port 65536", container(func(c *capstanv1.Container) { c.Ports[0].ContainerPort = 65536 }), "pod.spec.containers[0].ports[0].container_port"},
		{"container port 65535", container(func(c *capstanv1.Container) { c.Ports[0].ContainerPort = 65535 }), ""},
		{"host port negative", container(func(c *capstanv1.Container) { c.Ports[0].HostPort = -1 }), "pod.spec.containers[0].ports[0].host_port"},
		{"host port 65536", container(func(c *capstanv1.Container) { c.Ports[0].HostPort = 65536 }), "pod.spec.containers[0].ports[0].host_port"},
		{"host port set", container(func(c *capstanv1.Container) { c.Ports[0].HostPort = 80 }), ""},
		{"protocol UDP", container(func(c *capstanv1.Container) { c.Ports[0].Protocol = "UDP" }), ""},
		{"protocol empty", container(func(c *capstanv1.Container) { c.Ports[0].Protocol = "" }), ""},
		{"protocol SCTP", container(func(c *capstanv1.Container) { c.Ports[0].Protocol = "SCTP" }), "pod.spec.containers[0].ports[0].protocol"},
		{"protocol lower case", container(func(c *capstanv1.Container) { c.Ports[0].Protocol = "tcp" }), "pod.spec.containers[0].ports[0].protocol"},
		{"port name empty", container(func(c *capstanv1.Container) { c.Ports[0].Name = "" }), ""},
		{"port name upper case", container(func(c *capstanv1.Container) { c.Ports[0].Name = "HTTP" }), "pod.spec.containers[0].ports[0].name"},
		{"port name of 16 characters", container(func(c *capstanv1.Container) { c.Ports[0].Name = "abcdefghijklmnop" }), "pod.spec.containers[0].ports[0].name"},
		{"port name only digits", container(func(c *capstanv1.Container) { c.Ports[0].Name = "8080" }), "pod.spec.containers[0].ports[0].name"},
		{"duplicate host port in one container", container(func(c *capstanv1.Container) {
			c.Ports = []*capstanv1.ContainerPort{{ContainerPort: 80, HostPort: 8080}, {ContainerPort: 81, HostPort: 8080, Protocol: "TCP"}}
		}), "pod.spec.containers[0].ports[1].host_port"},
		{"duplicate host port across containers", pod(func(p *capstanv1.Pod) {
			p.Spec.Containers[0].Ports[0].HostPort = 9000
			p.Spec.Containers = append(p.Spec.Containers, &capstanv1.Container{
				Name: "other", Command: []string{"x"},
				Ports: []*capstanv1.ContainerPort{{ContainerPort: 9000, HostPort: 9000}},
			})
		}), "pod.spec.containers[1].ports[0].host_port"},
		{"same host port, other protocol", container(func(c *capstanv1.Container) {
			c.Ports = []*capstanv1.ContainerPort{{ContainerPort: 53, HostPort: 53}, {ContainerPort: 53, HostPort: 53, Protocol: "UDP"}}
		}), ""},
		{"container ports without host ports may repeat", container(func(c *capstanv1.Container) {
			c.Ports = []*capstanv1.ContainerPort{{ContainerPort: 80}, {ContainerPort: 80}}
		}), ""},
		{"quantity does not parse", container(func(c *capstanv1.Container) { c.Resources.Requests["cpu"] = "lots" }), "pod.spec.containers[0].resources.requests[cpu]"},
		{"quantity negative", container(func(c *capstanv1.Container) { c.Resources.Requests["memory"] = "-1Mi" }), "pod.spec.containers[0].resources.requests[memory]"},
		{"limit does not parse", container(func(c *capstanv1.Container) { c.Resources.Limits["memory"] = "1 GB" }), "pod.spec.containers[0].resources.limits[memory]"},
		{"quantity zero", container(func(c *capstanv1.Container) { c.Resources.Requests["cpu"] = "0" }), ""},
		{"qualified resource name", container(func(c *capstanv1.Container) { c.Resources.Requests["capstan.dev/gpu"] = "2" }), ""},
		{"bad resource name", container(func(c *capstanv1.Container) { c.Resources.Requests["gpu count"] = "2" }), "pod.spec.containers[0].resources.requests[gpu count]"},
		{"limit below request", container(func(c *capstanv1.Container) { c.Resources.Limits["cpu"] = "50m" }), "pod.spec.containers[0].resources.limits[cpu]"},
		{"limit equal to request, other notation", container(func(c *capstanv1.Container) { c.Resources.Limits["cpu"] = "0.1" }), ""},
		{"limit without request", container(func(c *capstanv1.Container) { delete(c.Resources.Requests, "cpu") }), ""},
		{"request without limit", container(func(c *capstanv1.Container) { delete(c.Resources.Limits, "cpu") }), ""},
		{"probe without handler", container(func(c *capstanv1.Container) { c.LivenessProbe = &capstanv1.Probe{PeriodSeconds: 5} }), "pod.spec.containers[0].liveness_probe"},
		{"probe with two handlers", container(func(c *capstanv1.Container) {
			c.ReadinessProbe.Exec = &capstanv1.ExecAction{Command: []string{"true"}}
		}), "pod.spec.containers[0].readiness_probe"},
		{"exec probe", container(func(c *capstanv1.Container) {
			c.LivenessProbe = &capstanv1.Probe{Exec: &capstanv1.ExecAction{Command: []string{"/bin/check"}}}
		}), ""},
		{"exec probe without command", container(func(c *capstanv1.Container) {
			c.LivenessProbe = &capstanv1.Probe{Exec: &capstanv1.ExecAction{}}
		}), "pod.spec.containers[0].liveness_probe.exec.command"},
		{"http probe port 0", container(func(c *capstanv1.Container) { c.LivenessProbe.HttpGet.Port = 0 }), "pod.spec.containers[0].liveness_probe.http_get.port"},
		{"tcp probe port 65536", container(func(c *capstanv1.Container) { c.ReadinessProbe.TcpSocket.Port = 65536 }), "pod.spec.containers[0].readiness_probe.tcp_socket.port"},
		{"probe timings zero", container(func(c *capstanv1.Container) { c.LivenessProbe.PeriodSeconds = 0 }), ""},
		{"probe timings positive", container(func(c *capstanv1.Container) {
			c.LivenessProbe.InitialDelaySeconds, c.LivenessProbe.PeriodSeconds, c.LivenessProbe.TimeoutSeconds = 1, 2, 3
			c.LivenessProbe.SuccessThreshold, c.LivenessProbe.FailureThreshold = 1, 5
		}), ""},
		{"initial delay negative", container(func(c *capstanv1.Container) { c.LivenessProbe.InitialDelaySeconds = -1 }), "pod.spec.containers[0].liveness_probe.initial_delay_seconds"},
		{"period negative", container(func(c *capstanv1.Container) { c.LivenessProbe.PeriodSeconds = -1 }), "pod.spec.containers[0].liveness_probe.period_seconds"},
		{"timeout negative", container(func(c *capstanv1.Container) { c.ReadinessProbe.TimeoutSeconds = -1 }), "pod.spec.containers[0].readiness_probe.timeout_seconds"},
		{"success threshold negative", container(func(c *capstanv1.Container) { c.ReadinessProbe.SuccessThreshold = -1 }), "pod.spec.containers[0].readiness_probe.success_threshold"},
		{"failure threshold negative", container(func(c *capstanv1.Container) { c.ReadinessProbe.FailureThreshold = -1 }), "pod.spec.containers[0].readiness_probe.failure_threshold"},
		{"restart policy empty", pod(func(p *capstanv1.Pod) { p.Spec.RestartPolicy = "" }), ""},
		{"restart policy OnFailure", pod(func(p *capstanv1.Pod) { p.Spec.RestartPolicy = "OnFailure" }), ""},
		{"restart policy Never", pod(func(p *capstanv1.Pod) { p.Spec.RestartPolicy = "Never" }), ""},
		{"restart policy unknown", pod(func(p *capstanv1.Pod) { p.Spec.RestartPolicy = "Sometimes" }), "pod.spec.restart_policy"},
		{"node name set", pod(func(p *capstanv1.Pod) { p.Spec.NodeName = "worker-1" }), ""},
		{"node name invalid", pod(func(p *capstanv1.Pod) { p.Spec.NodeName = "Worker_1" }), "pod.spec.node_name"},
		{"node selector bad key", pod(func(p *capstanv1.Pod) { p.Spec.NodeSelector["bad key"] = "x" }), "pod.spec.node_selector[bad key]"},
		{"node selector bad value", pod(func(p *capstanv1.Pod) { p.Spec.NodeSelector["zone"] = "a/b" }), "pod.spec.node_selector[zone]"},
		{"toleration of every taint", pod(func(p *capstanv1.Pod) {
			p.Spec.Tolerations = []*capstanv1.Toleration{{Operator: "Exists"}}
		}), ""},
		{"toleration Exists with key", pod(func(p *capstanv1.Pod) {
			p.Spec.Tolerations = []*capstanv1.Toleration{{Key: "capstan.dev/unreachable", Operator: "Exists", Effect: "NoExecute", TolerationSeconds: ptr(int64(300))}}
		}), ""},
		{"toleration default operator", pod(func(p *capstanv1.Pod) { p.Spec.Tolerations[0].Operator = "" }), ""},
		{"toleration bad key", pod(func(p *capstanv1.Pod) { p.Spec.Tolerations[0].Key = "bad key" }), "pod.spec.tolerations[0].key"},
		{"toleration unknown operator", pod(func(p *capstanv1.Pod) { p.Spec.Tolerations[0].Operator = "In" }), "pod.spec.tolerations[0].operator"},
		{"toleration empty key needs Exists", pod(func(p *capstanv1.Pod) {
			p.Spec.Tolerations = []*capstanv1.Toleration{{Operator: "Equal"}}
		}), "pod.spec.tolerations[0].operator"},
		{"toleration empty key, default operator", pod(func(p *capstanv1.Pod) {
			p.Spec.Tolerations = []*capstanv1.Toleration{{}}
		}), "pod.spec.tolerations[0].operator"},
		{"toleration Exists with value", pod(func(p *capstanv1.Pod) { p.Spec.Tolerations[0].Operator = "Exists" }), "pod.spec.tolerations[0].value"},
		{"toleration any effect", pod(func(p *capstanv1.Pod) { p.Spec.Tolerations[0].Effect = "" }), ""},
		{"toleration PreferNoSchedule", pod(func(p *capstanv1.Pod) { p.Spec.Tolerations[0].Effect = "PreferNoSchedule" }), ""},
		{"toleration unknown effect", pod(func(p *capstanv1.Pod) { p.Spec.Tolerations[0].Effect = "NoRun" }), "pod.spec.tolerations[0].effect"},
		{"second toleration", pod(func(p *capstanv1.Pod) {
			p.Spec.Tolerations = append(p.Spec.Tolerations, &capstanv1.Toleration{Key: "k", Effect: "noschedule"})
		}), "pod.spec.tolerations[1].effect"},
		{"grace period zero", pod(func(p *capstanv1.Pod) { p.Spec.TerminationGracePeriodSeconds = ptr(int64(0)) }), ""},
		{"grace period negative", pod(func(p *capstanv1.Pod) { p.Spec.TerminationGracePeriodSeconds = ptr(int64(-1)) }), "pod.spec.termination_grace_period_seconds"},
		{"first problem in proto order", pod(func(p *capstanv1.Pod) {
			p.Spec.RestartPolicy = "bad"
			p.Spec.Containers[0].Ports[0].ContainerPort = 0
			p.Spec.Containers[0].Command = nil
		}), "pod.spec.containers[0].command"},
	})
}

func templateSpec() *capstanv1.PodTemplateSpec {
	return &capstanv1.PodTemplateSpec{
		Metadata: &capstanv1.ObjectMeta{Labels: map[string]string{"app": "web", "tier": "frontend"}},
		Spec:     validPodSpec(),
	}
}

func replicaSet(mutate func(*capstanv1.ReplicaSet)) resource.Object {
	rs := &capstanv1.ReplicaSet{
		Metadata: &capstanv1.ObjectMeta{Name: "web-7d4b9", Namespace: "default"},
		Spec: &capstanv1.ReplicaSetSpec{
			Replicas: ptr(int32(3)),
			Selector: &capstanv1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: templateSpec(),
		},
	}
	if mutate != nil {
		mutate(rs)
	}
	return rs
}

func selectorExpr(key, op string, values ...string) *capstanv1.LabelSelector {
	return &capstanv1.LabelSelector{MatchExpressions: []*capstanv1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

func TestReplicaSet(t *testing.T) {
	runCases(t, "ReplicaSet", "replica_set", []testCase{
		{"valid", replicaSet(nil), ""},
		{"metadata checked", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Metadata.Name = "" }), "replica_set.metadata.name"},
		{"replicas unset", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.Replicas = nil }), ""},
		{"replicas zero", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.Replicas = ptr(int32(0)) }), ""},
		{"replicas negative", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.Replicas = ptr(int32(-1)) }), "replica_set.spec.replicas"},
		{"missing spec", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec = nil }), "replica_set.spec.selector"},
		{"selector required", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.Selector = nil }), "replica_set.spec.selector"},
		{"selector empty", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.Selector = &capstanv1.LabelSelector{} }), "replica_set.spec.selector"},
		{"selector bad match label key", replicaSet(func(rs *capstanv1.ReplicaSet) {
			rs.Spec.Selector.MatchLabels["bad key"] = "x"
		}), "replica_set.spec.selector.match_labels[bad key]"},
		{"selector bad match label value", replicaSet(func(rs *capstanv1.ReplicaSet) {
			rs.Spec.Selector.MatchLabels["app"] = "web server"
		}), "replica_set.spec.selector.match_labels[app]"},
		{"selector In", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.Selector = selectorExpr("app", "In", "web", "api") }), ""},
		{"selector NotIn", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.Selector = selectorExpr("app", "NotIn", "db") }), ""},
		{"selector Exists", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.Selector = selectorExpr("tier", "Exists") }), ""},
		{"selector DoesNotExist", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.Selector = selectorExpr("canary", "DoesNotExist") }), ""},
		{"selector bad operator", replicaSet(func(rs *capstanv1.ReplicaSet) {
			rs.Spec.Selector = selectorExpr("app", "Equals", "web")
		}), "replica_set.spec.selector.match_expressions[0].operator"},
		{"selector In without values", replicaSet(func(rs *capstanv1.ReplicaSet) {
			rs.Spec.Selector = selectorExpr("app", "In")
		}), "replica_set.spec.selector.match_expressions[0].values"},
		{"selector Exists with values", replicaSet(func(rs *capstanv1.ReplicaSet) {
			rs.Spec.Selector = selectorExpr("app", "Exists", "web")
		}), "replica_set.spec.selector.match_expressions[0].values"},
		{"selector bad expression key", replicaSet(func(rs *capstanv1.ReplicaSet) {
			rs.Spec.Selector = selectorExpr("", "Exists")
		}), "replica_set.spec.selector.match_expressions[0].key"},
		{"selector bad expression value", replicaSet(func(rs *capstanv1.ReplicaSet) {
			rs.Spec.Selector = selectorExpr("app", "In", "web", "not valid")
		}), "replica_set.spec.selector.match_expressions[0].values[1]"},
		{"selector does not match template", replicaSet(func(rs *capstanv1.ReplicaSet) {
			rs.Spec.Selector.MatchLabels["app"] = "api"
		}), "replica_set.spec.template.metadata.labels"},
		{"expression does not match template", replicaSet(func(rs *capstanv1.ReplicaSet) {
			rs.Spec.Selector = selectorExpr("tier", "DoesNotExist")
		}), "replica_set.spec.template.metadata.labels"},
		{"template required", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.Template = nil }), "replica_set.spec.template"},
		{"template without labels", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.Template.Metadata = nil }), "replica_set.spec.template.metadata.labels"},
		{"template bad label", replicaSet(func(rs *capstanv1.ReplicaSet) {
			rs.Spec.Template.Metadata.Labels["tier"] = "front end"
		}), "replica_set.spec.template.metadata.labels[tier]"},
		{"template bad annotation", replicaSet(func(rs *capstanv1.ReplicaSet) {
			rs.Spec.Template.Metadata.Annotations = map[string]string{"bad key": ""}
		}), "replica_set.spec.template.metadata.annotations[bad key]"},
		{"template name and namespace ignored", replicaSet(func(rs *capstanv1.ReplicaSet) {
			rs.Spec.Template.Metadata.Name, rs.Spec.Template.Metadata.Namespace = "Ignored_", "Ignored_"
		}), ""},
		{"template spec checked", replicaSet(func(rs *capstanv1.ReplicaSet) {
			rs.Spec.Template.Spec.Containers[0].Name = ""
		}), "replica_set.spec.template.spec.containers[0].name"},
		{"template spec missing", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.Template.Spec = nil }), "replica_set.spec.template.spec.containers"},
		{"template restart policy empty", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.Template.Spec.RestartPolicy = "" }), ""},
		{"template restart policy Never", replicaSet(func(rs *capstanv1.ReplicaSet) {
			rs.Spec.Template.Spec.RestartPolicy = "Never"
		}), "replica_set.spec.template.spec.restart_policy"},
		{"min ready seconds", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.MinReadySeconds = 10 }), ""},
		{"min ready seconds negative", replicaSet(func(rs *capstanv1.ReplicaSet) { rs.Spec.MinReadySeconds = -1 }), "replica_set.spec.min_ready_seconds"},
	})
}

func deployment(mutate func(*capstanv1.Deployment)) resource.Object {
	d := &capstanv1.Deployment{
		Metadata: &capstanv1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: &capstanv1.DeploymentSpec{
			Replicas: ptr(int32(3)),
			Selector: &capstanv1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: templateSpec(),
			Strategy: &capstanv1.DeploymentStrategy{
				Type:          "RollingUpdate",
				RollingUpdate: &capstanv1.RollingUpdateDeployment{MaxSurge: "25%", MaxUnavailable: "0"},
			},
			MinReadySeconds:         5,
			RevisionHistoryLimit:    ptr(int32(10)),
			ProgressDeadlineSeconds: ptr(int32(600)),
		},
	}
	if mutate != nil {
		mutate(d)
	}
	return d
}

// rolling sets max_surge and max_unavailable of a valid deployment.
func rolling(maxSurge, maxUnavailable string) resource.Object {
	return deployment(func(d *capstanv1.Deployment) {
		d.Spec.Strategy.RollingUpdate = &capstanv1.RollingUpdateDeployment{MaxSurge: maxSurge, MaxUnavailable: maxUnavailable}
	})
}

func TestDeployment(t *testing.T) {
	const surge = "deployment.spec.strategy.rolling_update.max_surge"
	const unavailable = "deployment.spec.strategy.rolling_update.max_unavailable"
	runCases(t, "Deployment", "deployment", []testCase{
		{"valid", deployment(nil), ""},
		{"minimal", deployment(func(d *capstanv1.Deployment) {
			d.Spec.Replicas, d.Spec.Strategy, d.Spec.MinReadySeconds = nil, nil, 0
			d.Spec.RevisionHistoryLimit, d.Spec.ProgressDeadlineSeconds = nil, nil
		}), ""},
		{"metadata checked", deployment(func(d *capstanv1.Deployment) { d.Metadata.Labels = map[string]string{"a": "b c"} }), "deployment.metadata.labels[a]"},
		{"replicas negative", deployment(func(d *capstanv1.Deployment) { d.Spec.Replicas = ptr(int32(-2)) }), "deployment.spec.replicas"},
		{"missing spec", deployment(func(d *capstanv1.Deployment) { d.Spec = nil }), "deployment.spec.selector"},
		{"selector required", deployment(func(d *capstanv1.Deployment) { d.Spec.Selector = nil }), "deployment.spec.selector"},
		{"selector empty", deployment(func(d *capstanv1.Deployment) { d.Spec.Selector = &capstanv1.LabelSelector{} }), "deployment.spec.selector"},
		{"selector does not match template", deployment(func(d *capstanv1.Deployment) {
			d.Spec.Selector = selectorExpr("app", "NotIn", "web")
		}), "deployment.spec.template.metadata.labels"},
		{"template spec checked", deployment(func(d *capstanv1.Deployment) {
			d.Spec.Template.Spec.Containers[0].Command = nil
		}), "deployment.spec.template.spec.containers[0].command"},
		{"strategy empty type", deployment(func(d *capstanv1.Deployment) { d.Spec.Strategy.Type = "" }), ""},
		{"strategy unknown type", deployment(func(d *capstanv1.Deployment) { d.Spec.Strategy.Type = "BlueGreen" }), "deployment.spec.strategy.type"},
		{"strategy Recreate", deployment(func(d *capstanv1.Deployment) {
			d.Spec.Strategy = &capstanv1.DeploymentStrategy{Type: "Recreate"}
		}), ""},
		{"strategy Recreate with rolling update", deployment(func(d *capstanv1.Deployment) {
			d.Spec.Strategy.Type = "Recreate"
		}), "deployment.spec.strategy.rolling_update"},
		{"rolling update defaults", rolling("", ""), ""},
		{"integers", rolling("2", "1"), ""},
		{"percentages", rolling("100%", "0%"), ""},
		{"surge zero, unavailable default", rolling("0", ""), ""},
		{"both zero", rolling("0", "0%"), unavailable},
		{"surge negative", rolling("-1", ""), surge},
		{"surge signed", rolling("+1", ""), surge},
		{"surge fraction", rolling("1.5", ""), surge},
		{"surge word", rolling("many", ""), surge},
		{"surge percentage over 100", rolling("101%", ""), surge},
		{"surge negative percentage", rolling("-5%", ""), surge},
		{"surge bare percent sign", rolling("%", ""), surge},
		{"surge overflows", rolling("99999999999999999999", ""), surge},
		{"unavailable decimal percentage", rolling("", "2.5%"), unavailable},
		{"unavailable percentage over 100", rolling("", "150%"), unavailable},
		{"min ready seconds negative", deployment(func(d *capstanv1.Deployment) {
			d.Spec.MinReadySeconds, d.Spec.ProgressDeadlineSeconds = -1, nil
		}), "deployment.spec.min_ready_seconds"},
		{"revision history limit zero", deployment(func(d *capstanv1.Deployment) { d.Spec.RevisionHistoryLimit = ptr(int32(0)) }), ""},
		{"revision history limit negative", deployment(func(d *capstanv1.Deployment) {
			d.Spec.RevisionHistoryLimit = ptr(int32(-1))
		}), "deployment.spec.revision_history_limit"},
		{"progress deadline just above min ready", deployment(func(d *capstanv1.Deployment) {
			d.Spec.ProgressDeadlineSeconds = ptr(int32(6))
		}), ""},
		{"progress deadline equal to min ready", deployment(func(d *capstanv1.Deployment) {
			d.Spec.ProgressDeadlineSeconds = ptr(int32(5))
		}), "deployment.spec.progress_deadline_seconds"},
		{"progress deadline zero", deployment(func(d *capstanv1.Deployment) {
			d.Spec.MinReadySeconds, d.Spec.ProgressDeadlineSeconds = 0, ptr(int32(0))
		}), "deployment.spec.progress_deadline_seconds"},
	})
}

func node(mutate func(*capstanv1.Node)) resource.Object {
	n := &capstanv1.Node{
		Metadata: &capstanv1.ObjectMeta{Name: "worker-1", Labels: map[string]string{"capstan.dev/zone": "a"}},
		Spec: &capstanv1.NodeSpec{Taints: []*capstanv1.Taint{
			{Key: "dedicated", Value: "any value", Effect: "NoSchedule"},
			{Key: "capstan.dev/unreachable", Effect: "NoExecute"},
		}},
		Status: &capstanv1.NodeStatus{
			Capacity:    map[string]string{"cpu": "4", "memory": "8Gi", "pods": "110"},
			Allocatable: map[string]string{"cpu": "3500m", "memory": "7Gi", "pods": "110"},
		},
	}
	if mutate != nil {
		mutate(n)
	}
	return n
}

func TestNode(t *testing.T) {
	runCases(t, "Node", "node", []testCase{
		{"valid", node(nil), ""},
		{"empty", &capstanv1.Node{Metadata: &capstanv1.ObjectMeta{Name: "n"}}, ""},
		{"namespace set", node(func(n *capstanv1.Node) { n.Metadata.Namespace = "default" }), "node.metadata.namespace"},
		{"taint key required", node(func(n *capstanv1.Node) { n.Spec.Taints[1].Key = "" }), "node.spec.taints[1].key"},
		{"taint bad key", node(func(n *capstanv1.Node) { n.Spec.Taints[0].Key = "a/b/c" }), "node.spec.taints[0].key"},
		{"taint effect required", node(func(n *capstanv1.Node) { n.Spec.Taints[0].Effect = "" }), "node.spec.taints[0].effect"},
		{"taint PreferNoSchedule", node(func(n *capstanv1.Node) { n.Spec.Taints[0].Effect = "PreferNoSchedule" }), ""},
		{"taint unknown effect", node(func(n *capstanv1.Node) { n.Spec.Taints[0].Effect = "NoRun" }), "node.spec.taints[0].effect"},
		{"capacity does not parse", node(func(n *capstanv1.Node) { n.Status.Capacity["memory"] = "8 GiB" }), "node.status.capacity[memory]"},
		{"capacity negative", node(func(n *capstanv1.Node) { n.Status.Capacity["cpu"] = "-4" }), "node.status.capacity[cpu]"},
		{"capacity bad name", node(func(n *capstanv1.Node) { n.Status.Capacity["/gpu"] = "1" }), "node.status.capacity[/gpu]"},
		{"allocatable does not parse", node(func(n *capstanv1.Node) { n.Status.Allocatable["pods"] = "many" }), "node.status.allocatable[pods]"},
	})
}

func TestLease(t *testing.T) {
	lease := func(holder string, seconds int32) resource.Object {
		return &capstanv1.Lease{
			Metadata: &capstanv1.ObjectMeta{Name: "capstan-scheduler", Namespace: "capstan-system"},
			Spec:     &capstanv1.LeaseSpec{HolderIdentity: holder, LeaseDurationSeconds: seconds},
		}
	}
	runCases(t, "Lease", "lease", []testCase{
		{"valid", lease("master-1_4f2a", 15), ""},
		{"free, default duration", lease("", 0), ""},
		{"no spec", &capstanv1.Lease{Metadata: &capstanv1.ObjectMeta{Name: "l"}}, ""},
		{"duration negative", lease("m", -1), "lease.spec.lease_duration_seconds"},
		{"holder of 253 bytes", lease(strings.Repeat("h", 253), 15), ""},
		{"holder of 254 bytes", lease(strings.Repeat("h", 254), 15), "lease.spec.holder_identity"},
	})
}

func TestEvent(t *testing.T) {
	event := func(mutate func(*capstanv1.Event)) resource.Object {
		e := &capstanv1.Event{
			Metadata:       &capstanv1.ObjectMeta{Name: "web-1.17a3", Namespace: "default"},
			InvolvedObject: &capstanv1.ObjectReference{Kind: "Pod", Name: "web-1", Namespace: "default"},
			Reason:         "FailedScheduling",
			Type:           "Warning",
		}
		if mutate != nil {
			mutate(e)
		}
		return e
	}
	runCases(t, "Event", "event", []testCase{
		{"valid", event(nil), ""},
		{"type Normal", event(func(e *capstanv1.Event) { e.Type = "Normal" }), ""},
		{"type empty", event(func(e *capstanv1.Event) { e.Type = "" }), ""},
		{"type unknown", event(func(e *capstanv1.Event) { e.Type = "Error" }), "event.type"},
		{"involved object missing", event(func(e *capstanv1.Event) { e.InvolvedObject = nil }), "event.involved_object.kind"},
		{"involved kind required", event(func(e *capstanv1.Event) { e.InvolvedObject.Kind = "" }), "event.involved_object.kind"},
		{"involved name required", event(func(e *capstanv1.Event) { e.InvolvedObject.Name = "" }), "event.involved_object.name"},
	})
}

func TestConfigMap(t *testing.T) {
	configMap := func(data map[string]string) resource.Object {
		return &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "settings", Namespace: "default"}, Data: data}
	}
	runCases(t, "ConfigMap", "config_map", []testCase{
		{"valid", configMap(map[string]string{"app.properties": "a=b\n", "LOG_LEVEL": "debug", "key-1": ""}), ""},
		{"empty", configMap(nil), ""},
		{"key with a space", configMap(map[string]string{"a b": ""}), "config_map.data[a b]"},
		{"key with a slash", configMap(map[string]string{"a/b": ""}), "config_map.data[a/b]"},
		{"key dot-dot", configMap(map[string]string{"..": ""}), "config_map.data[..]"},
		{"empty key", configMap(map[string]string{"": "x"}), "config_map.data[]"},
		{"at the size limit", configMap(map[string]string{"k": strings.Repeat("x", ConfigMapDataSizeLimit-1)}), ""},
		{"over the size limit", configMap(map[string]string{"k": strings.Repeat("x", ConfigMapDataSizeLimit)}), "config_map.data"},
	})
}

func TestObjectKindMismatch(t *testing.T) {
	err := Object(resource.MustLookup("Node"), pod(nil), "node")
	if got := apierrors.Code(err); got != codes.Internal {
		t.Fatalf("code = %v, want Internal (err: %v)", got, err)
	}
}

func TestObjectKindFromType(t *testing.T) {
	checkField(t, Object(nil, pod(nil), "pod"), "")
	checkField(t, Object(nil, pod(func(p *capstanv1.Pod) { p.Spec = nil }), "pod"), "pod.spec.containers")
}

// TestEveryKindHasRules catches a kind added to the registry without a
// case in Object: its objects would all be rejected as INTERNAL.
func TestEveryKindHasRules(t *testing.T) {
	for _, kind := range resource.All() {
		t.Run(kind.Name, func(t *testing.T) {
			obj := kind.New()
			obj.GetMetadata().Name = "x"
			if code := apierrors.Code(Object(kind, obj, "obj")); code != codes.OK && code != codes.InvalidArgument {
				t.Fatalf("Object(empty %s) = %v, want OK or InvalidArgument", kind.Name, code)
			}
		})
	}
}

func TestName(t *testing.T) {
	pods := resource.MustLookup("Pod")
	tests := []struct {
		name, value, wantField string
	}{
		{"valid", "web-1", ""},
		{"subdomain", "web.example", ""},
		{"required", "", "name"},
		{"upper case", "Web", "name"},
		{"too long", strings.Repeat("a", 254), "name"},
		{"slash", "a/b", "name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkField(t, Name(pods, "name", tt.value), tt.wantField)
		})
	}
}

func TestNamespace(t *testing.T) {
	tests := []struct {
		name, value, wantField string
	}{
		{"empty means default", "", ""},
		{"valid", "kube-system", ""},
		{"all namespaces", "*", "namespace"},
		{"dot", "a.b", "namespace"},
		{"upper case", "Prod", "namespace"},
		{"too long", strings.Repeat("a", 64), "namespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkField(t, Namespace("namespace", tt.value), tt.wantField)
		})
	}
}
