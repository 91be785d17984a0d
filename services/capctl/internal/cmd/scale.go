package cmd

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/capctl/internal/printer"
)

// scaleConflictRetries bounds how often scale reads an object again after
// another write came between its read and its update. A controller's
// status update counts: it moves resource_version on too, and a scale
// starts exactly the status updates that make such conflicts likely.
const scaleConflictRetries = 10

// scaleConflictBackoff is the pause before the second attempt; each later
// one waits one more of it.
const scaleConflictBackoff = 10 * time.Millisecond

type scaleOptions struct {
	replicas        int32
	currentReplicas int32
	labelSelector   string
	all             bool
}

func newScaleCommand(g *globals) *cobra.Command {
	var o scaleOptions
	cmd := &cobra.Command{
		Use:   "scale (KIND NAME... | KIND -l SELECTOR | KIND --all) --replicas=N",
		Short: "Set the number of replicas of deployments and replicasets",
		Long: `Set spec.replicas of deployments or replicasets.

Each object is read and updated at the version read, and read again if
something changed it in between. With --current-replicas the update happens
only if the object asks for that many replicas at the time of the update
(kubectl's precondition): a concurrent scale to another number makes it fail
rather than be overwritten.

A later "capctl apply" of a manifest without spec.replicas keeps the scaled
number; one that sets spec.replicas sets it back.`,
		Example: `  capctl scale deployment web --replicas=5
  capctl scale deploy/web --replicas=3 --current-replicas=5
  capctl scale rs -l app=web --replicas=0`,
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd, g, args) },
	}
	f := cmd.Flags()
	f.Int32Var(&o.replicas, "replicas", -1, "the new number of replicas (required)")
	f.Int32Var(&o.currentReplicas, "current-replicas", -1, "only scale if the object asks for this many replicas now (-1: no precondition)")
	f.StringVarP(&o.labelSelector, "selector", "l", "", "scale the objects of KIND that match this label selector")
	f.BoolVar(&o.all, "all", false, "scale every object of KIND in the namespace")
	return cmd
}

func (o *scaleOptions) run(cmd *cobra.Command, g *globals, args []string) error {
	if !cmd.Flags().Changed("replicas") {
		return usagef(cmd, "--replicas=N is required")
	}
	if o.replicas < 0 {
		return usagef(cmd, "--replicas must be 0 or more, not %d", o.replicas)
	}
	selecting := o.labelSelector != "" || o.all
	kind, names, err := kindAndNames(cmd, args)
	if err != nil {
		return err
	}
	if kind != deploymentKind && kind != replicaSetKind {
		return usagef(cmd, "only %s can be scaled, not %s", kindList(deploymentKind, replicaSetKind), kind.Resource)
	}
	switch {
	case len(names) > 0 && selecting:
		return usagef(cmd, "give either names or --selector/--all, not both")
	case len(names) == 0 && !selecting:
		return usagef(cmd, "name the %s to scale, or select them with -l SELECTOR or --all", kind.Resource)
	}
	ns := g.namespaceFor(kind)
	c, err := g.dial(0)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := cmd.Context()
	if selecting {
		if names, err = selectNames(ctx, c, kind, ns, o.labelSelector); err != nil {
			return err
		}
		if len(names) == 0 {
			fmt.Fprintln(g.streams.ErrOut, noResources(kind, ns))
		}
	}
	var failures []error
	for _, name := range names {
		if err := scale(ctx, c, kind, ns, name, o.replicas, o.currentReplicas); err != nil {
			failures = append(failures, err)
			continue
		}
		fmt.Fprintf(g.streams.Out, "%s scaled\n", printer.KindName(kind, name))
	}
	if len(failures) == 1 && len(names) == 1 {
		return failures[0]
	}
	for _, f := range failures {
		g.writeErr(f)
	}
	if len(failures) > 0 {
		return &alreadyReported{failures: len(failures)}
	}
	return nil
}

// objectStore is what scale needs of the API client: tests put a
// concurrent write in front of Update to make it conflict.
type objectStore interface {
	Get(ctx context.Context, kind *resource.Kind, namespace, name string) (resource.Object, error)
	Update(ctx context.Context, obj resource.Object) (resource.Object, error)
}

// scale sets spec.replicas of one deployment or replicaset: read, check
// the precondition (current >= 0), update at the version read, and start
// over when the update meets a newer version.
func scale(ctx context.Context, c objectStore, kind *resource.Kind, ns, name string, replicas, current int32) error {
	var err error
	for attempt := 0; attempt < scaleConflictRetries; attempt++ {
		if attempt > 0 {
			// A conflict means a controller is writing right now; let a
			// burst of its writes pass rather than race each of them.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(attempt) * scaleConflictBackoff):
			}
		}
		var obj resource.Object
		obj, err = c.Get(ctx, kind, ns, name)
		if err != nil {
			return objectError(kind, name, err)
		}
		spec := replicasOf(obj)
		if spec == nil {
			return fmt.Errorf("%s has no spec to scale", printer.KindName(kind, name))
		}
		have := int32(1) // unset means 1
		if *spec != nil {
			have = **spec
		}
		if current >= 0 && have != current {
			return fmt.Errorf("precondition failed: expected replicas of %s to be %d, was %d", printer.KindName(kind, name), current, have)
		}
		*spec = &replicas
		// obj carries the uid and resource_version just read: the update
		// applies only over that version, so it can never undo a newer
		// change (a late or repeated request included); a conflict reads
		// again, as kubectl's scale retries.
		_, err = c.Update(ctx, obj)
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return objectError(kind, name, err)
		}
		return nil
	}
	return fmt.Errorf("%s: gave up after %d conflicting updates: %w", printer.KindName(kind, name), scaleConflictRetries, err)
}

// replicasOf points at the spec.replicas field of a deployment or
// replicaset (creating an empty spec if it has none); nil for other kinds.
func replicasOf(obj resource.Object) **int32 {
	switch o := obj.(type) {
	case *capstanv1.Deployment:
		if o.Spec == nil {
			o.Spec = &capstanv1.DeploymentSpec{}
		}
		return &o.Spec.Replicas
	case *capstanv1.ReplicaSet:
		if o.Spec == nil {
			o.Spec = &capstanv1.ReplicaSetSpec{}
		}
		return &o.Spec.Replicas
	}
	return nil
}
