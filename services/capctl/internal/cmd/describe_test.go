package cmd_test

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

// apiClient is a client of the test cluster for what capctl does not do
// (bind pods, write status, acquire leases, record events).
func apiClient(t *testing.T, addrs []string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Endpoints: addrs, CallTimeout: testDeadline})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// The API calls of test setups, failing the test on error.

func create[T resource.Object](t *testing.T, c *client.Client, obj T) T {
	t.Helper()
	out, err := c.Create(context.Background(), obj)
	if err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetMetadata().GetName(), err)
	}
	return out.(T)
}

func updateStatus[T resource.Object](t *testing.T, c *client.Client, obj T) T {
	t.Helper()
	out, err := c.UpdateStatus(context.Background(), obj)
	if err != nil {
		t.Fatalf("update status of %T %s: %v", obj, obj.GetMetadata().GetName(), err)
	}
	return out.(T)
}

func get[T resource.Object](t *testing.T, c *client.Client, namespace, name string) T {
	t.Helper()
	var zero T
	kind, _ := resource.ForMessage(zero.ProtoReflect().Interface())
	obj, err := c.Get(context.Background(), kind, namespace, name)
	if err != nil {
		t.Fatalf("get %s %s: %v", kind.Name, name, err)
	}
	return obj.(T)
}

var spaces = regexp.MustCompile(` {2,}`)

// squash turns every run of spaces into one, so that a test can look for
// "Node: worker-1" whatever width the column has.
func squash(s string) string { return spaces.ReplaceAllString(s, " ") }

// wantInOrder checks that out holds every want line (squashed), in order.
func wantInOrder(t *testing.T, what, out string, want ...string) {
	t.Helper()
	rest := squash(out)
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Errorf("%s: no %q (in this order) in:\n%s", what, w, out)
			return
		}
		rest = rest[i+len(w):]
	}
}

// acquire takes a lease for holder (30 s, so that it outlives the test),
// or checks that holder becomes a standby if !wantAcquired.
func acquire(t *testing.T, c *client.Client, namespace, name, holder string, wantAcquired bool) *capstanv1.Lease {
	t.Helper()
	resp, err := c.Leases().AcquireLease(context.Background(), &capstanv1.AcquireLeaseRequest{
		Namespace: namespace, Name: name, HolderIdentity: holder, LeaseDurationSeconds: 30,
	})
	if err != nil {
		t.Fatalf("acquire lease %s/%s for %s: %v", namespace, name, holder, err)
	}
	if resp.GetAcquired() != wantAcquired {
		t.Fatalf("acquire lease %s/%s for %s: acquired %v, want %v (held by %s)", namespace, name, holder,
			resp.GetAcquired(), wantAcquired, resp.GetLease().GetSpec().GetHolderIdentity())
	}
	return resp.GetLease()
}

// recordEvent stores an event about obj, as a component's recorder would.
func recordEvent(t *testing.T, c *client.Client, obj resource.Object, typ, reason, message string, lastSeen time.Time) {
	t.Helper()
	kind, _ := resource.ForMessage(obj)
	m := obj.GetMetadata()
	ns := m.GetNamespace()
	if ns == "" {
		ns = resource.DefaultNamespace
	}
	create(t, c, &capstanv1.Event{
		Metadata:       &capstanv1.ObjectMeta{Namespace: ns, Name: m.GetName() + "." + strings.ToLower(reason) + "-" + m.GetUid()[:8]},
		InvolvedObject: &capstanv1.ObjectReference{Kind: kind.Name, Namespace: m.GetNamespace(), Name: m.GetName(), Uid: m.GetUid()},
		Type:           typ, Reason: reason, Message: message, Count: 1,
		FirstTime: timestamppb.New(lastSeen), LastTime: timestamppb.New(lastSeen),
		Source: &capstanv1.EventSource{Component: "test"},
	})
}

