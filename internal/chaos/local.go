package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/testcluster"
)

// LocalTarget is a cluster of local processes started by the cluster
// harness (package testcluster): the same topology as compose, on loopback.
type LocalTarget struct {
	c     *testcluster.Cluster
	units []Unit
}

// NewLocalTarget wraps c, a cluster of 3 masters and its workers.
func NewLocalTarget(c *testcluster.Cluster) *LocalTarget {
	t := &LocalTarget{c: c}
	for i := range c.APIServers() {
		n := i + 1
		t.units = append(t.units,
			Unit{Name: fmt.Sprintf("%s-%d", localcluster.APIServerBinary, n), Role: APIServer, Index: n},
			Unit{Name: fmt.Sprintf("%s-%d", localcluster.ControllerManagerBinary, n), Role: ControllerManager, Index: n},
			Unit{Name: fmt.Sprintf("%s-%d", localcluster.SchedulerBinary, n), Role: Scheduler, Index: n})
	}
	for i, a := range c.NodeAgents() {
		t.units = append(t.units, Unit{Name: a.Process, Role: Worker, Index: i + 1, Node: a.Node})
	}
	return t
}

// Kind implements Target.
func (t *LocalTarget) Kind() string { return "local processes" }

// APIAddrs implements Target.
func (t *LocalTarget) APIAddrs() []string { return t.c.APIAddresses() }

// Units implements Target.
func (t *LocalTarget) Units() []Unit { return t.units }

// Kill implements Target.
func (t *LocalTarget) Kill(ctx context.Context, units ...Unit) error {
	return t.c.Kill(ctx, names(units)...)
}

// Stop implements Target.
func (t *LocalTarget) Stop(ctx context.Context, units ...Unit) error {
	for _, u := range units {
		if err := t.c.Stop(ctx, u.Name); err != nil {
			return err
		}
	}
	return nil
}

// Start implements Target: API servers first, so that the others find a
// quorum.
func (t *LocalTarget) Start(ctx context.Context, units ...Unit) error {
	for _, api := range []bool{true, false} {
		for _, u := range units {
			if (u.Role == APIServer) != api {
				continue
			}
			if err := t.c.Start(ctx, u.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// Pause implements Target with SIGSTOP.
func (t *LocalTarget) Pause(ctx context.Context, units ...Unit) error {
	return t.c.Pause(ctx, names(units)...)
}

// Unpause implements Target with SIGCONT.
func (t *LocalTarget) Unpause(_ context.Context, units ...Unit) error {
	return t.c.Resume(names(units)...)
}

// Freeze implements Target: Pause.
func (t *LocalTarget) Freeze(ctx context.Context, units ...Unit) error { return t.Pause(ctx, units...) }

// Thaw implements Target: Unpause.
func (t *LocalTarget) Thaw(ctx context.Context, units ...Unit) error { return t.Unpause(ctx, units...) }

// KillWorker implements Target.
func (t *LocalTarget) KillWorker(ctx context.Context, u Unit) error {
	_, err := t.c.KillWorker(ctx, u.Name)
	return err
}

// Cut implements Target: local processes share the host's loopback, which
// nothing here can cut.
func (t *LocalTarget) Cut(context.Context, Unit) error { return errUnsupported("network cut") }

// Heal implements Target.
func (t *LocalTarget) Heal(context.Context, Unit) error { return errUnsupported("network cut") }

// Restore implements Target.
func (t *LocalTarget) Restore(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := t.c.Restore(ctx); err != nil {
		return err
	}
	return t.c.WaitReady(ctx)
}

// EchoCommand implements Target: the echo binary beside the others.
func (t *LocalTarget) EchoCommand() string { return filepath.Join(t.c.BinDir(), "echo") }

// Logs implements Target: the log files of the role's processes.
func (t *LocalTarget) Logs(_ context.Context, role Role) (string, error) {
	var b strings.Builder
	for _, u := range t.units {
		if u.Role != role {
			continue
		}
		data, err := os.ReadFile(t.c.LogPath(u.Name))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		b.Write(data)
	}
	return b.String(), nil
}

var _ Target = (*LocalTarget)(nil)
