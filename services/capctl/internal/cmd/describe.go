package cmd

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/capctl/internal/printer"
)

type describeOptions struct {
	labelSelector string
	allNamespaces bool
	showEvents    bool
}

func newDescribeCommand(g *globals) *cobra.Command {
	o := describeOptions{showEvents: true}
	cmd := &cobra.Command{
		Use:   "describe KIND [NAME...]",
		Short: "Show the details of objects, with related objects and events",
		Long: `Show a detailed, human-oriented description of objects, the way kubectl
describe does: metadata (labels, annotations, owners, creation), the sections
of the kind, and the events about the object, oldest first.

  Pod         node, status, containers (command, ports, requests, state,
              restarts), conditions, node selector, tolerations
  Node        taints, conditions, addresses, capacity and allocatable, the
              agent's endpoint, its pods and what they request
  ReplicaSet  replicas, selector, pods by phase, pod template
  Deployment  replicas, strategy, pod template, conditions, old and new
              ReplicaSets
  Lease       holder, epoch (the fencing token), duration, acquired,
              renewed, transitions

With no NAME, every object of KIND in the namespace (or matching -l) is
described.`,
		Example: `  capctl describe pod web
  capctl describe deploy/web
  capctl describe nodes
  capctl describe lease scheduler -n capstan-system
  capctl describe pods -l app=web`,
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd, g, args) },
	}
	f := cmd.Flags()
	f.StringVarP(&o.labelSelector, "selector", "l", "", "describe the objects of KIND that match this label selector")
	f.BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "with no NAME, describe objects in every namespace")
	f.BoolVar(&o.showEvents, "show-events", true, "show the events about each object")
	return cmd
}

