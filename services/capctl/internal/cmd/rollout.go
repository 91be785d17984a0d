package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// reasonProgressDeadlineExceeded is the reason of a Deployment's
// Progressing=False condition once its rollout has made no progress for
// spec.progress_deadline_seconds (Kubernetes' name; package wellknown has
// condition types but no reasons yet).
const reasonProgressDeadlineExceeded = "ProgressDeadlineExceeded"

type rolloutStatusOptions struct {
	timeout time.Duration
	watch   bool
}

func newRolloutCommand(g *globals) *cobra.Command {
	rollout := &cobra.Command{
		Use:   "rollout",
		Short: "Follow the rollout of a deployment",
	}
	o := rolloutStatusOptions{watch: true}
	status := &cobra.Command{
		Use:   "status (deployment/NAME | deployment NAME)",
		Short: "Wait for a deployment's rollout to finish, showing its progress",
		Long: `Watch a deployment and print a line each time its rollout progresses, until
every replica runs the current template and is available:

  Waiting for deployment spec update to be observed...
  Waiting for deployment "web" rollout to finish: 1 out of 3 new replicas have been updated...
  Waiting for deployment "web" rollout to finish: 1 old replicas are pending termination...
  Waiting for deployment "web" rollout to finish: 2 of 3 updated replicas are available...
  deployment "web" successfully rolled out

The rollout is done when the controller has observed the latest spec
(status.observed_generation >= metadata.generation), spec.replicas pods run
the current template (updated_replicas), no other pods are left
(status.replicas == updated_replicas) and every updated pod is available.
It exits 0 then, and 1 if the deployment reports Progressing=False with
reason ProgressDeadlineExceeded, if it is deleted, or once --timeout has
passed. Here --timeout bounds the whole wait (0, the default, waits
forever); each API call keeps its usual bound.`,
		Example: `  capctl rollout status deployment/web
  capctl rollout status deploy web --timeout=2m
  capctl apply -f web.yaml && capctl rollout status deploy/web`,
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd, g, args) },
	}
	// This --timeout shadows the global one (cobra lets a command's own flag
	// win), because kubectl users know it as the bound of the whole wait.
	status.Flags().DurationVar(&o.timeout, "timeout", 0, "give up (exit 1) if the rollout has not finished after this long; 0 waits forever")
	status.Flags().BoolVarP(&o.watch, "watch", "w", true, "wait for the rollout to finish; with --watch=false print its state once and exit 0")
	rollout.AddCommand(status)
	return rollout
}

func (o *rolloutStatusOptions) run(cmd *cobra.Command, g *globals, args []string) error {
	kind, names, err := kindAndNames(cmd, args)
	if err != nil {
		return err
	}
	if kind != deploymentKind {
		return usagef(cmd, "rollout status follows deployments only, not %s", kind.Resource)
	}
	if len(names) != 1 {
		return usagef(cmd, "name one deployment: deployment/NAME or deployment NAME")
	}
	if o.timeout < 0 {
		return usagef(cmd, "--timeout must not be negative")
	}
	name := names[0]
	ctx := cmd.Context()
	waitCtx := ctx
	if o.timeout > 0 {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	c, err := g.dial(0)
	if err != nil {
		return err
	}
	defer c.Close()
	err = waitForRollout(waitCtx, c, g.streams.Out, g.namespaceFor(kind), name, o.watch)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted before deployment %q finished its rollout", name)
	case waitCtx.Err() != nil:
		return fmt.Errorf("timed out after %v waiting for deployment %q to finish its rollout", o.timeout, name)
	}
	return err
}

// waitForRollout prints the rollout's state, then (if watch) every change
// of it, until the rollout is done, fails, or ctx ends.
func waitForRollout(ctx context.Context, c *client.Client, out io.Writer, ns, name string, watch bool) error {
	last := ""
	report := func(d *capstanv1.Deployment) (bool, error) {
		msg, done, err := rolloutStatus(d)
		if err != nil {
			return false, err
		}
		// A controller writes status more often than the progress changes:
		// print each state once.
		if msg != last {
			fmt.Fprintln(out, msg)
			last = msg
		}
		return done, nil
	}
	for {
		obj, err := c.Get(ctx, deploymentKind, ns, name)
		if err != nil {
			return objectError(deploymentKind, name, err)
		}
		done, err := report(obj.(*capstanv1.Deployment))
		if done || err != nil || !watch {
			return err
		}
		// Watching from the version read sees every later change of it.
		err = followRollout(ctx, c, ns, name, obj.GetMetadata().GetResourceVersion(), report)
		if !apierrors.IsExpired(err) {
			return err
		}
		// The resume point was compacted away: read the deployment again.
	}
}

// followRollout reports each change of the deployment after version.
func followRollout(ctx context.Context, c *client.Client, ns, name string, version int64,
	report func(*capstanv1.Deployment) (bool, error)) error {
	w := c.Watch(ctx, deploymentKind, client.WatchOptions{
		Namespace: ns, FieldSelector: "metadata.name=" + name, ResourceVersion: version,
	})
	defer w.Stop()
	for ev := range w.Events() {
		switch ev.Type {
		case client.Added, client.Modified:
			d, ok := ev.Object.(*capstanv1.Deployment)
			if !ok {
				continue
			}
			if done, err := report(d); done || err != nil {
				return err
			}
		case client.Deleted:
			return fmt.Errorf("deployment %q was deleted before its rollout finished", name)
		}
	}
	if err := w.Err(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("the watch ended")
}

// rolloutStatus is kubectl's reading of a Deployment's status: a progress
// line, whether the rollout is done, or an error if it failed.
func rolloutStatus(d *capstanv1.Deployment) (string, bool, error) {
	name := d.GetMetadata().GetName()
	st := d.GetStatus()
	if st.GetObservedGeneration() < d.GetMetadata().GetGeneration() {
		return "Waiting for deployment spec update to be observed...", false, nil
	}
	for _, c := range st.GetConditions() {
		if c.GetType() == wellknown.DeploymentProgressing && c.GetReason() == reasonProgressDeadlineExceeded {
			return "", false, fmt.Errorf("deployment %q exceeded its progress deadline", name)
		}
	}
	desired := int32(1) // unset means 1
	if d.GetSpec() != nil && d.GetSpec().Replicas != nil {
		desired = d.GetSpec().GetReplicas()
	}
	waiting := func(format string, args ...any) (string, bool, error) {
		return fmt.Sprintf("Waiting for deployment %q rollout to finish: "+format, append([]any{name}, args...)...), false, nil
	}
	switch {
	case st.GetUpdatedReplicas() < desired:
		return waiting("%d out of %d new replicas have been updated...", st.GetUpdatedReplicas(), desired)
	case st.GetReplicas() > st.GetUpdatedReplicas():
		return waiting("%d old replicas are pending termination...", st.GetReplicas()-st.GetUpdatedReplicas())
	case st.GetAvailableReplicas() < st.GetUpdatedReplicas():
		return waiting("%d of %d updated replicas are available...", st.GetAvailableReplicas(), st.GetUpdatedReplicas())
	case st.GetUpdatedReplicas() > desired:
		// Scaled down: kubectl would call this done while the extra pods
		// still run; the rollout is done when exactly spec.replicas remain.
		return waiting("%d extra replicas are pending termination...", st.GetUpdatedReplicas()-desired)
	}
	return fmt.Sprintf("deployment %q successfully rolled out", name), true, nil
}
