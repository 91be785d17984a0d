package app

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/events"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/leaderelection/component"
	"github.com/capstan-dev/capstan/internal/reconcile"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Run runs the controller-manager until ctx ends: it campaigns for the
// lease and, while it leads, runs the informers and the controllers with
// the leadership's fenced context. When ctx ends it stops them, releases the
// lease and returns nil. In probe mode (--health-probe) it only checks the
// health URL.
func Run(ctx context.Context, opts Options) error {
	if err := opts.Validate(); err != nil {
		return fmt.Errorf("%s: %w", Name, err)
	}
	return component.Run(ctx, opts.Options, component.Spec{
		Name: Name,
		Lead: func(ctx context.Context, l component.Leadership) error { return lead(ctx, l, opts) },
	})
}

// informers are the caches one leadership shares among its controllers.
type informers struct {
	pods        *informer.Typed[*capstanv1.Pod]
	replicaSets *informer.Typed[*capstanv1.ReplicaSet]
	deployments *informer.Typed[*capstanv1.Deployment]
	nodes       *informer.Typed[*capstanv1.Node]
	// nodeLeases are the node agents' heartbeats (capstan-node-lease).
	nodeLeases *informer.Typed[*capstanv1.Lease]
}

func newInformers(c *client.Client, logger *slog.Logger) (*informers, error) {
	opts := func(namespace string) informer.Options {
		return informer.Options{Namespace: namespace, Logger: logger.With("subsystem", "informer")}
	}
	var inf informers
	var err error
	if inf.pods, err = informer.NewTyped[*capstanv1.Pod](c, opts(resource.AllNamespaces)); err != nil {
		return nil, err
	}
	if inf.replicaSets, err = informer.NewTyped[*capstanv1.ReplicaSet](c, opts(resource.AllNamespaces)); err != nil {
		return nil, err
	}
	if inf.deployments, err = informer.NewTyped[*capstanv1.Deployment](c, opts(resource.AllNamespaces)); err != nil {
		return nil, err
	}
	if inf.nodes, err = informer.NewTyped[*capstanv1.Node](c, opts("")); err != nil {
		return nil, err
	}
	if inf.nodeLeases, err = informer.NewTyped[*capstanv1.Lease](c, opts(wellknown.NodeLeaseNamespace)); err != nil {
		return nil, err
	}
	return &inf, nil
}

func (inf *informers) all() []*informer.Informer {
	return []*informer.Informer{inf.pods.Informer, inf.replicaSets.Informer, inf.deployments.Informer, inf.nodes.Informer, inf.nodeLeases.Informer}
}

// controller is what lead runs: each controller package's *Controller.
type controller interface {
	Run(ctx context.Context) error
}

// builder makes one controller for one leadership.
type builder struct {
	name  string
	build func(env buildEnv) (controller, error)
}

// buildEnv is what a builder gets.
type buildEnv struct {
	leadership component.Leadership
	informers  *informers
	recorder   *events.Recorder
	opts       Options
	// loop is every controller's workers, logger and metrics.
	loop reconcile.Options
}

// lead runs one leadership: fresh informers, the controllers built on them,
// until ctx ends or a controller fails.
func lead(leadCtx context.Context, l component.Leadership, opts Options) error {
	inf, err := newInformers(l.Client, l.Logger)
	if err != nil {
		return err
	}
	recorder := events.NewRecorder(l.Client, &capstanv1.EventSource{Component: Name, Host: l.Identity}, l.Logger.With("subsystem", "events"))
	metrics, err := reconcile.NewMetrics(l.Registerer)
	if err != nil {
		return err
	}
	env := buildEnv{leadership: l, informers: inf, recorder: recorder, opts: opts,
		loop: reconcile.Options{Workers: opts.Workers, Logger: l.Logger, Metrics: metrics}}
	// Built before the informers run: controllers add handlers and
	// indexers in their constructors.
	type running struct {
		name string
		ctrl controller
	}
	var ctrls []running
	for _, b := range builders {
		ctrl, err := b.build(env)
		if err != nil {
			return fmt.Errorf("controller %s: %w", b.name, err)
		}
		ctrls = append(ctrls, running{b.name, ctrl})
	}

	// Deferred in this order, cancel runs before the wait.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancelCause(leadCtx)
	defer cancel(nil)
	for _, i := range inf.all() {
		wg.Go(func() {
			if err := i.Run(ctx); err != nil {
				cancel(fmt.Errorf("informer of %s: %w", i.Kind().Name, err))
			}
		})
	}
	started := time.Now()
	if !informer.WaitForCacheSync(ctx, inf.all()...) {
		return nil // the leadership ended before the caches filled
	}
	l.Logger.Info("caches synced; starting the controllers", "took", time.Since(started).Round(time.Millisecond), "controllers", len(ctrls))
	for _, r := range ctrls {
		wg.Go(func() {
			err := r.ctrl.Run(ctx)
			if err != nil && ctx.Err() == nil {
				cancel(fmt.Errorf("controller %s: %w", r.name, err))
			}
		})
	}
	<-ctx.Done()
	if leadCtx.Err() != nil {
		return nil // the leadership ended; component.Run logs why
	}
	return context.Cause(ctx) // a part failed
}
