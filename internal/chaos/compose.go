package chaos

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/capstan-dev/capstan/internal/composecluster"
)

// ComposeTarget is the compose cluster (package composecluster).
type ComposeTarget struct {
	c     *composecluster.Cluster
	units []Unit
}

// NewComposeTarget wraps c.
func NewComposeTarget(c *composecluster.Cluster) *ComposeTarget {
	t := &ComposeTarget{c: c}
	for i, m := range composecluster.Masters {
		n := i + 1
		t.units = append(t.units,
			Unit{Name: m, Role: APIServer, Index: n},
			Unit{Name: composecluster.ControllerManager(m), Role: ControllerManager, Index: n},
			Unit{Name: composecluster.Scheduler(m), Role: Scheduler, Index: n})
	}
	for i, w := range composecluster.Workers {
		t.units = append(t.units, Unit{Name: w, Role: Worker, Index: i + 1, Node: w})
	}
	return t
}

// Kind implements Target.
func (t *ComposeTarget) Kind() string { return "compose" }

// APIAddrs implements Target.
func (t *ComposeTarget) APIAddrs() []string { return t.c.APIAddrs() }

// Units implements Target.
func (t *ComposeTarget) Units() []Unit { return t.units }

// Kill implements Target: docker compose kill.
func (t *ComposeTarget) Kill(ctx context.Context, units ...Unit) error {
	return t.c.Kill(ctx, names(units)...)
}

// Stop implements Target: docker compose stop.
func (t *ComposeTarget) Stop(ctx context.Context, units ...Unit) error {
	return t.c.Stop(ctx, names(units)...)
}

// Start implements Target: docker compose start, then a wait for health.
func (t *ComposeTarget) Start(ctx context.Context, units ...Unit) error {
	if err := t.c.Start(ctx, names(units)...); err != nil {
		return err
	}
	return t.c.WaitHealthy(ctx, 2*time.Minute, names(units)...)
}

// Pause implements Target: docker compose pause (the cgroup freezer).
func (t *ComposeTarget) Pause(ctx context.Context, units ...Unit) error {
	return t.c.Pause(ctx, names(units)...)
}

// Unpause implements Target.
func (t *ComposeTarget) Unpause(ctx context.Context, units ...Unit) error {
	return t.c.Unpause(ctx, names(units)...)
}

// Freeze implements Target: docker compose kill -s STOP.
func (t *ComposeTarget) Freeze(ctx context.Context, units ...Unit) error {
	return t.c.Signal(ctx, "STOP", names(units)...)
}

// Thaw implements Target: docker compose kill -s CONT.
func (t *ComposeTarget) Thaw(ctx context.Context, units ...Unit) error {
	return t.c.Signal(ctx, "CONT", names(units)...)
}

// KillWorker implements Target: the pods are processes in the worker's
// container, so killing it kills them.
func (t *ComposeTarget) KillWorker(ctx context.Context, u Unit) error {
	return t.c.Kill(ctx, u.Name)
}

// Cut implements Target: docker network disconnect.
func (t *ComposeTarget) Cut(ctx context.Context, u Unit) error { return t.c.Disconnect(ctx, u.Name) }

// Heal implements Target: docker network connect.
func (t *ComposeTarget) Heal(ctx context.Context, u Unit) error { return t.c.Connect(ctx, u.Name) }

// Restore implements Target: every container connected, thawed, unpaused
// and started, then healthy.
func (t *ComposeTarget) Restore(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	all := names(t.units)
	states, err := t.c.States(ctx, all...)
	if err != nil {
		return err
	}
	var paused, stopped, running []string
	for _, u := range all {
		st := states[u]
		switch st.Status {
		case "paused":
			paused = append(paused, u)
		case "exited", "created", "dead":
			stopped = append(stopped, u)
		case "running":
			running = append(running, u)
		}
		if !st.Connected {
			if err := t.c.Connect(ctx, u); err != nil {
				return err
			}
		}
	}
	if len(paused) > 0 {
		if err := t.c.Unpause(ctx, paused...); err != nil {
			return err
		}
	}
	if len(running) > 0 {
		// A SIGSTOPped process looks "running"; CONT is harmless otherwise.
		if err := t.c.Signal(ctx, "CONT", running...); err != nil {
			return err
		}
	}
	if len(stopped) > 0 {
		if err := t.c.Start(ctx, stopped...); err != nil {
			return err
		}
	}
	if err := t.c.WaitHealthy(ctx, timeout, all...); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	return nil
}

// EchoCommand implements Target: the worker image holds /echo.
func (t *ComposeTarget) EchoCommand() string { return "/echo" }

// Logs implements Target: docker logs of the role's containers.
func (t *ComposeTarget) Logs(ctx context.Context, role Role) (string, error) {
	var b strings.Builder
	for _, u := range t.units {
		if u.Role != role {
			continue
		}
		out, err := t.c.Compose(ctx, "logs", "--no-color", u.Name)
		if err != nil {
			return "", err
		}
		b.WriteString(out)
	}
	return b.String(), nil
}

var _ Target = (*ComposeTarget)(nil)
