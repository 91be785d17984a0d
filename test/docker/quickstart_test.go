//go:build docker

// Package docker holds the tests that need a Docker engine: the README's
// quick start on the compose cluster, step by step from the host, as a new
// user would take it. `make test` runs them when `docker info` succeeds
// (after `make images`) and says SKIPPED otherwise.
package docker

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capstan-dev/capstan/internal/composecluster"
	"github.com/capstan-dev/capstan/internal/poll"
)

// deadline bounds every wait for a state, far above what it takes.
const deadline = 3 * time.Minute

// repoRoot is the repository's root, two levels up from this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// binDir is where `make build` put the binaries ($CAPSTAN_BIN_DIR, else bin/).
func binDir(t *testing.T) string {
	if d := os.Getenv("CAPSTAN_BIN_DIR"); d != "" {
		return d
	}
	return filepath.Join(repoRoot(t), "bin")
}

// composes are the composes to test with: every one this machine has.
func composes(t *testing.T) []string {
	t.Helper()
	if !composecluster.Available(t.Context()) {
		t.Skip("SKIPPED: no Docker engine (docker info failed)")
	}
	have := composecluster.Composes(t.Context())
	if len(have) == 0 {
		t.Fatal("neither `docker compose` nor `docker-compose` runs here; .ci/run builds the plugin (make compose-plugin)")
	}
	return have
}

// startCluster starts the compose cluster with compose (a
// composecluster.Plugin or Standalone) under a project of the test's own,
// on free API ports, and takes it down (volumes included) at the end.
func startCluster(t *testing.T, compose string) *composecluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	c, err := composecluster.Up(ctx, composecluster.Config{Root: repoRoot(t), Project: "capstan-docker-test", Compose: compose})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if t.Failed() {
			t.Logf("the containers' last log lines:\n%s", c.Logs(ctx, 40))
		}
		if err := c.Down(ctx); err != nil {
			t.Errorf("down: %v", err)
		}
	})
	return c
}

// capctl runs bin/capctl against the cluster's three replicas.
func capctl(ctx context.Context, t *testing.T, c *composecluster.Cluster, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir(t), "capctl"), append([]string{"--server", strings.Join(c.APIAddrs(), ",")}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("capctl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// status is what `capctl cluster status -o json` says, in part.
type status struct {
	Leases []struct {
		Name           string `json:"name"`
		HolderIdentity string `json:"holderIdentity"`
		Epoch          int64  `json:"epoch"`
		SessionReplica string `json:"sessionReplica"`
	} `json:"leases"`
}

func clusterStatus(ctx context.Context, t *testing.T, c *composecluster.Cluster) (status, error) {
	var s status
	out, err := capctl(ctx, t, c, "", "cluster", "status", "-o", "json")
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		return s, fmt.Errorf("%v: %s", err, out)
	}
	return s, nil
}

const echoReplicaSet = `kind: ReplicaSet
metadata: {name: echo}
spec:
  replicas: 3
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: echo
        command: ["/echo"]
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
        resources: {requests: {cpu: 100m, memory: 32Mi}}
`

// TestQuickStart takes the README's quick start on the compose cluster,
// with each compose this machine has (the `docker compose` plugin and
// Debian's `docker-compose`): grpcurl answers on all three published
// ports; a ReplicaSet of echo pods runs on the workers; capctl
// port-forward reaches one from the host; a whole master (API server,
// controller manager, scheduler) stopped moves the leases it held and
// leaves the rest serving; started again, it rejoins.
func TestQuickStart(t *testing.T) {
	for _, compose := range composes(t) {
		t.Run(compose, func(t *testing.T) { quickStart(t, compose) })
	}
}

// A bare `up` before `make images` has built anything (no .env, no
// CAPSTAN_IMAGE_TAG) fails at once, saying how to build the images, and
// creates nothing.
func TestBareComposeUpSaysHowToBuildImages(t *testing.T) {
	for _, compose := range composes(t) {
		t.Run(compose, func(t *testing.T) {
			dir := t.TempDir()
			data, err := os.ReadFile(filepath.Join(repoRoot(t), "docker-compose.yml"))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "docker-compose.yml"), data, 0o644); err != nil {
				t.Fatal(err)
			}
			argv := []string{"docker", "compose", "up", "-d"}
			if compose == composecluster.Standalone {
				argv = []string{"docker-compose", "up", "-d"}
			}
			const project = "capstan-bare-up-test"
			cmd := exec.CommandContext(t.Context(), argv[0], argv[1:]...)
			cmd.Dir = dir
			for _, kv := range os.Environ() {
				if !strings.HasPrefix(kv, "CAPSTAN_IMAGE_TAG=") && !strings.HasPrefix(kv, "COMPOSE_") {
					cmd.Env = append(cmd.Env, kv)
				}
			}
			cmd.Env = append(cmd.Env, "COMPOSE_PROJECT_NAME="+project)
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), "make images") {
				t.Errorf("%s in a checkout without images: %v\n%s\nwant a failure that says to run make images", strings.Join(argv, " "), err, out)
			}
			ps, err := exec.CommandContext(t.Context(), "docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+project).Output()
			if err != nil || len(strings.TrimSpace(string(ps))) > 0 {
				t.Errorf("containers of %s after the failed up: %q, %v; want none", project, ps, err)
			}
		})
	}
}

