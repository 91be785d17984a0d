package cmd_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
	"github.com/capstan-dev/capstan/services/capctl/internal/cmd"
)

// running is a command line started in the background.
type running struct {
	out, errOut syncBuffer
	done        chan int
	cancel      context.CancelFunc
}

func (c capctl) start(args ...string) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{done: make(chan int, 1), cancel: cancel}
	go func() {
		r.done <- cmd.Execute(ctx, c.args(args), cmd.Streams{In: strings.NewReader(""), Out: &r.out, ErrOut: &r.errOut})
	}()
	c.t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// exit waits for the command to end by itself and returns its exit code.
func (r *running) exit(t *testing.T) int {
	t.Helper()
	select {
	case code := <-r.done:
		r.done <- code // for the cleanup
		return code
	case <-time.After(testDeadline):
		t.Fatalf("the command did not end within %v; stdout:\n%s\nstderr:\n%s", testDeadline, r.out.String(), r.errOut.String())
		return 0
	}
}

func webDeployment(name string, replicas int) string {
	return fmt.Sprintf(`
kind: Deployment
metadata: {name: %s}
spec:
  replicas: %d
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      containers:
      - {name: web, command: [/bin/sleep, "3600"]}
`, name, replicas)
}

// setStatus writes a Deployment's status as its controller would.
func setStatus(t *testing.T, api *client.Client, name string, st *capstanv1.DeploymentStatus) {
	t.Helper()
	d := get[*capstanv1.Deployment](t, api, "default", name)
	if st.ObservedGeneration == 0 {
		st.ObservedGeneration = d.GetMetadata().GetGeneration()
	}
	d.Status = st
	updateStatus(t, api, d)
}

