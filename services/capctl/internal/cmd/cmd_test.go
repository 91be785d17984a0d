package cmd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
	"github.com/capstan-dev/capstan/services/capctl/internal/cmd"
	"github.com/capstan-dev/capstan/services/capctl/internal/manifest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// etcd's embedded server and client keep a few process-wide goroutines.
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/client/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

// testDeadline bounds every wait for output, far above what it takes, so
// a busy shared machine does not fail the test.
const testDeadline = 30 * time.Second

// syncBuffer is a bytes.Buffer that a running command writes while the
// test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type result struct {
	stdout, stderr string
	code           int
}

// capctl runs one command line in-process against the cluster.
type capctl struct {
	t     *testing.T
	addrs []string
}

func (c capctl) args(args []string) []string {
	return append([]string{"--server", strings.Join(c.addrs, ","), "--timeout", "20s"}, args...)
}

func (c capctl) run(stdin string, args ...string) result {
	c.t.Helper()
	var out, errOut bytes.Buffer
	code := cmd.Execute(context.Background(), c.args(args), cmd.Streams{In: strings.NewReader(stdin), Out: &out, ErrOut: &errOut})
	return result{stdout: out.String(), stderr: errOut.String(), code: code}
}

// ok runs a command that must succeed and returns its stdout.
func (c capctl) ok(stdin string, args ...string) string {
	c.t.Helper()
	r := c.run(stdin, args...)
	if r.code != 0 {
		c.t.Fatalf("capctl %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// fails runs a command that must exit 1 and returns its stderr.
func (c capctl) fails(stdin string, args ...string) string {
	c.t.Helper()
	r := c.run(stdin, args...)
	if r.code != 1 {
		c.t.Fatalf("capctl %s: exit %d, want 1\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stderr
}

func wantLines(t *testing.T, what, got string, want ...string) {
	t.Helper()
	if g := strings.Split(strings.TrimSpace(got), "\n"); strings.Join(g, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n%s\nwant:\n%s", what, got, strings.Join(want, "\n"))
	}
}

func wantContains(t *testing.T, what, got string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("%s does not contain %q:\n%s", what, w, got)
		}
	}
}

const webManifest = `
apiVersion: capstan.dev/v1
kind: ConfigMap
metadata:
  name: settings
data:
  level: info
---
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        command: [/bin/sleep, "3600"]
---
kind: Pod
metadata:
  name: web
  labels: {app: web, tier: front}
spec:
  containers:
  - name: web
    command: [/bin/sleep, "3600"]
`

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCapctl(t *testing.T) {
	cluster := apiservertest.Start(t, 2)
	c := capctl{t: t, addrs: cluster.Addrs()}
	web := writeFile(t, "web.yaml", webManifest)

	t.Run("apply creates, then leaves alone, then configures", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		wantLines(t, "first apply", c.ok("", "apply", "-f", web),
			"configmap/settings created", "deployment/web created", "pod/web created")
		wantLines(t, "second apply", c.ok("", "apply", "-f", web),
			"configmap/settings unchanged", "deployment/web unchanged", "pod/web unchanged")
		changed := strings.Replace(webManifest, "level: info", "level: debug", 1)
		wantLines(t, "apply of a change from stdin", c.ok(changed, "apply", "-f", "-"),
			"configmap/settings configured", "deployment/web unchanged", "pod/web unchanged")
		out := c.ok("", "get", "configmap", "settings", "-o", "json")
		var cm map[string]any
		if err := json.Unmarshal([]byte(out), &cm); err != nil {
			t.Fatalf("get -o json: %v\n%s", err, out)
		}
		if level := cm["data"].(map[string]any)["level"]; level != "debug" {
			t.Errorf("configmap level = %v, want debug", level)
		}
	})

	t.Run("a bad document applies nothing", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		bad := "kind: ConfigMap\nmetadata: {name: good}\n---\nkind: Pod\nmetadata: {name: bad}\nspec:\n  containers:\n  - name: c\n    imagee: nginx\n"
		stderr := c.fails(bad, "apply", "-f", "-")
		wantContains(t, "stderr", stderr, `error: -: document 2 (line 4) Pod "bad": unknown field "spec.containers[0].imagee"`)
		wantContains(t, "stderr", c.fails("", "get", "configmap", "good"), `Error from server (NotFound): configmaps "good" not found`)
	})

	t.Run("the server's refusal names the document", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		stderr := c.fails("kind: Pod\nmetadata: {name: empty}\n", "apply", "-f", "-")
		wantContains(t, "stderr", stderr, "Error from server (Invalid): -: document 1 (line 1) pod/empty: ")
	})

	t.Run("get prints tables", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		out := c.ok("", "get", "pods")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME") {
			t.Fatalf("get pods:\n%s", out)
		}
		if fields := strings.Fields(lines[0]); strings.Join(fields, " ") != "NAME READY STATUS RESTARTS NODE AGE" {
			t.Errorf("header %q", lines[0])
		}
		if fields := strings.Fields(lines[1]); len(fields) != 6 || fields[0] != "web" || fields[1] != "0/1" || fields[2] != "Pending" || fields[4] != "<none>" {
			t.Errorf("row %q", lines[1])
		}
		all := c.ok("", "get", "po", "-A", "-l", "tier=front")
		if !strings.HasPrefix(all, "NAMESPACE") || !strings.Contains(all, "default ") {
			t.Errorf("get po -A:\n%s", all)
		}
		wantLines(t, "get -o name", c.ok("", "get", "deployments", "-o", "name"), "deployment/web")
		wantLines(t, "field selector", c.ok("", "get", "pods", "-o", "name", "--field-selector", "status.phase=Pending"), "pod/web")
		r := c.run("", "get", "pods", "-l", "app=nothing")
		if r.code != 0 || r.stdout != "" || strings.TrimSpace(r.stderr) != "No resources found in default namespace." {
			t.Errorf("empty get: %+v", r)
		}
	})

	t.Run("get -o yaml round-trips through apply", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		for _, obj := range []string{"pod/web", "deploy/web", "cm/settings"} {
			out := c.ok("", "get", obj, "-o", "yaml")
			if _, err := manifest.DecodeOne([]byte(out), obj); err != nil {
				t.Fatalf("get %s -o yaml does not decode: %v\n%s", obj, err, out)
			}
			wantContains(t, "yaml", out, "apiVersion: capstan.dev/v1\n", "resourceVersion: ")
			kind := strings.Split(c.ok("", "get", obj, "-o", "name"), "/")[0]
			wantLines(t, "apply of get -o yaml", c.ok(out, "apply", "-f", "-"), kind+"/"+strings.Split(obj, "/")[1]+" unchanged")
		}
		list := c.ok("", "get", "configmaps", "-o", "yaml")
		wantLines(t, "apply of a listed kind", c.ok(list, "apply", "-f", "-"), "configmap/settings unchanged")
	})

	t.Run("not found", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		wantLines(t, "get missing", c.fails("", "get", "pod", "missing"), `Error from server (NotFound): pods "missing" not found`)
		r := c.run("", "get", "pods", "web", "missing")
		if r.code != 1 || !strings.Contains(r.stdout, "web") || strings.TrimSpace(r.stderr) != `Error from server (NotFound): pods "missing" not found` {
			t.Errorf("get of a found and a missing pod: %+v", r)
		}
	})

	t.Run("get -w prints the table, then changes", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var out, errOut syncBuffer
		done := make(chan int, 1)
		go func() {
			done <- cmd.Execute(ctx, c.args([]string{"get", "configmaps", "-w"}), cmd.Streams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
		}()
		waitFor(t, &out, "settings")
		c.ok("kind: ConfigMap\nmetadata: {name: watched}\ndata: {a: b}\n", "apply", "-f", "-")
		waitFor(t, &out, "watched")
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("get -w exited %d after cancel; stderr:\n%s", code, errOut.String())
			}
		case <-time.After(testDeadline):
			t.Fatal("get -w did not stop after its context was cancelled")
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME") || !strings.HasPrefix(lines[1], "settings") || !strings.HasPrefix(lines[2], "watched") {
			t.Errorf("get -w output:\n%s", out.String())
		}
	})

	t.Run("get -w -o yaml of one object", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var out, errOut syncBuffer
		done := make(chan int, 1)
		go func() {
			done <- cmd.Execute(ctx, c.args([]string{"get", "cm", "watched", "-w", "-o", "yaml", "--output-watch-events"}),
				cmd.Streams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
		}()
		waitFor(t, &out, "type: ADDED")
		wantLines(t, "delete", c.ok("", "delete", "configmap", "watched"), `configmap "watched" deleted`)
		waitFor(t, &out, "type: DELETED")
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("exit %d; stderr:\n%s", code, errOut.String())
		}
		if strings.Contains(out.String(), "name: settings") {
			t.Errorf("a watch of one object printed another:\n%s", out.String())
		}
	})

	t.Run("delete", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		wantLines(t, "delete pod", c.ok("", "delete", "pod", "web"), `pod "web" deleted`)
		wantLines(t, "get deleted", c.fails("", "get", "pods", "web"), `Error from server (NotFound): pods "web" not found`)
		r := c.run("", "delete", "-f", web)
		if r.code != 1 {
			t.Errorf("delete -f with one object gone: exit %d", r.code)
		}
		wantLines(t, "delete -f", r.stdout, `configmap "settings" deleted`, `deployment "web" deleted`)
		wantLines(t, "delete -f errors", r.stderr, `Error from server (NotFound): pods "web" not found`)
		c.ok("", "delete", "-f", web, "--ignore-not-found")
		c.ok("kind: ConfigMap\nmetadata: {name: a, labels: {group: g1}}\n---\nkind: ConfigMap\nmetadata: {name: b, labels: {group: g1}}\n", "apply", "-f", "-")
		wantLines(t, "delete -l", c.ok("", "delete", "cm", "-l", "group=g1"), `configmap "a" deleted`, `configmap "b" deleted`)
	})

	t.Run("namespaces", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		cm := "kind: ConfigMap\nmetadata: {name: cm-n, namespace: other}\n"
		wantContains(t, "conflicting -n", c.fails(cm, "apply", "-f", "-", "-n", "third"), `the namespace from the manifest ("other") does not match the namespace "third"`)
		wantLines(t, "apply into its namespace", c.ok(cm, "apply", "-f", "-"), "configmap/cm-n created")
		c.fails("", "get", "cm", "cm-n")
		wantLines(t, "get -n", c.ok("", "get", "cm", "cm-n", "-n", "other", "-o", "name"), "configmap/cm-n")
		wantLines(t, "delete -n", c.ok("", "delete", "cm", "cm-n", "-n", "other"), `configmap "cm-n" deleted`)
	})

	t.Run("a stopped replica costs no error", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		c.ok("kind: ConfigMap\nmetadata: {name: before}\n", "apply", "-f", "-")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var out, errOut syncBuffer
		done := make(chan int, 1)
		go func() {
			done <- cmd.Execute(ctx, c.args([]string{"get", "cm", "-w", "-o", "name"}), cmd.Streams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
		}()
		waitFor(t, &out, "configmap/before")
		// The watch's stream is on one of the two replicas: stopping each
		// in turn makes it resume on the other at least once.
		for i := range 2 {
			cluster.StopReplica(i)
			name := fmt.Sprintf("failover-%d", i)
			wantLines(t, "apply", c.ok("kind: ConfigMap\nmetadata: {name: "+name+"}\n", "apply", "-f", "-"), "configmap/"+name+" created")
			wantLines(t, "get", c.ok("", "get", "cm", name, "-o", "name"), "configmap/"+name)
			waitFor(t, &out, "configmap/"+name)
			cluster.StartReplica(i)
		}
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("get -w exited %d; stderr:\n%s", code, errOut.String())
		}
	})

	t.Run("get -w lists again when its version was compacted away", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var out, errOut syncBuffer
		done := make(chan int, 1)
		go func() {
			done <- cmd.Execute(ctx, c.args([]string{"get", "cm", "before", "-w", "-o", "name"}), cmd.Streams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
		}()
		waitFor(t, &out, "configmap/before")
		// With every replica down the watch cannot follow; the revisions
		// written meanwhile are compacted, so its resume point is gone.
		cluster.StopReplica(0)
		cluster.StopReplica(1)
		etcd := cluster.Etcd().Client(t)
		for i := range 2 {
			if _, err := etcd.Put(ctx, fmt.Sprintf("/test/bump-%d", i), "x"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := cluster.Compact(ctx); err != nil {
			t.Fatal(err)
		}
		cluster.StartReplica(0)
		cluster.StartReplica(1)
		waitFor(t, &errOut, "listing again")
		poll.For(t, testDeadline, "the object to be listed again", func(context.Context) error {
			if strings.Count(out.String(), "configmap/before") < 2 {
				return fmt.Errorf("output:\n%s\nstderr:\n%s", out.String(), errOut.String())
			}
			return nil
		})
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("get -w exited %d; stderr:\n%s", code, errOut.String())
		}
	})

	t.Run("cluster status", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		r := c.run("", "cluster", "status")
		if r.code != 0 {
			t.Fatalf("cluster status: %+v", r)
		}
		wantContains(t, "cluster status", r.stdout, "API SERVERS", "ETCD MEMBERS", "QUORUM: yes", "LEASES")
		out := c.ok("", "cluster", "status", "-o", "json")
		var st map[string]any
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("cluster status -o json: %v\n%s", err, out)
		}
		if st["self"] == nil {
			t.Errorf("cluster status -o json does not say which replica answered:\n%s", out)
		}
	})
}

// waitFor waits until out contains want.
func waitFor(t *testing.T, out *syncBuffer, want string) {
	t.Helper()
	poll.For(t, testDeadline, fmt.Sprintf("%q in the output", want), func(context.Context) error {
		if got := out.String(); !strings.Contains(got, want) {
			return fmt.Errorf("output:\n%s", got)
		}
		return nil
	})
}