func quickStart(t *testing.T, compose string) {
	c := startCluster(t, compose)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	root := repoRoot(t)

	for _, addr := range c.APIAddrs() {
		cmd := exec.CommandContext(ctx, "go", "tool", "-modfile=tools/go.mod", "grpcurl", "-plaintext", addr, "list")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "capstan.v1.PodService") {
			t.Fatalf("grpcurl list on %s: %v\n%s", addr, err, out)
		}
	}

	if _, err := capctl(ctx, t, c, echoReplicaSet, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	var pod string
	poll.For(t, deadline, "3 echo pods Running and Ready", func(ctx context.Context) error {
		out, err := capctl(ctx, t, c, "", "get", "pods", "--no-headers")
		if err != nil {
			return err
		}
		ready := 0
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(line); len(f) >= 3 && f[1] == "1/1" && f[2] == "Running" {
				ready++
				pod = f[0]
			}
		}
		if ready != 3 {
			return fmt.Errorf("pods:\n%s", out)
		}
		return nil
	})

	t.Run("port-forward", func(t *testing.T) {
		cmd := exec.Command(filepath.Join(binDir(t), "capctl"), "--server", strings.Join(c.APIAddrs(), ","), "port-forward", "pod/"+pod, ":8080")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		lines := make(chan string, 4)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
			exited <- cmd.Wait()
		}()
		defer func() {
			_ = cmd.Process.Signal(syscall.SIGTERM) // by its pid
			for range lines {
			}
			if err := <-exited; err != nil {
				t.Errorf("capctl port-forward, interrupted: %v", err)
			}
		}()
		var local string
		select {
		case line := <-lines:
			if _, err := fmt.Sscanf(line, "Forwarding from %s", &local); err != nil {
				t.Fatalf("capctl port-forward printed %q", line)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("capctl port-forward printed nothing in 30 s")
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+local+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !strings.HasPrefix(string(body), pod+" on worker-") {
			t.Fatalf("GET / through port-forward: %q, %v; want %q on a worker", body, err, pod)
		}
	})

	t.Run("a stopped master moves its leases", func(t *testing.T) {
		before, err := clusterStatus(ctx, t, c)
		if err != nil {
			t.Fatal(err)
		}
		var cm struct {
			holder string
			epoch  int64
		}
		for _, l := range before.Leases {
			if l.Name == "controller-manager" {
				cm.holder, cm.epoch = l.HolderIdentity, l.Epoch
			}
		}
		// controller-manager-2_1a2b3c4d runs on master-2.
		n := strings.TrimPrefix(strings.SplitN(cm.holder, "_", 2)[0], "controller-manager-")
		master := "master-" + n
		if cm.holder == "" || !strings.Contains("123", n) || len(n) != 1 {
			t.Fatalf("controller-manager lease holder %q", cm.holder)
		}
		if err := c.Stop(ctx, composecluster.MasterServices(master)...); err != nil {
			t.Fatal(err)
		}
		poll.For(t, deadline, "another controller manager to hold the lease", func(ctx context.Context) error {
			s, err := clusterStatus(ctx, t, c)
			if err != nil {
				return err
			}
			for _, l := range s.Leases {
				if l.Name == "controller-manager" && l.Epoch > cm.epoch && l.HolderIdentity != "" && !strings.HasPrefix(l.HolderIdentity, "controller-manager-"+n+"_") {
					t.Logf("%s stopped: controller-manager lease %s (epoch %d) -> %s (epoch %d)", master, cm.holder, cm.epoch, l.HolderIdentity, l.Epoch)
					return nil
				}
			}
			return fmt.Errorf("leases %+v", s.Leases)
		})
		if err := c.Start(ctx, composecluster.MasterServices(master)...); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitHealthy(ctx, deadline, composecluster.Services()...); err != nil {
			t.Fatal(err)
		}
	})
}
