package app

import (
	"context"
	"fmt"

	"github.com/capstan-dev/capstan/internal/leaderelection/component"
	"github.com/capstan-dev/capstan/services/scheduler/internal/scheduler"
)

// Run runs the scheduler until ctx ends: it campaigns for the lease and,
// while it leads, schedules pods with the leadership's fenced context. When
// ctx ends it stops, releases the lease and returns nil. In probe mode
// (--health-probe) it only checks the health URL.
func Run(ctx context.Context, opts Options) error {
	if err := opts.Validate(); err != nil {
		return fmt.Errorf("%s: %w", Name, err)
	}
	return component.Run(ctx, opts.Options, component.Spec{
		Name: Name,
		Lead: func(ctx context.Context, l component.Leadership) error { return lead(ctx, l, opts) },
	})
}

// lead runs one leadership: a new Scheduler, with informers of its own,
// until ctx ends.
func lead(ctx context.Context, l component.Leadership, opts Options) error {
	s, err := scheduler.New(l.Client, scheduler.Options{
		Identity:         l.Identity,
		Logger:           l.Logger,
		MaxBindsInFlight: opts.MaxBindsInFlight,
	})
	if err != nil {
		return err
	}
	err = s.Run(ctx)
	if ctx.Err() != nil {
		return nil // the leadership ended; component.Run logs why
	}
	return err
}
