package printer

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/resource"
)

func controllerRef(kind, name, uid string) []*capstanv1.OwnerReference {
	return []*capstanv1.OwnerReference{{Kind: kind, Name: name, Uid: uid, Controller: true}}
}

func requests(cpu, memory string) *capstanv1.ResourceRequirements {
	return &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": cpu, "memory": memory}}
}

var (
	webTemplate = &capstanv1.PodTemplateSpec{
		Metadata: &capstanv1.ObjectMeta{Labels: map[string]string{"app": "web"}},
		Spec: &capstanv1.PodSpec{Containers: []*capstanv1.Container{{
			Name: "web", Command: []string{"/bin/web", "--port=8080"},
			Ports:     []*capstanv1.ContainerPort{{ContainerPort: 8080}},
			Resources: requests("100m", "64Mi"),
		}}},
	}
	podEvents = []*capstanv1.Event{
		{Metadata: meta("default", "web-1.b", time.Minute), Type: "Normal", Reason: "Started", Message: "Started container web",
			Source: &capstanv1.EventSource{Component: "node-agent", Host: "worker-1"}, Count: 1, FirstTime: ago(40 * time.Second), LastTime: ago(40 * time.Second)},
		{Metadata: meta("default", "web-1.a", time.Minute), Type: "Normal", Reason: "Scheduled", Message: "Successfully assigned default/web-1 to worker-1\n",
			Source: &capstanv1.EventSource{Component: "scheduler"}, Count: 1, FirstTime: ago(50 * time.Second), LastTime: ago(50 * time.Second)},
		{Metadata: meta("default", "web-1.c", time.Minute), Type: "Warning", Reason: "Unhealthy", Message: "Readiness probe failed",
			Source: &capstanv1.EventSource{Component: "node-agent"}, Count: 5, FirstTime: ago(30 * time.Second), LastTime: ago(3 * time.Second)},
	}
)

