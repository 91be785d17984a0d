package cmd_test

import (
	"strings"
	"testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

const scaledManifest = `
kind: Deployment
metadata: {name: web}
spec:
  %s
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, command: [/bin/sleep, "3600"]}
---
kind: ReplicaSet
metadata: {name: batch-a, labels: {tier: batch}}
spec:
  selector: {matchLabels: {job: a}}
  template:
    metadata: {labels: {job: a}}
    spec:
      containers:
      - {name: a, command: [/bin/sleep, "3600"]}
---
kind: ReplicaSet
metadata: {name: batch-b, labels: {tier: batch}}
spec:
  replicas: 4
  selector: {matchLabels: {job: b}}
  template:
    metadata: {labels: {job: b}}
    spec:
      containers:
      - {name: b, command: [/bin/sleep, "3600"]}
`

func withReplicas(line string) string { return strings.Replace(scaledManifest, "%s", line, 1) }

func TestScale(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := capctl{t: t, addrs: cluster.Addrs()}
	api := apiClient(t, cluster.Addrs())
	replicas := func(name string) int32 {
		t.Helper()
		d := get[*capstanv1.Deployment](t, api, "default", name)
		if d.GetSpec().Replicas == nil {
			return -1
		}
		return d.GetSpec().GetReplicas()
	}
	generation := func() int64 {
		return get[*capstanv1.Deployment](t, api, "default", "web").GetMetadata().GetGeneration()
	}

	wantLines(t, "apply", c.ok(withReplicas("replicas: 2"), "apply", "-f", "-"),
		"deployment/web created", "replicaset/batch-a created", "replicaset/batch-b created")

	wantLines(t, "scale", c.ok("", "scale", "deployment", "web", "--replicas=5"), "deployment/web scaled")
	if got := replicas("web"); got != 5 {
		t.Errorf("after scale --replicas=5: spec.replicas = %d", got)
	}
	if g := generation(); g != 2 {
		t.Errorf("generation after a scale = %d, want 2 (a spec change)", g)
	}

	t.Run("the --current-replicas precondition", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		stderr := c.fails("", "scale", "deploy/web", "--replicas=1", "--current-replicas=3")
		wantLines(t, "stderr", stderr, "error: precondition failed: expected replicas of deployment/web to be 3, was 5")
		if got := replicas("web"); got != 5 {
			t.Errorf("a failed precondition changed spec.replicas to %d", got)
		}
		wantLines(t, "scale with the right precondition", c.ok("", "scale", "deploy/web", "--replicas=4", "--current-replicas=5"),
			"deployment/web scaled")
	})

	t.Run("apply keeps a scaled count its manifest leaves out", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		wantLines(t, "apply without replicas", c.ok(withReplicas(""), "apply", "-f", "-"),
			"deployment/web unchanged", "replicaset/batch-a unchanged", "replicaset/batch-b unchanged")
		if got := replicas("web"); got != 4 {
			t.Errorf("apply without spec.replicas: spec.replicas = %d, want the scaled 4", got)
		}
		wantLines(t, "apply with replicas", c.ok(withReplicas("replicas: 2"), "apply", "-f", "-"),
			"deployment/web configured", "replicaset/batch-a unchanged", "replicaset/batch-b unchanged")
		if got := replicas("web"); got != 2 {
			t.Errorf("apply with spec.replicas 2: spec.replicas = %d", got)
		}
	})

	t.Run("replicasets by selector", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		wantLines(t, "scale rs -l", c.ok("", "scale", "rs", "-l", "tier=batch", "--replicas=0"),
			"replicaset/batch-a scaled", "replicaset/batch-b scaled")
		for _, name := range []string{"batch-a", "batch-b"} {
			rs := get[*capstanv1.ReplicaSet](t, api, "default", name)
			if rs.GetSpec().Replicas == nil || rs.GetSpec().GetReplicas() != 0 {
				t.Errorf("%s replicas = %v, want 0", name, rs.GetSpec().Replicas)
			}
		}
		// batch-a's manifest has no replicas, batch-b's says 4.
		wantLines(t, "apply after scale", c.ok(withReplicas("replicas: 2"), "apply", "-f", "-"),
			"deployment/web unchanged", "replicaset/batch-a unchanged", "replicaset/batch-b configured")
		if got := get[*capstanv1.ReplicaSet](t, api, "default", "batch-b").GetSpec().GetReplicas(); got != 4 {
			t.Errorf("batch-b replicas after apply = %d, want the manifest's 4", got)
		}
	})

	t.Run("mistakes", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		for _, tt := range []struct {
			args []string
			want string
		}{
			{[]string{"scale", "deploy", "web"}, "error: --replicas=N is required"},
			{[]string{"scale", "deploy", "web", "--replicas=-2"}, "error: --replicas must be 0 or more, not -2"},
			{[]string{"scale", "pods", "web", "--replicas=1"}, "error: only deployments and replicasets can be scaled, not pods"},
			{[]string{"scale", "deploy", "--replicas=1"}, "error: name the deployments to scale, or select them with -l SELECTOR or --all"},
			{[]string{"scale", "deploy", "missing", "--replicas=1"}, `Error from server (NotFound): deployments "missing" not found`},
		} {
			stderr := c.fails("", tt.args...)
			if first := strings.Split(stderr, "\n")[0]; first != tt.want {
				t.Errorf("capctl %s: %q, want %q", strings.Join(tt.args, " "), first, tt.want)
			}
		}
	})
}
