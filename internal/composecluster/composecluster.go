// Package composecluster drives Capstan's docker compose cluster — the
// repository's docker-compose.yml, started through deploy/compose.sh, which
// runs the `docker compose` plugin where it is installed and
// `docker-compose` (v1) otherwise — for the docker tests and chaos runs:
// up under a project name of its own and API ports of its own (so it runs
// beside a user's cluster), the faults users give containers (kill, stop,
// start, pause, unpause, a signal, a network cut and its repair), the
// containers' health, and down with the volumes.
//
// Every call runs the compose or docker CLI and waits for it; a Cluster
// holds no goroutine. The containers outlive the program unless it calls
// Down.
package composecluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/poll"
)

// Available reports whether a Docker engine answers (`docker info`).
func Available(ctx context.Context) bool {
	return exec.CommandContext(ctx, "docker", "info").Run() == nil
}

// Config says which cluster to start.
type Config struct {
	// Root is the repository's root: it holds docker-compose.yml and
	// deploy/compose.sh.
	Root string
	// Project is the compose project name: containers, network and volumes
	// are named after it.
	Project string
	// APIPorts are the host ports of the three API replicas on 127.0.0.1;
	// zeros are replaced by free ports.
	APIPorts [3]int
	// ImageTag is CAPSTAN_IMAGE_TAG; empty means the one `make images`
	// wrote to .env (or the caller's environment).
	ImageTag string
	// Compose picks the compose that runs the project: Plugin, Standalone,
	// or "" for deploy/compose.sh's choice (the plugin where it exists).
	Compose string
}

// The composes deploy/compose.sh can run (CAPSTAN_COMPOSE).
const (
	// Plugin is `docker compose`, the Docker CLI plugin (v2 and later).
	Plugin = "plugin"
	// Standalone is `docker-compose`, the standalone v1 program.
	Standalone = "standalone"
)

// Composes lists the composes this machine has, the plugin first.
func Composes(ctx context.Context) []string {
	var have []string
	if exec.CommandContext(ctx, "docker", "compose", "version").Run() == nil {
		have = append(have, Plugin)
	}
	if exec.CommandContext(ctx, "docker-compose", "version").Run() == nil {
		have = append(have, Standalone)
	}
	return have
}

// Cluster is a compose project that Up started. The faults go to the
// containers through the docker CLI by id (a container keeps its id across
// stop and start), which answers in milliseconds where docker-compose v1
// takes most of a second per call.
type Cluster struct {
	cfg Config
	ids map[string]string // service → container id
}

// The services of docker-compose.yml.
var (
	Masters = []string{"master-1", "master-2", "master-3"}
	Workers = []string{"worker-1", "worker-2", "worker-3"}
)

// ControllerManager and Scheduler name master's lease-gated services.
func ControllerManager(master string) string { return master + "-controller-manager" }

// Scheduler is the scheduler service of master.
func Scheduler(master string) string { return master + "-scheduler" }

// MasterServices are the three services of master: its API server (with
// its etcd member), controller manager and scheduler.
func MasterServices(master string) []string {
	return []string{master, ControllerManager(master), Scheduler(master)}
}

// Services are every service of the cluster.
func Services() []string {
	var all []string
	for _, m := range Masters {
		all = append(all, MasterServices(m)...)
	}
	return append(all, Workers...)
}