func TestDescribe(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := capctl{t: t, addrs: cluster.Addrs()}
	api := apiClient(t, cluster.Addrs())
	ctx := context.Background()
	now := time.Now()

	node := create(t, api, &capstanv1.Node{
		Metadata: &capstanv1.ObjectMeta{Name: "worker-1", Labels: map[string]string{wellknown.LabelHostname: "worker-1"}},
		Spec:     &capstanv1.NodeSpec{Taints: []*capstanv1.Taint{{Key: "dedicated", Value: "web", Effect: wellknown.TaintNoSchedule}}},
	})
	node.Status = &capstanv1.NodeStatus{
		Capacity:      map[string]string{"cpu": "4", "memory": "8Gi"},
		Allocatable:   map[string]string{"cpu": "2", "memory": "4Gi"},
		Conditions:    []*capstanv1.Condition{{Type: wellknown.NodeReady, Status: wellknown.ConditionTrue, Reason: "AgentReady", LastHeartbeatTime: timestamppb.New(now)}},
		Addresses:     []*capstanv1.NodeAddress{{Type: "InternalIP", Address: "192.0.2.1"}},
		AgentEndpoint: "192.0.2.1:10250",
	}
	node = updateStatus(t, api, node)

	c.ok(`
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        command: [/bin/sleep, "3600"]
        ports: [{containerPort: 8080}]
        resources: {requests: {cpu: 500m, memory: 1Gi}}
`, "apply", "-f", "-")
	deploy := get[*capstanv1.Deployment](t, api, "default", "web")

	// What the Deployment and ReplicaSet controllers would make: a
	// ReplicaSet owned by the Deployment, pods owned by the ReplicaSet.
	template := proto.Clone(deploy.GetSpec().GetTemplate()).(*capstanv1.PodTemplateSpec)
	template.Metadata.Labels[wellknown.LabelPodTemplateHash] = "5d8f"
	rs := create(t, api, &capstanv1.ReplicaSet{
		Metadata: &capstanv1.ObjectMeta{Name: "web-5d8f", Labels: template.GetMetadata().GetLabels(),
			Annotations:     map[string]string{wellknown.AnnotationRevision: "1"},
			OwnerReferences: []*capstanv1.OwnerReference{{Kind: "Deployment", Name: "web", Uid: deploy.GetMetadata().GetUid(), Controller: true}}},
		Spec: &capstanv1.ReplicaSetSpec{Replicas: proto.Int32(2), Template: template,
			Selector: &capstanv1.LabelSelector{MatchLabels: template.GetMetadata().GetLabels()}},
	})
	var pods []*capstanv1.Pod
	for _, name := range []string{"web-5d8f-a", "web-5d8f-b"} {
		p := create(t, api, &capstanv1.Pod{
			Metadata: &capstanv1.ObjectMeta{Name: name, Labels: template.GetMetadata().GetLabels(),
				OwnerReferences: []*capstanv1.OwnerReference{{Kind: "ReplicaSet", Name: "web-5d8f", Uid: rs.GetMetadata().GetUid(), Controller: true}}},
			Spec: template.GetSpec(),
		})
		pods = append(pods, p)
	}
	// A pod with the labels but no owner is not the ReplicaSet's.
	create(t, api, &capstanv1.Pod{Metadata: &capstanv1.ObjectMeta{Name: "stray", Labels: template.GetMetadata().GetLabels()}, Spec: template.GetSpec()})
	if _, err := api.Pods().BindPod(ctx, &capstanv1.BindPodRequest{Name: "web-5d8f-a", NodeName: "worker-1"}); err != nil {
		t.Fatal(err)
	}
	running := get[*capstanv1.Pod](t, api, "default", "web-5d8f-a")
	running.Status = &capstanv1.PodStatus{Phase: wellknown.PodRunning, HostIp: "192.0.2.1", PodIp: "10.0.0.5",
		Conditions: []*capstanv1.Condition{{Type: wellknown.PodReady, Status: wellknown.ConditionTrue}},
		ContainerStatuses: []*capstanv1.ContainerStatus{{Name: "web", Ready: true, RestartCount: 1,
			State: &capstanv1.ContainerState{Running: &capstanv1.ContainerStateRunning{StartedAt: timestamppb.New(now)}}}}}
	running = updateStatus(t, api, running)
	deploy.Status = &capstanv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 1, AvailableReplicas: 1, UnavailableReplicas: 1,
		Conditions: []*capstanv1.Condition{{Type: wellknown.DeploymentProgressing, Status: wellknown.ConditionTrue, Reason: "NewReplicaSetAvailable"}}}
	deploy = updateStatus(t, api, deploy)

	lease := acquire(t, api, wellknown.SystemNamespace, wellknown.SchedulerLease, "master-1", true)

	// Events, recorded newest first to show that describe orders them.
	recordEvent(t, api, running, wellknown.EventNormal, "Started", "Started container web", now.Add(-10*time.Second))
	recordEvent(t, api, running, wellknown.EventNormal, "Scheduled", "Successfully assigned default/web-5d8f-a to worker-1", now.Add(-20*time.Second))
	recordEvent(t, api, pods[1], wellknown.EventWarning, "FailedScheduling", "0/1 nodes are available", now)
	recordEvent(t, api, node, wellknown.EventNormal, "NodeReady", "Node worker-1 status is now: Ready", now)
	recordEvent(t, api, rs, wellknown.EventNormal, "SuccessfulCreate", "Created pod: web-5d8f-a", now)
	recordEvent(t, api, deploy, wellknown.EventNormal, "ScalingReplicaSet", "Scaled up replica set web-5d8f to 2", now)
	recordEvent(t, api, lease, wellknown.EventNormal, "LeaderElection", "master-1 became leader", now)
	// An event about an earlier pod of the same name: another uid.
	earlier := proto.Clone(running).(*capstanv1.Pod)
	earlier.Metadata.Uid = "0123456789-earlier"
	recordEvent(t, api, earlier, wellknown.EventWarning, "BackOff", "an earlier incarnation's event", now)

	t.Run("pod", func(t *testing.T) {
		out := c.ok("", "describe", "pod", "web-5d8f-a")
		wantInOrder(t, "describe pod", out,
			"Name: web-5d8f-a\n", "Namespace: default\n", "Labels: app=web\n", " pod-template-hash=5d8f\n",
			"Controlled By: ReplicaSet/web-5d8f\n", "Node: worker-1/192.0.2.1\n", "Status: Running\n", "IP: 10.0.0.5\n",
			"Containers:\n", " web:\n", " Command:\n", " /bin/sleep\n", " 3600\n", " Port: 8080/TCP\n",
			" State: Running\n", " Ready: True\n", " Restart Count: 1\n", " Requests:\n", " cpu: 500m\n", " memory: 1Gi\n",
			"Conditions:\n", " Ready True\n",
			"Events:\n", " Type Reason Age From Message\n",
			// Oldest first; the ages are left out (a slow machine shifts them).
			" Normal Scheduled ", " test Successfully assigned default/web-5d8f-a to worker-1\n",
			" Normal Started ", " test Started container web\n")
		if strings.Contains(out, "earlier incarnation") || strings.Contains(out, "FailedScheduling") {
			t.Errorf("describe pod shows another object's events:\n%s", out)
		}
	})

	t.Run("node with its pods", func(t *testing.T) {
		out := c.ok("", "describe", "node", "worker-1")
		wantInOrder(t, "describe node", out,
			"Name: worker-1\n", "Labels: capstan.dev/hostname=worker-1\n", "Taints: dedicated=web:NoSchedule\n",
			"Unschedulable: false\n", "Agent Endpoint: 192.0.2.1:10250\n", "Conditions:\n", " Ready True ",
			"Addresses:\n", " InternalIP: 192.0.2.1\n", "Capacity:\n", " cpu: 4\n", "Allocatable:\n", " cpu: 2\n",
			"Non-terminated Pods: (1 in total)\n", " default web-5d8f-a 500m (25%) 0 (0%) 1Gi (25%) 0 (0%) ",
			"Allocated resources:\n", " cpu 500m (25%) 0 (0%)\n", " memory 1Gi (25%) 0 (0%)\n",
			"Events:\n", " Normal NodeReady ")
		if strings.Contains(out, "web-5d8f-b") {
			t.Errorf("describe node shows a pod bound elsewhere:\n%s", out)
		}
	})

	t.Run("replicaset", func(t *testing.T) {
		out := c.ok("", "describe", "rs/web-5d8f")
		wantInOrder(t, "describe replicaset", out,
			"Name: web-5d8f\n", "Annotations: deployment.capstan.dev/revision: 1\n", "Controlled By: Deployment/web\n",
			"Selector: app=web,pod-template-hash=5d8f\n", "Replicas: 0 current / 2 desired / 0 ready / 0 available\n",
			// stray has the labels but another owner (none): not counted.
			"Pods Status: 1 Running / 1 Waiting / 0 Succeeded / 0 Failed\n",
			"Pod Template:\n", " Labels: app=web\n", " pod-template-hash=5d8f\n", " Containers:\n", " web:\n",
			"Events:\n", " Normal SuccessfulCreate ")
	})

	t.Run("deployment", func(t *testing.T) {
		out := c.ok("", "describe", "deployment", "web")
		wantInOrder(t, "describe deployment", out,
			"Name: web\n", "Labels: app=web\n", "Selector: app=web\n",
			"Replicas: 2 desired | 2 updated | 2 total | 1 available | 1 unavailable\n",
			"StrategyType: RollingUpdate\n", "RollingUpdateStrategy: 25% max unavailable, 25% max surge\n",
			"Pod Template:\n", " Containers:\n", " web:\n", " Port: 8080/TCP\n",
			"Conditions:\n", " Progressing True NewReplicaSetAvailable\n",
			"OldReplicaSets: <none>\n", "NewReplicaSet: web-5d8f (0/2 replicas created)\n",
			"Events:\n", " Normal ScalingReplicaSet ")
	})

	t.Run("lease", func(t *testing.T) {
		out := c.ok("", "describe", "lease", wellknown.SchedulerLease, "-n", wellknown.SystemNamespace)
		wantInOrder(t, "describe lease", out,
			"Name: scheduler\n", "Namespace: capstan-system\n", "Holder: master-1\n",
			"Epoch: "+strconv.FormatInt(lease.GetStatus().GetEpoch(), 10)+"\n", "Duration: 30s\n", "Acquired: ", "Renewed: ", "Transitions: 0\n",
			"Events:\n", " Normal LeaderElection ")
	})

	t.Run("several, by selector, without events", func(t *testing.T) {
		out := c.ok("", "describe", "pods", "-l", "app=web", "--show-events=false")
		if n := strings.Count(out, "Name: "); n != 3 {
			t.Errorf("describe pods -l app=web described %d pods, want 3:\n%s", n, out)
		}
		if strings.Contains(out, "Events:") || !strings.Contains(out, "\n\n\nName:") {
			t.Errorf("describe --show-events=false of several:\n%s", out)
		}
	})

	t.Run("missing", func(t *testing.T) {
		r := c.run("", "describe", "pods", "web-5d8f-b", "missing")
		if r.code != 1 || !strings.Contains(r.stdout, "Name:               web-5d8f-b") ||
			strings.TrimSpace(r.stderr) != `Error from server (NotFound): pods "missing" not found` {
			t.Errorf("describe of a found and a missing pod: %+v", r)
		}
	})
}