func TestRolloutStatus(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := capctl{t: t, addrs: cluster.Addrs()}
	api := apiClient(t, cluster.Addrs())
	c.ok(webDeployment("web", 3), "apply", "-f", "-")

	t.Run("progress lines, then success", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		r := c.start("rollout", "status", "deployment/web")
		waitFor(t, &r.out, "Waiting for deployment spec update to be observed...")
		steps := []struct {
			status *capstanv1.DeploymentStatus
			line   string
		}{
			{&capstanv1.DeploymentStatus{Replicas: 1, UpdatedReplicas: 1},
				`Waiting for deployment "web" rollout to finish: 1 out of 3 new replicas have been updated...`},
			// The same progress again (a controller writes status often): no new line.
			{&capstanv1.DeploymentStatus{Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1}, ""},
			{&capstanv1.DeploymentStatus{Replicas: 4, UpdatedReplicas: 3, AvailableReplicas: 2},
				`Waiting for deployment "web" rollout to finish: 1 old replicas are pending termination...`},
			{&capstanv1.DeploymentStatus{Replicas: 3, UpdatedReplicas: 3, AvailableReplicas: 2},
				`Waiting for deployment "web" rollout to finish: 2 of 3 updated replicas are available...`},
			{&capstanv1.DeploymentStatus{Replicas: 3, UpdatedReplicas: 3, AvailableReplicas: 3, ReadyReplicas: 3},
				`deployment "web" successfully rolled out`},
		}
		var want []string
		want = append(want, "Waiting for deployment spec update to be observed...")
		for _, s := range steps {
			setStatus(t, api, "web", s.status)
			if s.line != "" {
				waitFor(t, &r.out, s.line)
				want = append(want, s.line)
			}
		}
		if code := r.exit(t); code != 0 {
			t.Fatalf("rollout status exited %d; stderr:\n%s", code, r.errOut.String())
		}
		wantLines(t, "rollout status", r.out.String(), want...)
	})

	t.Run("a finished rollout answers at once", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		wantLines(t, "rollout status", c.ok("", "rollout", "status", "deploy", "web"), `deployment "web" successfully rolled out`)
	})

	t.Run("a scale is a new spec to observe", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		c.ok("", "scale", "deploy/web", "--replicas=4")
		r := c.start("rollout", "status", "deploy/web")
		waitFor(t, &r.out, "Waiting for deployment spec update to be observed...")
		setStatus(t, api, "web", &capstanv1.DeploymentStatus{Replicas: 4, UpdatedReplicas: 4, AvailableReplicas: 4})
		if code := r.exit(t); code != 0 {
			t.Fatalf("rollout status exited %d; stderr:\n%s", code, r.errOut.String())
		}
		wantLines(t, "rollout status", r.out.String(),
			"Waiting for deployment spec update to be observed...", `deployment "web" successfully rolled out`)
	})

	t.Run("--watch=false prints the state once", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		c.ok(webDeployment("once", 2), "apply", "-f", "-")
		wantLines(t, "rollout status --watch=false", c.ok("", "rollout", "status", "deploy/once", "--watch=false"),
			"Waiting for deployment spec update to be observed...")
	})

	t.Run("timeout", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		c.ok(webDeployment("stuck", 2), "apply", "-f", "-")
		setStatus(t, api, "stuck", &capstanv1.DeploymentStatus{Replicas: 2, UpdatedReplicas: 2, AvailableReplicas: 1})
		r := c.run("", "rollout", "status", "deploy/stuck", "--timeout=1s")
		if r.code != 1 {
			t.Fatalf("rollout status of a stuck deployment: %+v", r)
		}
		wantLines(t, "stdout", r.stdout, `Waiting for deployment "stuck" rollout to finish: 1 of 2 updated replicas are available...`)
		wantLines(t, "stderr", r.stderr, `error: timed out after 1s waiting for deployment "stuck" to finish its rollout`)
	})

	t.Run("interrupted", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		r := c.start("rollout", "status", "deploy/stuck")
		waitFor(t, &r.out, "1 of 2 updated replicas are available...")
		r.cancel()
		if code := r.exit(t); code != 1 {
			t.Fatalf("rollout status exited %d after an interrupt, want 1", code)
		}
		wantLines(t, "stderr", r.errOut.String(), `error: interrupted before deployment "stuck" finished its rollout`)
	})

	t.Run("the watch's resume point compacted away", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		r := c.start("rollout", "status", "deploy/stuck")
		waitFor(t, &r.out, "1 of 2 updated replicas are available...")
		// With the replica down the watch cannot follow; the revisions
		// written meanwhile are compacted, so it must read again.
		cluster.StopReplica(0)
		ctx := context.Background()
		etcd := cluster.Etcd().Client(t)
		for i := range 2 { // two, so even a bookmark at the last revision is compacted
			if _, err := etcd.Put(ctx, fmt.Sprintf("/test/bump-%d", i), "x"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := cluster.Compact(ctx); err != nil {
			t.Fatal(err)
		}
		cluster.StartReplica(0)
		setStatus(t, api, "stuck", &capstanv1.DeploymentStatus{Replicas: 2, UpdatedReplicas: 2, AvailableReplicas: 2})
		if code := r.exit(t); code != 0 {
			t.Fatalf("rollout status exited %d; stderr:\n%s", code, r.errOut.String())
		}
		wantLines(t, "rollout status", r.out.String(),
			`Waiting for deployment "stuck" rollout to finish: 1 of 2 updated replicas are available...`,
			`deployment "stuck" successfully rolled out`)
	})

	t.Run("progress deadline exceeded", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		c.ok(webDeployment("slow", 2), "apply", "-f", "-")
		r := c.start("rollout", "status", "deploy/slow")
		waitFor(t, &r.out, "Waiting for deployment spec update to be observed...")
		setStatus(t, api, "slow", &capstanv1.DeploymentStatus{Replicas: 2, UpdatedReplicas: 1, Conditions: []*capstanv1.Condition{{
			Type: wellknown.DeploymentProgressing, Status: wellknown.ConditionFalse, Reason: "ProgressDeadlineExceeded",
			Message: `ReplicaSet "slow-5d8f" has timed out progressing.`}}})
		if code := r.exit(t); code != 1 {
			t.Fatalf("rollout status exited %d, want 1", code)
		}
		wantLines(t, "stderr", r.errOut.String(), `error: deployment "slow" exceeded its progress deadline`)
	})

	t.Run("deleted while waiting", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		c.ok(webDeployment("doomed", 2), "apply", "-f", "-")
		r := c.start("rollout", "status", "deploy/doomed")
		waitFor(t, &r.out, "Waiting for deployment spec update to be observed...")
		c.ok("", "delete", "deploy", "doomed")
		if code := r.exit(t); code != 1 {
			t.Fatalf("rollout status exited %d, want 1", code)
		}
		wantLines(t, "stderr", r.errOut.String(), `error: deployment "doomed" was deleted before its rollout finished`)
	})

	t.Run("mistakes", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		for _, tt := range []struct {
			args []string
			want string
		}{
			{[]string{"rollout", "status", "replicaset/web-5d8f"}, "error: rollout status follows deployments only, not replicasets"},
			{[]string{"rollout", "status", "deployment"}, "error: name one deployment: deployment/NAME or deployment NAME"},
			{[]string{"rollout", "status", "deployment", "a", "b"}, "error: name one deployment: deployment/NAME or deployment NAME"},
			{[]string{"rollout", "status", "deploy/missing"}, `Error from server (NotFound): deployments "missing" not found`},
		} {
			stderr := c.fails("", tt.args...)
			if first := strings.Split(stderr, "\n")[0]; first != tt.want {
				t.Errorf("capctl %s: %q, want %q", strings.Join(tt.args, " "), first, tt.want)
			}
		}
	})
}