// Up starts the cluster (removing what a previous run of the same project
// left, volumes included) and waits until every container is healthy.
func Up(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Root == "" || cfg.Project == "" {
		return nil, errors.New("composecluster: Config needs Root and Project")
	}
	free, err := localcluster.FreeLoopbackPorts(len(cfg.APIPorts))
	if err != nil {
		return nil, err
	}
	for i, p := range cfg.APIPorts {
		if p == 0 {
			cfg.APIPorts[i] = free[i]
		}
	}
	c := &Cluster{cfg: cfg, ids: map[string]string{}}
	if _, err := c.Compose(ctx, "down", "-v", "--remove-orphans"); err != nil {
		return nil, err
	}
	if _, err := c.Compose(ctx, "up"); err != nil {
		return nil, err
	}
	for _, s := range Services() {
		out, err := c.Compose(ctx, "ps", "-q", s)
		if err != nil {
			return nil, err
		}
		id := strings.TrimSpace(out)
		if id == "" || strings.Contains(id, "\n") {
			return nil, fmt.Errorf("composecluster: service %s has container(s) %q", s, id)
		}
		c.ids[s] = id
	}
	return c, nil
}

// APIAddrs are the API replicas' addresses on the host, master-1 first.
func (c *Cluster) APIAddrs() []string {
	var addrs []string
	for _, p := range c.cfg.APIPorts {
		addrs = append(addrs, net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	}
	return addrs
}

// Project is the compose project's name.
func (c *Cluster) Project() string { return c.cfg.Project }

// Env is the environment compose runs with.
func (c *Cluster) Env() []string {
	env := append(os.Environ(), "COMPOSE_PROJECT_NAME="+c.cfg.Project)
	for i, p := range c.cfg.APIPorts {
		env = append(env, fmt.Sprintf("CAPSTAN_API_PORT_%d=%d", i+1, p))
	}
	if c.cfg.ImageTag != "" {
		env = append(env, "CAPSTAN_IMAGE_TAG="+c.cfg.ImageTag)
	}
	if c.cfg.Compose != "" {
		env = append(env, "CAPSTAN_COMPOSE="+c.cfg.Compose)
	}
	return env
}

// Compose runs deploy/compose.sh with args (compose's own arguments, or
// up / down as that script defines them) and returns its standard output;
// a failure carries both outputs.
func (c *Cluster) Compose(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.cfg.Root, "deploy", "compose.sh"), args...)
	cmd.Dir = c.cfg.Root
	cmd.Env = c.Env()
	return run(cmd)
}

// Docker runs the docker CLI with args.
func (c *Cluster) Docker(ctx context.Context, args ...string) (string, error) {
	return run(exec.CommandContext(ctx, "docker", args...))
}

func run(cmd *exec.Cmd) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w\n%s%s", strings.Join(cmd.Args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// Container is the id of service's container.
func (c *Cluster) Container(_ context.Context, service string) (string, error) {
	id, ok := c.ids[service]
	if !ok {
		return "", fmt.Errorf("composecluster: no service %s", service)
	}
	return id, nil
}

// docker runs the docker CLI with args followed by the services' container ids.
func (c *Cluster) dockerOn(ctx context.Context, args []string, services []string) error {
	for _, s := range services {
		id, err := c.Container(ctx, s)
		if err != nil {
			return err
		}
		args = append(args, id)
	}
	_, err := c.Docker(ctx, args...)
	return err
}

// Kill SIGKILLs the services' containers.
func (c *Cluster) Kill(ctx context.Context, services ...string) error {
	return c.dockerOn(ctx, []string{"kill"}, services)
}

// Signal sends sig (a name such as STOP or CONT) to the main process of
// the services' containers.
func (c *Cluster) Signal(ctx context.Context, sig string, services ...string) error {
	return c.dockerOn(ctx, []string{"kill", "--signal", sig}, services)
}

// Stop stops the services' containers (SIGTERM, SIGKILL after 10 s).
func (c *Cluster) Stop(ctx context.Context, services ...string) error {
	return c.dockerOn(ctx, []string{"stop"}, services)
}

// Start starts the services' stopped or killed containers.
func (c *Cluster) Start(ctx context.Context, services ...string) error {
	return c.dockerOn(ctx, []string{"start"}, services)
}

// Pause freezes the services' containers (the cgroup freezer).
func (c *Cluster) Pause(ctx context.Context, services ...string) error {
	return c.dockerOn(ctx, []string{"pause"}, services)
}

