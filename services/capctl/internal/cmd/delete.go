package cmd

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
)

type deleteOptions struct {
	files          []string
	labelSelector  string
	all            bool
	ignoreNotFound bool
	gracePeriod    int64 // negative: the pod's own
	force          bool
}

// deleteTarget is one object to delete.
type deleteTarget struct {
	kind      *resource.Kind
	namespace string
	name      string
	// uid is the object's, if the list of a selector resolved it; empty:
	// deleteObject reads the object the name holds.
	uid string
}

func newDeleteCommand(g *globals) *cobra.Command {
	var o deleteOptions
	cmd := &cobra.Command{
		Use:   "delete (KIND NAME... | KIND -l SELECTOR | KIND --all | -f FILE)",
		Short: "Delete objects by name, by label, or as listed in manifests",
		Example: `  capctl delete pod web
  capctl delete pods web-1 web-2
  capctl delete pods -l app=web
  capctl delete -f web.yaml
  capctl delete configmap settings --ignore-not-found
  capctl delete pod web --grace-period=5
  capctl delete pod web --force`,
		Long: `Delete objects by name, by label, or as listed in manifests.

A pod bound to a node is deleted gracefully: it is marked for deletion, its
node agent stops its containers (SIGTERM, then SIGKILL after the grace
period) and then removes it; until then "get" shows it. --grace-period
overrides the pod's termination_grace_period_seconds. --force (or
--grace-period=0) removes the pod from the API at once, without waiting for
its node agent to confirm that the containers stopped; the agent stops them
when it sees the pod gone. Other kinds are deleted at once and ignore both
flags.

An object is deleted only while it is the one capctl found under its name
(the same uid): one deleted and created again meanwhile is left alone.`,
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd, g, args) },
	}
	f := cmd.Flags()
	f.StringArrayVarP(&o.files, "filename", "f", nil, "delete the objects of this manifest file, directory, or - for standard input")
	f.StringVarP(&o.labelSelector, "selector", "l", "", "delete the objects of KIND that match this label selector")
	f.BoolVar(&o.all, "all", false, "delete every object of KIND in the namespace")
	f.BoolVar(&o.ignoreNotFound, "ignore-not-found", false, "treat an object that does not exist as deleted")
	f.Int64Var(&o.gracePeriod, "grace-period", -1, "seconds a pod's containers get between SIGTERM and SIGKILL (-1: the pod's own; 0: as --force)")
	f.BoolVar(&o.force, "force", false, "remove pods from the API at once, without waiting for their node agents to stop them")
	return cmd
}

// clientOptions are the client.DeleteOptions of --grace-period and --force,
// after checking that they agree.
func (o *deleteOptions) clientOptions(cmd *cobra.Command, g *globals) ([]client.DeleteOption, error) {
	switch {
	case o.force && o.gracePeriod > 0:
		return nil, usagef(cmd, "--force and --grace-period greater than 0 cannot be specified together")
	case o.gracePeriod < -1:
		return nil, usagef(cmd, "--grace-period must be -1 (the pod's own), 0 or more, not %d", o.gracePeriod)
	case o.force || o.gracePeriod == 0:
		fmt.Fprintln(g.streams.ErrOut, "warning: Immediate deletion does not wait for confirmation that the running resource has been terminated. The resource may continue to run on the cluster indefinitely.")
		return []client.DeleteOption{client.GracePeriod(0)}, nil
	case o.gracePeriod > 0:
		return []client.DeleteOption{client.GracePeriod(o.gracePeriod)}, nil
	}
	return nil, nil
}

