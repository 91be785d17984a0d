package testcluster

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/poll"
)

// SignalTimeout bounds the wait for a signalled process to be gone
// (SIGKILL, SIGTERM) or stopped (SIGSTOP): far above what it takes, so
// reaching it means something is wrong.
const SignalTimeout = 30 * time.Second

// Pid is the pid of the named process, or localcluster.ErrNotRunning
// (wrapped).
func (c *Cluster) Pid(name string) (int, error) { return c.lc.Pid(name) }

// Signal sends sig to the named process, by its pid, and returns at once:
// for a fault whose effect the caller measures or waits for itself.
func (c *Cluster) Signal(name string, sig syscall.Signal) error { return c.lc.Signal(name, sig) }

// Stop stops the named process: SIGTERM (and SIGCONT, should it be
// paused), then SIGKILL if it has not exited within the stop grace.
func (c *Cluster) Stop(ctx context.Context, name string) error {
	return c.lc.Stop(ctx, name, c.cfg.StopGrace)
}

// Kill SIGKILLs the named processes, all at once, and waits until each is
// gone.
func (c *Cluster) Kill(ctx context.Context, names ...string) error {
	for _, name := range names {
		if err := c.lc.Signal(name, syscall.SIGKILL); err != nil {
			return fmt.Errorf("testcluster: SIGKILL %s: %w", name, err)
		}
	}
	for _, name := range names {
		if err := c.waitGone(ctx, name, "after SIGKILL"); err != nil {
			return err
		}
	}
	return nil
}

// waitGone waits until the named process runs no more.
func (c *Cluster) waitGone(ctx context.Context, name, when string) error {
	err := poll.Until(ctx, SignalTimeout, fmt.Sprintf("%s to be gone %s", name, when), func(context.Context) error {
		_, err := c.lc.Pid(name)
		if errors.Is(err, localcluster.ErrNotRunning) {
			return nil
		}
		if err == nil {
			err = errors.New("it still runs")
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("testcluster: %w", err)
	}
	return nil
}

// Pause SIGSTOPs the named processes, all at once, and waits until every
// thread of each is stopped: kill(2) only queues the signal, and a test
// that goes on before the process is frozen tests nothing.
func (c *Cluster) Pause(ctx context.Context, names ...string) error {
	for _, name := range names {
		if err := c.lc.Signal(name, syscall.SIGSTOP); err != nil {
			return fmt.Errorf("testcluster: SIGSTOP %s: %w", name, err)
		}
	}
	for _, name := range names {
		err := poll.Until(ctx, SignalTimeout, name+" to be stopped", func(context.Context) error { return c.lc.CheckStopped(name) })
		if err != nil {
			return fmt.Errorf("testcluster: %w", err)
		}
	}
	return nil
}

// Resume SIGCONTs the named processes.
func (c *Cluster) Resume(names ...string) error {
	var errs []error
	for _, name := range names {
		if err := c.lc.Signal(name, syscall.SIGCONT); err != nil {
			errs = append(errs, fmt.Errorf("testcluster: SIGCONT %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Terminate SIGTERMs the named process and waits for it to exit, and
// returns how it ended: a clean stop is exit status 0. Only a process this
// program started has its exit status to collect, and only once: nothing
// else may look at the process (Pid, Status, the waits of this package)
// between the signal and Terminate's return, or it would reap the process
// and drop the status. It does not escalate to SIGKILL.
func (c *Cluster) Terminate(ctx context.Context, name string) (syscall.WaitStatus, error) {
	pid, err := c.lc.Pid(name)
	if err != nil {
		return 0, err
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return 0, fmt.Errorf("testcluster: SIGTERM %s (pid %d): %w", name, pid, err)
	}
	var ws syscall.WaitStatus
	err = poll.Until(ctx, SignalTimeout, fmt.Sprintf("%s (pid %d) to exit after SIGTERM", name, pid), func(context.Context) error {
		// Not a blocking wait: that could not be given up at the deadline.
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		switch {
		case err != nil:
			return fmt.Errorf("wait4: %w (only a process this program started can be waited for)", err)
		case got != pid:
			return errors.New("it still runs")
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("testcluster: %w", err)
	}
	return ws, nil
}

// Start starts the named process and waits until it is ready. One that
// still runs is taken to be on its way out (after a Signal) and is waited
// for first, for at most the stop grace: Start fails if it is still there.
func (c *Cluster) Start(ctx context.Context, name string) error {
	if _, err := c.lc.Pid(name); err == nil {
		waitCtx, cancel := context.WithTimeout(ctx, c.cfg.StopGrace)
		err := c.waitGone(waitCtx, name, "before its start")
		cancel()
		if err != nil {
			return err
		}
	}
	if _, err := c.lc.Start(ctx, name); err != nil {
		return err
	}
	readyCtx, cancel := context.WithTimeout(ctx, c.cfg.ReadyTimeout)
	defer cancel()
	return c.lc.WaitReady(readyCtx, name)
}

// Restart stops the named process (Stop) and starts it again (Start).
func (c *Cluster) Restart(ctx context.Context, name string) error {
	if err := c.Stop(ctx, name); err != nil {
		return err
	}
	return c.Start(ctx, name)
}

// Restore makes the cluster whole again: every paused process is thawed,
// every dead one started again (API servers first), and it waits until
// all are ready.
func (c *Cluster) Restore(ctx context.Context) error {
	for _, name := range c.Processes() {
		if err := c.lc.Signal(name, syscall.SIGCONT); err != nil && !errors.Is(err, localcluster.ErrNotRunning) {
			return fmt.Errorf("testcluster: thaw %s: %w", name, err)
		}
	}
	return c.lc.Up(ctx)
}

// CheckReady asks the named process once whether it is ready (see
// localcluster.Cluster.CheckReady); nil means it is.
func (c *Cluster) CheckReady(ctx context.Context, name string) error {
	return c.lc.CheckReady(ctx, name)
}

// WaitReady waits until every process is ready, for at most the ready
// timeout; it fails at once, with the end of its log, if one has died.
func (c *Cluster) WaitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ReadyTimeout)
	defer cancel()
	return c.lc.WaitReady(ctx)
}
