package testcluster

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/capstan-dev/capstan/internal/localcluster"
)

// ExtraCandidate is one more candidate for a lease-gated component's lease,
// started while the cluster runs, with API endpoints and arguments of its
// own: a candidate that reaches the API servers only through proxies a test
// can freeze (package faultproxy), so that it is cut off from them while
// its process and its connections stay alive, as in a network partition.
type ExtraCandidate struct {
	// Binary is localcluster.ControllerManagerBinary or
	// localcluster.SchedulerBinary; the lease it campaigns for has the
	// same name.
	Binary string
	// Name is the process's name and the candidate's identity; no other
	// process of the cluster may have it.
	Name string
	// Servers are its --server; empty: every API server.
	Servers []string
	// Args come after the arguments Config.Args gives every process of
	// the binary, so they override them.
	Args []string
}

func (e ExtraCandidate) validate() error {
	switch {
	case e.Binary != localcluster.ControllerManagerBinary && e.Binary != localcluster.SchedulerBinary:
		return fmt.Errorf("testcluster: extra candidate %q: binary %q is not a lease-gated component (%s, %s)",
			e.Name, e.Binary, localcluster.ControllerManagerBinary, localcluster.SchedulerBinary)
	case e.Name == "":
		return errors.New("testcluster: an extra candidate needs a name")
	}
	return nil
}

// StartCandidate adds the extra candidate to the cluster, starts it and
// waits until its /healthz answers. From then on it is one of its lease's
// Candidates: the waits on the lease (CheckSettled, WaitTakeover) count
// it, Restore starts it again if it is dead, and Close stops it. Like
// Start, it tries once more on a fresh port if the first start fails.
// RemoveCandidate takes it out again.
func (c *Cluster) StartCandidate(ctx context.Context, spec ExtraCandidate) error {
	if err := spec.validate(); err != nil {
		return err
	}
	servers := spec.Servers
	if len(servers) == 0 {
		servers = c.APIAddresses()
	}
	var errs []error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		port, err := c.freePort()
		if err != nil {
			return err
		}
		p := localcluster.LeaseGated(c.binDir, spec.Binary, spec.Name, servers, port)
		p.Args = append(p.Args, c.cfg.Args[spec.Binary]...)
		p.Args = append(p.Args, spec.Args...)
		if err := c.lc.Add(p); err != nil {
			return fmt.Errorf("testcluster: extra candidate %s: %w", spec.Name, err)
		}
		c.mu.Lock()
		c.ports[port] = true
		c.candidates[spec.Binary] = append(slices.Clone(c.candidates[spec.Binary]), spec.Name)
		c.healthURLs[spec.Name] = p.HealthURL
		c.extraCandidates[spec.Name] = spec.Binary
		c.mu.Unlock()
		if err = c.Start(ctx, spec.Name); err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("attempt %d: %w", attempt, err))
		if err := c.RemoveCandidate(context.WithoutCancel(ctx), spec.Name); err != nil {
			return errors.Join(append(errs, err)...)
		}
	}
	return fmt.Errorf("testcluster: start extra candidate %s: %w", spec.Name, errors.Join(errs...))
}

// RemoveCandidate stops a candidate StartCandidate added (SIGTERM: a leader
// releases its lease) and takes it out of the cluster. Its log stays.
func (c *Cluster) RemoveCandidate(ctx context.Context, name string) error {
	c.mu.Lock()
	lease, ok := c.extraCandidates[name]
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("testcluster: %s is no candidate that StartCandidate added", name)
	}
	err := c.lc.Remove(ctx, name, c.cfg.StopGrace)
	c.mu.Lock()
	c.candidates[lease] = slices.DeleteFunc(slices.Clone(c.candidates[lease]), func(n string) bool { return n == name })
	delete(c.healthURLs, name)
	delete(c.extraCandidates, name)
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("testcluster: remove candidate %s: %w", name, err)
	}
	return nil
}