// Unpause thaws them.
func (c *Cluster) Unpause(ctx context.Context, services ...string) error {
	return c.dockerOn(ctx, []string{"unpause"}, services)
}

// Network is the compose network every service is on.
func (c *Cluster) Network() string { return c.cfg.Project + "_default" }

// Disconnect cuts service off the network: its peers' connections to it
// hang, and its own fail.
func (c *Cluster) Disconnect(ctx context.Context, service string) error {
	id, err := c.Container(ctx, service)
	if err != nil {
		return err
	}
	_, err = c.Docker(ctx, "network", "disconnect", "--force", c.Network(), id)
	return err
}

// Connect puts service back on the network under its service name.
func (c *Cluster) Connect(ctx context.Context, service string) error {
	id, err := c.Container(ctx, service)
	if err != nil {
		return err
	}
	_, err = c.Docker(ctx, "network", "connect", "--alias", service, c.Network(), id)
	return err
}

// ContainerState is what docker inspect says of a container.
type ContainerState struct {
	// Status: running, paused, exited, created, restarting, dead.
	Status string
	// Health: healthy, unhealthy, starting, or empty without a check.
	Health string
	// Connected: on the compose network.
	Connected bool
}

// States inspects the services' containers in one call.
func (c *Cluster) States(ctx context.Context, services ...string) (map[string]ContainerState, error) {
	args := []string{"inspect", "-f", "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}} {{range $k, $v := .NetworkSettings.Networks}}{{$k}},{{end}}"}
	for _, s := range services {
		id, err := c.Container(ctx, s)
		if err != nil {
			return nil, err
		}
		args = append(args, id)
	}
	out, err := c.Docker(ctx, args...)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(services) {
		return nil, fmt.Errorf("composecluster: docker inspect of %d containers said %q", len(services), out)
	}
	states := map[string]ContainerState{}
	for i, l := range lines {
		f := strings.Fields(l)
		st := ContainerState{Status: f[0]}
		if len(f) > 1 && f[1] != "-" {
			st.Health = f[1]
		}
		if len(f) > 2 {
			st.Connected = slices.Contains(strings.Split(f[2], ","), c.Network())
		}
		states[services[i]] = st
	}
	return states, nil
}

// State is a container's state and health as docker inspect says them:
// "running healthy", "paused healthy", "exited ", ...
func (c *Cluster) State(ctx context.Context, service string) (string, error) {
	st, err := c.States(ctx, service)
	if err != nil {
		return "", err
	}
	return st[service].Status + " " + st[service].Health, nil
}

// WaitHealthy waits until every one of services is running and healthy.
func (c *Cluster) WaitHealthy(ctx context.Context, timeout time.Duration, services ...string) error {
	return poll.Until(ctx, timeout, "containers healthy", func(ctx context.Context) error {
		states, err := c.States(ctx, services...)
		if err != nil {
			return err
		}
		var pending []string
		for _, s := range services {
			if st := states[s]; st.Status != "running" || st.Health != "healthy" {
				pending = append(pending, s+": "+st.Status+" "+st.Health)
			}
		}
		if len(pending) > 0 {
			return fmt.Errorf("not healthy: %s", strings.Join(pending, ", "))
		}
		return nil
	})
}

// Down stops and removes the containers, the network and the volumes.
func (c *Cluster) Down(ctx context.Context) error {
	_, err := c.Compose(ctx, "down", "-v", "--remove-orphans", "--timeout", "5")
	return err
}

// Logs are the last lines of each service's log, timestamped (lines <= 0:
// all of them).
func (c *Cluster) Logs(ctx context.Context, lines int) string {
	tail := "all"
	if lines > 0 {
		tail = strconv.Itoa(lines)
	}
	out, err := c.Compose(ctx, "logs", "--no-color", "--timestamps", "--tail="+tail)
	if err != nil {
		return err.Error()
	}
	return out
}