func (o *describeOptions) run(cmd *cobra.Command, g *globals, args []string) error {
	kind, names, err := kindAndNames(cmd, args)
	if err != nil {
		return err
	}
	if len(names) > 0 && o.labelSelector != "" {
		return usagef(cmd, "name cannot be provided when a selector is specified")
	}
	if len(names) > 0 && o.allNamespaces && kind.Namespaced {
		return usagef(cmd, "a resource cannot be retrieved by name across all namespaces: give -n NAMESPACE instead of -A")
	}
	ns := g.namespaceFor(kind)
	c, err := g.dial(0)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := cmd.Context()

	var objs []resource.Object
	var failures []error
	if len(names) == 0 {
		listNS := ns
		if o.allNamespaces && kind.Namespaced {
			listNS = resource.AllNamespaces
		}
		res, err := c.ListAll(ctx, kind, client.ListOptions{Namespace: listNS, LabelSelector: o.labelSelector, PageSize: listPageSize})
		if err != nil {
			return err
		}
		if len(res.Items) == 0 {
			fmt.Fprintln(g.streams.ErrOut, noResources(kind, listNS))
			return nil
		}
		objs = res.Items
	}
	for _, name := range names {
		obj, err := c.Get(ctx, kind, ns, name)
		if err != nil {
			failures = append(failures, objectError(kind, name, err))
			continue
		}
		objs = append(objs, obj)
	}
	for i, obj := range objs {
		rel, err := related(ctx, c, obj, o.showEvents)
		if err != nil {
			failures = append(failures, &contextError{context: printer.NameOf(obj), err: err})
			continue
		}
		if i > 0 {
			fmt.Fprint(g.streams.Out, "\n\n")
		}
		if err := printer.Describe(g.streams.Out, obj, rel, printer.DescribeOptions{}); err != nil {
			return err
		}
	}
	if len(failures) == 1 && len(objs) == 0 {
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

// related reads what the description of obj shows besides obj: its
// events, and the pods or ReplicaSets that belong to it.
func related(ctx context.Context, c *client.Client, obj resource.Object, withEvents bool) (printer.Related, error) {
	rel := printer.Related{NoEvents: !withEvents}
	var err error
	if withEvents {
		if rel.Events, err = eventsAbout(ctx, c, obj); err != nil {
			return rel, fmt.Errorf("list its events: %w", err)
		}
	}
	switch o := obj.(type) {
	case *capstanv1.Node:
		// Every pod bound to the node, in any namespace.
		res, err := c.ListAll(ctx, podKind, client.ListOptions{
			Namespace: resource.AllNamespaces, FieldSelector: "spec.node_name=" + o.GetMetadata().GetName(), PageSize: listPageSize,
		})
		if err != nil {
			return rel, fmt.Errorf("list its pods: %w", err)
		}
		rel.Pods = typed[*capstanv1.Pod](res.Items)
	case *capstanv1.ReplicaSet:
		items, err := controlled(ctx, c, podKind, o, o.GetSpec().GetSelector())
		if err != nil {
			return rel, fmt.Errorf("list its pods: %w", err)
		}
		rel.Pods = typed[*capstanv1.Pod](items)
	case *capstanv1.Deployment:
		items, err := controlled(ctx, c, replicaSetKind, o, o.GetSpec().GetSelector())
		if err != nil {
			return rel, fmt.Errorf("list its replicasets: %w", err)
		}
		rel.ReplicaSets = typed[*capstanv1.ReplicaSet](items)
	}
	return rel, nil
}

// eventsAbout lists the events whose involved object is obj: by name and
// kind on the server, then by uid here, so the events of an earlier object
// of the same name are left out (an event without a uid is kept). Events
// about a namespaced object live in its namespace; those about a
// cluster-scoped object may live in any (the recorders put them in
// "default"), so every namespace is searched.
func eventsAbout(ctx context.Context, c *client.Client, obj resource.Object) ([]*capstanv1.Event, error) {
	m := obj.GetMetadata()
	kind, ok := resource.ForMessage(obj)
	if !ok {
		return nil, nil
	}
	ns := m.GetNamespace()
	if !kind.Namespaced {
		ns = resource.AllNamespaces
	}
	res, err := c.ListAll(ctx, eventKind, client.ListOptions{
		Namespace:     ns,
		FieldSelector: "involved_object.name=" + m.GetName() + ",involved_object.kind=" + kind.Name,
		PageSize:      listPageSize,
	})
	if err != nil {
		return nil, err
	}
	var out []*capstanv1.Event
	for _, e := range typed[*capstanv1.Event](res.Items) {
		if uid := e.GetInvolvedObject().GetUid(); uid != "" && uid != m.GetUid() {
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// controlled lists the objects of kind in owner's namespace that owner's
// selector selects and whose controller is owner (by uid), as kubectl
// finds a ReplicaSet's pods: a pod that merely carries matching labels is
// not the ReplicaSet's.
func controlled(ctx context.Context, c *client.Client, kind *resource.Kind, owner resource.Object, sel *capstanv1.LabelSelector) ([]resource.Object, error) {
	selector := printer.Selector(sel)
	if selector == "" {
		// An empty selector would select everything; the API refuses one
		// on a ReplicaSet or Deployment, so there is nothing to show.
		return nil, nil
	}
	res, err := c.ListAll(ctx, kind, client.ListOptions{
		Namespace: owner.GetMetadata().GetNamespace(), LabelSelector: selector, PageSize: listPageSize,
	})
	if err != nil {
		return nil, err
	}
	var out []resource.Object
	for _, obj := range res.Items {
		for _, ref := range obj.GetMetadata().GetOwnerReferences() {
			if ref.GetController() && ref.GetUid() == owner.GetMetadata().GetUid() {
				out = append(out, obj)
				break
			}
		}
	}
	return out, nil
}

// typed converts a list of one kind's objects to their message type.
func typed[T resource.Object](objs []resource.Object) []T {
	out := make([]T, 0, len(objs))
	for _, o := range objs {
		if t, ok := o.(T); ok {
			out = append(out, t)
		}
	}
	return out
}
