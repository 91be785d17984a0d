package runtime

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// Probe defaults, as in Kubernetes.
const (
	defaultProbePeriod           = 10 * time.Second
	defaultProbeTimeout          = time.Second
	defaultProbeSuccessThreshold = 1
	defaultProbeFailureThreshold = 3
	defaultProbeHost             = "127.0.0.1"
)

// probeRunner is the probing of one run of a container.
type probeRunner struct {
	hash   string
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// stop ends the probes and waits for them.
func (r *probeRunner) stop() {
	r.cancel()
	r.wg.Wait()
}

// startProbes probes the container as spec says until the runner stops:
// readiness sets readinessOK, starting from ready (for an adopted process
// that was ready, so that an agent restart does not make it flap), a
// liveness failure is sent on livenessFailures (once; the run ends after
// it).
func (c *container) startProbes(ctx context.Context, spec *capstanv1.Container, ready bool, livenessFailures chan<- string) *probeRunner {
	ctx, cancel := context.WithCancel(ctx)
	r := &probeRunner{hash: probeHash(spec), cancel: cancel}
	env := c.environment(spec)
	dir := c.workingDir(spec)
	c.rt.mu.Lock()
	c.readinessOK = ready
	c.rt.mu.Unlock()
	if pr := spec.GetLivenessProbe(); pr != nil {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			c.probeLoop(ctx, pr, env, dir, true, func(ok bool, why string) {
				if !ok {
					select {
					case livenessFailures <- why:
					default:
					}
				}
			})
		}()
	}
	if pr := spec.GetReadinessProbe(); pr != nil {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			c.probeLoop(ctx, pr, env, dir, ready, func(ok bool, why string) {
				c.rt.mu.Lock()
				c.readinessOK = ok
				c.rt.mu.Unlock()
				c.writeCheckpoint()
				c.rt.notify(c.pod.uid)
				c.rt.log.Info("readiness changed", "pod-uid", c.pod.uid, "container", c.name, "ready", ok, "probe-result", why)
			})
		}()
	} else {
		c.rt.notify(c.pod.uid)
	}
	return r
}

func secondsOr(v int32, def time.Duration) time.Duration {
	if v <= 0 {
		return def
	}
	return time.Duration(v) * time.Second
}

func countOr(v int32, def int) int {
	if v <= 0 {
		return def
	}
	return int(v)
}

// probeLoop probes every period after the initial delay and reports each
// change of the verdict: passing after success_threshold successes in a
// row, failing after failure_threshold failures in a row. It starts from
// passing (liveness: the container is presumed alive) or failing
// (readiness: not ready until shown).
func (c *container) probeLoop(ctx context.Context, pr *capstanv1.Probe, env []string, dir string, passing bool, report func(ok bool, why string)) {
	clk := c.rt.clock
	if delay := time.Duration(pr.GetInitialDelaySeconds()) * time.Second; delay > 0 {
		t := clk.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
	period := secondsOr(pr.GetPeriodSeconds(), defaultProbePeriod)
	timeout := secondsOr(pr.GetTimeoutSeconds(), defaultProbeTimeout)
	successThreshold := countOr(pr.GetSuccessThreshold(), defaultProbeSuccessThreshold)
	failureThreshold := countOr(pr.GetFailureThreshold(), defaultProbeFailureThreshold)
	ticker := clk.NewTicker(period)
	defer ticker.Stop()
	successes, failures := 0, 0
	for {
		err := c.probeOnce(ctx, pr, env, dir, timeout)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			successes, failures = successes+1, 0
			if !passing && successes >= successThreshold {
				passing = true
				report(true, "success")
			}
		} else {
			successes, failures = 0, failures+1
			if passing && failures >= failureThreshold {
				passing = false
				report(false, err.Error())
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		}
	}
}

// probeOnce runs one probe; nil is success.
func (c *container) probeOnce(ctx context.Context, pr *capstanv1.Probe, env []string, dir string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case pr.GetExec() != nil:
		return execProbe(ctx, pr.GetExec().GetCommand(), env, dir)
	case pr.GetHttpGet() != nil:
		return c.httpProbe(ctx, pr.GetHttpGet())
	case pr.GetTcpSocket() != nil:
		return tcpProbe(ctx, pr.GetTcpSocket(), c.pod.ports.nodePort(pr.GetTcpSocket().GetPort()))
	default:
		return errors.New("probe has no exec, http_get or tcp_socket")
	}
}

func execProbe(ctx context.Context, command []string, env []string, dir string) error {
	if len(command) == 0 {
		return errors.New("exec probe has no command")
	}
	path, err := lookPath(command[0], dir, env)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, path, command[1:]...)
	cmd.Args[0] = command[0]
	cmd.Env = env
	cmd.Dir = dir
	// Its own group, killed whole on timeout: a probe's children must not
	// outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("exec probe timed out: %w", ctx.Err())
	}
	if err != nil {
		return fmt.Errorf("exec probe: %w", err)
	}
	return nil
}

func (c *container) httpProbe(ctx context.Context, action *capstanv1.HttpGetAction) error {
	host := action.GetHost()
	if host == "" {
		host = defaultProbeHost
	}
	path := action.GetPath()
	if path == "" || path[0] != '/' {
		path = "/" + path
	}
	port := c.pod.ports.nodePort(action.GetPort())
	url := "http://" + net.JoinHostPort(host, strconv.Itoa(int(port))) + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("http probe: %w", err)
	}
	req.Header.Set("User-Agent", "capstan-node-agent-probe")
	resp, err := c.rt.probes.Do(req)
	if err != nil {
		return fmt.Errorf("http probe: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("http probe: GET %s: status %d", url, resp.StatusCode)
	}
	return nil
}

func tcpProbe(ctx context.Context, action *capstanv1.TcpSocketAction, port int32) error {
	host := action.GetHost()
	if host == "" {
		host = defaultProbeHost
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("tcp probe: %w", err)
	}
	return conn.Close()
}