func TestDescribe(t *testing.T) {
	tests := []struct {
		name string
		obj  resource.Object
		rel  Related
		want string
	}{
		{
			name: "pod",
			obj: &capstanv1.Pod{
				Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: "web-1", CreateTime: ago(time.Minute),
					Labels:          map[string]string{"app": "web", "pod-template-hash": "5d8f"},
					Annotations:     map[string]string{"note": "a\tb"},
					OwnerReferences: controllerRef("ReplicaSet", "web-5d8f", "rs-uid")},
				Spec: &capstanv1.PodSpec{
					NodeName: "worker-1", NodeSelector: map[string]string{"disk": "ssd"},
					Tolerations: []*capstanv1.Toleration{
						{Key: "node.capstan.dev/unreachable", Operator: "Exists", Effect: "NoExecute", TolerationSeconds: ptr(int64(300))},
						{Operator: "Exists"},
					},
					Containers: []*capstanv1.Container{
						{
							Name: "web", Command: []string{"/bin/web"}, Args: []string{"--port=8080"},
							Ports:          []*capstanv1.ContainerPort{{Name: "http", ContainerPort: 8080, HostPort: 80}},
							Resources:      &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": "100m", "memory": "64Mi"}, Limits: map[string]string{"cpu": "1"}},
							ReadinessProbe: &capstanv1.Probe{HttpGet: &capstanv1.HttpGetAction{Path: "/healthz", Port: 8080}, InitialDelaySeconds: 2},
							LivenessProbe:  &capstanv1.Probe{Exec: &capstanv1.ExecAction{Command: []string{"cat", "/tmp/ok"}}, PeriodSeconds: 5},
							Env:            []*capstanv1.EnvVar{{Name: "LEVEL", Value: "debug"}},
						},
						{Name: "sidecar", Command: []string{"/bin/sleep", "3600"}},
					},
				},
				Status: &capstanv1.PodStatus{
					Phase: "Running", HostIp: "192.0.2.1", PodIp: "10.0.0.5", StartTime: ago(55 * time.Second),
					Conditions: []*capstanv1.Condition{{Type: "PodScheduled", Status: "True"}, {Type: "Ready", Status: "False", Reason: "ContainersNotReady"}},
					ContainerStatuses: []*capstanv1.ContainerStatus{
						{Name: "web", RestartCount: 2, State: &capstanv1.ContainerState{Running: &capstanv1.ContainerStateRunning{StartedAt: ago(10 * time.Second)}},
							LastState: &capstanv1.ContainerState{Terminated: &capstanv1.ContainerStateTerminated{
								ExitCode: 1, Reason: "Error", StartedAt: ago(30 * time.Second), FinishedAt: ago(11 * time.Second)}}},
						{Name: "sidecar", Ready: true, State: &capstanv1.ContainerState{Waiting: &capstanv1.ContainerStateWaiting{Reason: "ContainerCreating"}}},
					},
				},
			},
			rel: Related{Events: podEvents},
			want: `
Name:               web-1
Namespace:          default
Labels:             app=web
                    pod-template-hash=5d8f
Annotations:        note: a b
CreationTimestamp:  Sun, 01 Jun 2025 11:59:00 +0000
Controlled By:      ReplicaSet/web-5d8f
Node:               worker-1/192.0.2.1
Start Time:         Sun, 01 Jun 2025 11:59:05 +0000
Status:             ContainerCreating
IP:                 10.0.0.5
Containers:
  web:
    Command:
      /bin/web
    Args:
      --port=8080
    Port:           8080/TCP (http)
    Host Port:      80/TCP
    State:          Running
      Started:      Sun, 01 Jun 2025 11:59:50 +0000
    Last State:     Terminated
      Reason:       Error
      Exit Code:    1
      Started:      Sun, 01 Jun 2025 11:59:30 +0000
      Finished:     Sun, 01 Jun 2025 11:59:49 +0000
    Ready:          False
    Restart Count:  2
    Limits:
      cpu:  1
    Requests:
      cpu:      100m
      memory:   64Mi
    Liveness:   exec [cat /tmp/ok] delay=0s timeout=1s period=5s #success=1 #failure=3
    Readiness:  http-get http://:8080/healthz delay=2s timeout=1s period=10s #success=1 #failure=3
    Environment:
      LEVEL:  debug
  sidecar:
    Command:
      /bin/sleep
      3600
    Port:           <none>
    State:          Waiting
      Reason:       ContainerCreating
    Ready:          True
    Restart Count:  0
    Environment:    <none>
Conditions:
  Type          Status  Reason
  PodScheduled  True
  Ready         False   ContainersNotReady
Node-Selectors:  disk=ssd
Tolerations:     node.capstan.dev/unreachable:NoExecute op=Exists for 300s
                 op=Exists
Events:
  Type     Reason     Age               From        Message
  ----     ------     ----              ----        -------
  Normal   Scheduled  50s               scheduler   Successfully assigned default/web-1 to worker-1
  Normal   Started    40s               node-agent  Started container web
  Warning  Unhealthy  3s (x5 over 30s)  node-agent  Readiness probe failed
`,
		},
		{
			name: "node with its pods",
			obj: &capstanv1.Node{
				Metadata: &capstanv1.ObjectMeta{Name: "worker-1", CreateTime: ago(time.Hour), Labels: map[string]string{"capstan.dev/hostname": "worker-1"}},
				Spec: &capstanv1.NodeSpec{Unschedulable: true, Taints: []*capstanv1.Taint{
					{Key: "node.capstan.dev/unreachable", Effect: "NoExecute"}, {Key: "dedicated", Value: "db", Effect: "NoSchedule"}}},
				Status: &capstanv1.NodeStatus{
					Capacity:      map[string]string{"cpu": "4", "memory": "8Gi"},
					Allocatable:   map[string]string{"cpu": "2", "memory": "4Gi"},
					Conditions:    []*capstanv1.Condition{{Type: "Ready", Status: "True", Reason: "AgentReady", Message: "agent is posting ready status", LastHeartbeatTime: ago(time.Second), LastTransitionTime: ago(time.Hour)}},
					Addresses:     []*capstanv1.NodeAddress{{Type: "InternalIP", Address: "192.0.2.1"}, {Type: "Hostname", Address: "w1"}},
					AgentEndpoint: "192.0.2.1:10250",
					NodeInfo:      &capstanv1.NodeInfo{AgentVersion: "v0.1.0", OperatingSystem: "linux", Architecture: "amd64", Runtime: "process"},
				},
			},
			rel: Related{Pods: []*capstanv1.Pod{
				{Metadata: meta("prod", "api-1", 2*time.Minute), Spec: &capstanv1.PodSpec{Containers: []*capstanv1.Container{
					{Name: "a", Resources: &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": "500m", "memory": "1Gi"}, Limits: map[string]string{"memory": "2Gi"}}},
					{Name: "b", Resources: requests("250m", "512Mi")}}}, Status: &capstanv1.PodStatus{Phase: "Running"}},
				{Metadata: meta("default", "web-1", time.Minute), Spec: webTemplate.GetSpec(), Status: &capstanv1.PodStatus{Phase: "Pending"}},
				{Metadata: meta("default", "done", time.Minute), Spec: webTemplate.GetSpec(), Status: &capstanv1.PodStatus{Phase: "Succeeded"}},
			}},
			want: `
Name:               worker-1
Labels:             capstan.dev/hostname=worker-1
Annotations:        <none>
CreationTimestamp:  Sun, 01 Jun 2025 11:00:00 +0000
Taints:             node.capstan.dev/unreachable:NoExecute
                    dedicated=db:NoSchedule
Unschedulable:      true
Agent Endpoint:     192.0.2.1:10250
Conditions:
  Type   Status  LastHeartbeatTime                LastTransitionTime               Reason      Message
  ----   ------  -----------------                ------------------               ------      -------
  Ready  True    Sun, 01 Jun 2025 11:59:59 +0000  Sun, 01 Jun 2025 11:00:00 +0000  AgentReady  agent is posting ready status
Addresses:
  InternalIP:  192.0.2.1
  Hostname:    w1
Capacity:
  cpu:     4
  memory:  8Gi
Allocatable:
  cpu:     2
  memory:  4Gi
System Info:
  Agent Version:     v0.1.0
  Operating System:  linux
  Architecture:      amd64
  Runtime:           process
Non-terminated Pods:  (2 in total)
  Namespace           Name   CPU Requests  CPU Limits  Memory Requests  Memory Limits  Age
  ---------           ----   ------------  ----------  ---------------  -------------  ---
  default             web-1  100m (5%)     0 (0%)      64Mi (1%)        0 (0%)         60s
  prod                api-1  750m (37%)    0 (0%)      1536Mi (37%)     2Gi (50%)      2m
Allocated resources:
  (Total limits may be over 100 percent, i.e., overcommitted.)
  Resource  Requests      Limits
  --------  --------      ------
  cpu       850m (42%)    0 (0%)
  memory    1600Mi (39%)  2Gi (50%)
Events:  <none>
`,
		},
		{
			name: "node without status",
			obj:  &capstanv1.Node{Metadata: meta("", "new", time.Second)},
			want: `
Name:               new
Labels:             <none>
Annotations:        <none>
CreationTimestamp:  Sun, 01 Jun 2025 11:59:59 +0000
Taints:             <none>
Unschedulable:      false
Agent Endpoint:     <none>
Conditions:  <none>
Addresses:   <none>
System Info:
  Agent Version:
  Operating System:
  Architecture:
  Runtime:
Non-terminated Pods:  (0 in total)
  Namespace           Name  CPU Requests  CPU Limits  Memory Requests  Memory Limits  Age
  ---------           ----  ------------  ----------  ---------------  -------------  ---
Allocated resources:
  (Total limits may be over 100 percent, i.e., overcommitted.)
  Resource  Requests  Limits
  --------  --------  ------
  cpu       0         0
  memory    0         0
Events:  <none>
`,
		},
		{
			name: "replicaset",
			obj: &capstanv1.ReplicaSet{
				Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: "web-5d8f", CreateTime: ago(time.Minute),
					Labels:          map[string]string{"app": "web", "pod-template-hash": "5d8f"},
					Annotations:     map[string]string{"deployment.capstan.dev/revision": "2"},
					OwnerReferences: controllerRef("Deployment", "web", "d-uid")},
				Spec: &capstanv1.ReplicaSetSpec{Replicas: ptr(int32(3)),
					Selector: &capstanv1.LabelSelector{MatchLabels: map[string]string{"app": "web", "pod-template-hash": "5d8f"}},
					Template: webTemplate},
				Status: &capstanv1.ReplicaSetStatus{Replicas: 3, ReadyReplicas: 2, AvailableReplicas: 1,
					Conditions: []*capstanv1.Condition{{Type: "ReplicaFailure", Status: "True", Reason: "FailedCreate", Message: "quota"}}},
			},
			rel: Related{
				Pods: []*capstanv1.Pod{
					{Status: &capstanv1.PodStatus{Phase: "Running"}}, {Status: &capstanv1.PodStatus{Phase: "Running"}}, {Status: &capstanv1.PodStatus{Phase: "Pending"}}},
				Events: []*capstanv1.Event{{Metadata: meta("default", "web-5d8f.x", time.Minute), Type: "Normal", Reason: "SuccessfulCreate",
					Message: "Created pod: web-5d8f-abcde", Source: &capstanv1.EventSource{Component: "replicaset-controller"}, Count: 3,
					FirstTime: ago(time.Minute), LastTime: ago(20 * time.Second)}},
			},
			want: `
Name:               web-5d8f
Namespace:          default
Labels:             app=web
                    pod-template-hash=5d8f
Annotations:        deployment.capstan.dev/revision: 2
CreationTimestamp:  Sun, 01 Jun 2025 11:59:00 +0000
Controlled By:      Deployment/web
Selector:           app=web,pod-template-hash=5d8f
Replicas:           3 current / 3 desired / 2 ready / 1 available
Pods Status:        2 Running / 1 Waiting / 0 Succeeded / 0 Failed
Pod Template:
  Labels:  app=web
  Containers:
    web:
      Command:
        /bin/web
        --port=8080
      Port:  8080/TCP
      Requests:
        cpu:        100m
        memory:     64Mi
      Environment:  <none>
Conditions:
  Type            Status  Reason        Message
  ----            ------  ------        -------
  ReplicaFailure  True    FailedCreate  quota
Events:
  Type    Reason            Age                From                   Message
  ----    ------            ----               ----                   -------
  Normal  SuccessfulCreate  20s (x3 over 60s)  replicaset-controller  Created pod: web-5d8f-abcde
`,
		},
		{
			name: "deployment",
			obj: &capstanv1.Deployment{
				Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: "web", CreateTime: ago(time.Hour), Labels: map[string]string{"app": "web"}, Generation: 2},
				Spec: &capstanv1.DeploymentSpec{Replicas: ptr(int32(3)), Selector: &capstanv1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
					Template: webTemplate, Strategy: &capstanv1.DeploymentStrategy{Type: "RollingUpdate", RollingUpdate: &capstanv1.RollingUpdateDeployment{MaxSurge: "1"}}},
				Status: &capstanv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 4, UpdatedReplicas: 1, ReadyReplicas: 3, AvailableReplicas: 3, UnavailableReplicas: 0,
					Conditions: []*capstanv1.Condition{
						{Type: "Available", Status: "True", Reason: "MinimumReplicasAvailable", Message: "Deployment has minimum availability."},
						{Type: "Progressing", Status: "True", Reason: "ReplicaSetUpdated", Message: `ReplicaSet "web-7c9d" is progressing.`}}},
			},
			rel: Related{ReplicaSets: []*capstanv1.ReplicaSet{
				{Metadata: &capstanv1.ObjectMeta{Name: "web-7c9d", CreateTime: ago(time.Minute)}, Spec: &capstanv1.ReplicaSetSpec{Replicas: ptr(int32(1)),
					Template: &capstanv1.PodTemplateSpec{Metadata: &capstanv1.ObjectMeta{Labels: map[string]string{"app": "web", "pod-template-hash": "7c9d"}}, Spec: webTemplate.GetSpec()}},
					Status: &capstanv1.ReplicaSetStatus{Replicas: 1}},
				{Metadata: &capstanv1.ObjectMeta{Name: "web-5d8f", CreateTime: ago(time.Hour)}, Spec: &capstanv1.ReplicaSetSpec{Replicas: ptr(int32(3)),
					Template: &capstanv1.PodTemplateSpec{Metadata: &capstanv1.ObjectMeta{Labels: map[string]string{"app": "web", "pod-template-hash": "5d8f"}},
						Spec: &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "web", Command: []string{"/bin/web-v1"}}}}}},
					Status: &capstanv1.ReplicaSetStatus{Replicas: 3}},
			}},
			want: `
Name:                   web
Namespace:              default
Labels:                 app=web
Annotations:            <none>
CreationTimestamp:      Sun, 01 Jun 2025 11:00:00 +0000
Selector:               app=web
Replicas:               3 desired | 1 updated | 4 total | 3 available | 0 unavailable
StrategyType:           RollingUpdate
MinReadySeconds:        0
RollingUpdateStrategy:  25% max unavailable, 1 max surge
Pod Template:
  Labels:  app=web
  Containers:
    web:
      Command:
        /bin/web
        --port=8080
      Port:  8080/TCP
      Requests:
        cpu:        100m
        memory:     64Mi
      Environment:  <none>
Conditions:
  Type         Status  Reason                    Message
  ----         ------  ------                    -------
  Available    True    MinimumReplicasAvailable  Deployment has minimum availability.
  Progressing  True    ReplicaSetUpdated         ReplicaSet "web-7c9d" is progressing.
OldReplicaSets:  web-5d8f (3/3 replicas created)
NewReplicaSet:   web-7c9d (1/1 replicas created)
Events:  <none>
`,
		},
		{
			name: "deployment before its controller ran",
			obj: &capstanv1.Deployment{
				Metadata: meta("default", "new", time.Second),
				Spec:     &capstanv1.DeploymentSpec{Strategy: &capstanv1.DeploymentStrategy{Type: "Recreate"}, Paused: true},
			},
			want: `
Name:               new
Namespace:          default
Labels:             <none>
Annotations:        <none>
CreationTimestamp:  Sun, 01 Jun 2025 11:59:59 +0000
Selector:           <none>
Replicas:           1 desired | 0 updated | 0 total | 0 available | 0 unavailable
StrategyType:       Recreate
MinReadySeconds:    0
Paused:             true
Pod Template:
  Labels:      <none>
  Containers:  <none>
OldReplicaSets:  <none>
NewReplicaSet:   <none>
Events:  <none>
`,
		},
		{
			name: "lease",
			obj: &capstanv1.Lease{
				Metadata: meta("capstan-system", "scheduler", 30*time.Second),
				Spec:     &capstanv1.LeaseSpec{HolderIdentity: "master-2", LeaseDurationSeconds: 2},
				Status:   &capstanv1.LeaseStatus{Epoch: 1042, AcquireTime: ago(30 * time.Second), RenewTime: ago(time.Second), LeaseTransitions: 3, SessionReplica: "apiserver-2"},
			},
			rel: Related{NoEvents: true},
			want: `
Name:               scheduler
Namespace:          capstan-system
Labels:             <none>
Annotations:        <none>
CreationTimestamp:  Sun, 01 Jun 2025 11:59:30 +0000
Holder:             master-2
Epoch:              1042
Session:            apiserver-2
Duration:           2s
Acquired:           Sun, 01 Jun 2025 11:59:30 +0000 (30s ago)
Renewed:            Sun, 01 Jun 2025 11:59:59 +0000 (1s ago)
Transitions:        3
`,
		},
		{
			name: "config map",
			obj:  &capstanv1.ConfigMap{Metadata: meta("default", "settings", time.Hour), Data: map[string]string{"level": "info", "script": "#!/bin/sh\n\techo hi\n"}},
			want: `
Name:               settings
Namespace:          default
Labels:             <none>
Annotations:        <none>
CreationTimestamp:  Sun, 01 Jun 2025 11:00:00 +0000

Data
====
level:
----
info
script:
----
#!/bin/sh
	echo hi

Events:  <none>
`,
		},
		{
			name: "event",
			obj: &capstanv1.Event{Metadata: meta("default", "web-1.a", time.Minute),
				InvolvedObject: &capstanv1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "web-1", Uid: "pod-uid"},
				Type:           "Warning", Reason: "FailedScheduling", Message: "0/3 nodes are available", Count: 4,
				Source: &capstanv1.EventSource{Component: "scheduler", Host: "master-1"}, FirstTime: ago(time.Minute), LastTime: ago(5 * time.Second)},
			rel: Related{Events: podEvents}, // an event has no events of its own
			want: `
Name:               web-1.a
Namespace:          default
Labels:             <none>
Annotations:        <none>
CreationTimestamp:  Sun, 01 Jun 2025 11:59:00 +0000
Involved Object:
  Kind:       Pod
  Name:       web-1
  Namespace:  default
  UID:        pod-uid
Type:         Warning
Reason:       FailedScheduling
Message:      0/3 nodes are available
Source:       scheduler, master-1
Count:        4
First Seen:   Sun, 01 Jun 2025 11:59:00 +0000 (60s ago)
Last Seen:    Sun, 01 Jun 2025 11:59:55 +0000 (5s ago)
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := Describe(&out, tt.obj, tt.rel, DescribeOptions{Now: func() time.Time { return now }, Location: time.UTC}); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(strings.TrimPrefix(tt.want, "\n"), out.String()); diff != "" {
				t.Errorf("describe (-want +got):\n%s\ngot:\n%s", diff, out.String())
			}
		})
	}
}

func TestSortEvents(t *testing.T) {
	event := func(name string, last, first time.Duration) *capstanv1.Event {
		e := &capstanv1.Event{Metadata: meta("default", name, time.Hour)}
		if last > 0 {
			e.LastTime = ago(last)
		}
		if first > 0 {
			e.FirstTime = ago(first)
		}
		return e
	}
	objs := []resource.Object{
		event("b-latest", time.Second, time.Hour),
		event("a-oldest", time.Hour, time.Hour),
		event("no-last-time", 0, 30*time.Minute), // falls back to first_time
		event("a-tie", time.Minute, 0),
		event("b-tie", time.Minute, 0),
	}
	SortEvents(objs)
	var got []string
	for _, o := range objs {
		got = append(got, o.GetMetadata().GetName())
	}
	if want := []string{"a-oldest", "no-last-time", "a-tie", "b-tie", "b-latest"}; !cmp.Equal(got, want) {
		t.Errorf("SortEvents: %v, want %v", got, want)
	}
}

func TestAgeOfAFutureTime(t *testing.T) {
	// The server's clock a little ahead of this machine's.
	if got := Age(ago(-5*time.Second), now); got != "0s" {
		t.Errorf("Age of a time 5s ahead = %q, want 0s", got)
	}
}