func (o *deleteOptions) run(cmd *cobra.Command, g *globals, args []string) error {
	ctx := cmd.Context()
	byName := len(args) > 1 || (len(args) == 1 && strings.Contains(args[0], "/"))
	selecting := o.labelSelector != "" || o.all
	switch {
	case len(o.files) > 0 && len(args) > 0:
		return usagef(cmd, "give either -f FILE or KIND NAME..., not both")
	case len(o.files) == 0 && len(args) == 0:
		return usagef(cmd, "say what to delete: KIND NAME..., KIND -l SELECTOR, KIND --all or -f FILE")
	case byName && selecting:
		return usagef(cmd, "give either names or --selector/--all, not both")
	case len(o.files) == 0 && !byName && !selecting:
		return usagef(cmd, "name the %s to delete, or select them with -l SELECTOR or --all", args[0])
	}
	deleteOpts, err := o.clientOptions(cmd, g)
	if err != nil {
		return err
	}
	var targets []deleteTarget
	if len(o.files) > 0 {
		docs, err := readManifests(g, o.files)
		if err != nil {
			return err
		}
		for _, d := range docs {
			m := resource.Meta(d.Object)
			targets = append(targets, deleteTarget{kind: d.Kind, namespace: m.GetNamespace(), name: m.GetName()})
		}
	}
	c, err := g.dial(0)
	if err != nil {
		return err
	}
	defer c.Close()
	if len(args) > 0 {
		kind, names, err := kindAndNames(cmd, args)
		if err != nil {
			return err
		}
		ns := g.namespaceFor(kind)
		if selecting {
			objs, err := selectObjects(ctx, c, kind, ns, o.labelSelector)
			if err != nil {
				return err
			}
			if len(objs) == 0 {
				fmt.Fprintln(g.streams.ErrOut, noResources(kind, ns))
			}
			for _, obj := range objs {
				targets = append(targets, deleteTarget{kind: kind, namespace: ns, name: obj.GetMetadata().GetName(), uid: obj.GetMetadata().GetUid()})
			}
		}
		for _, n := range names {
			targets = append(targets, deleteTarget{kind: kind, namespace: ns, name: n})
		}
	}
	failures := 0
	for _, t := range targets {
		err := deleteObject(ctx, c, t, deleteOpts)
		switch {
		case err == nil && (o.force || o.gracePeriod == 0) && t.kind == podKind:
			fmt.Fprintf(g.streams.Out, "%s %q force deleted\n", t.kindWord(), t.name)
		case err == nil:
			fmt.Fprintf(g.streams.Out, "%s %q deleted\n", t.kindWord(), t.name)
		case apierrors.IsNotFound(err) && o.ignoreNotFound:
		default:
			g.writeErr(objectError(t.kind, t.name, err))
			failures++
		}
	}
	if failures > 0 {
		return &alreadyReported{failures: failures}
	}
	return nil
}

// kindWord is how kubectl names a kind in "pod "web" deleted".
func (t deleteTarget) kindWord() string { return strings.ToLower(t.kind.Name) }

// objectDeleter is what deleteObject needs of the API client: tests put a
// concurrent delete and re-create in front of Delete.
type objectDeleter interface {
	Get(ctx context.Context, kind *resource.Kind, namespace, name string) (resource.Object, error)
	Delete(ctx context.Context, kind *resource.Kind, namespace, name string, pre *capstanv1.Preconditions, opts ...client.DeleteOption) (resource.Object, error)
}

// deleteObject deletes the object t names: the one with t.uid if a list
// resolved it, else the one the name holds when it is read here. The delete
// is conditional on that uid. "capctl delete pod web" means the web that
// exists as the command runs, whatever its state (so no resource_version:
// a status written meanwhile must not make the delete fail, as kubectl
// users expect), but never another object created under the name later: a
// request that arrives late (it sat in a frozen API replica) or a race with
// a re-create must not delete the new one.
func deleteObject(ctx context.Context, c objectDeleter, t deleteTarget, opts []client.DeleteOption) error {
	uid := t.uid
	if uid == "" {
		obj, err := c.Get(ctx, t.kind, t.namespace, t.name)
		if err != nil {
			return err
		}
		uid = obj.GetMetadata().GetUid()
	}
	_, err := c.Delete(ctx, t.kind, t.namespace, t.name, &capstanv1.Preconditions{Uid: uid}, opts...)
	if apierrors.IsConflict(err) {
		// Only the uid is a precondition here: the name holds another
		// object now. The server's "read it again and retry" is not
		// advice for a delete.
		return &serverError{reason: "Conflict", err: err, message: fmt.Sprintf(
			"%s %q was deleted and created again since capctl read it (uid %s): the new one is not deleted", t.kind.Resource, t.name, uid)}
	}
	return err
}

func selectNames(ctx context.Context, c *client.Client, kind *resource.Kind, ns, selector string) ([]string, error) {
	objs, err := selectObjects(ctx, c, kind, ns, selector)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(objs))
	for _, obj := range objs {
		names = append(names, obj.GetMetadata().GetName())
	}
	return names, nil
}

// selectObjects lists the objects of kind in ns that selector matches.
func selectObjects(ctx context.Context, c *client.Client, kind *resource.Kind, ns, selector string) ([]resource.Object, error) {
	res, err := c.ListAll(ctx, kind, client.ListOptions{Namespace: ns, LabelSelector: selector, PageSize: listPageSize})
	if err != nil {
		return nil, err
	}
	return res.Items, nil
}
