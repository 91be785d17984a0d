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
	"github.com/capstan-dev/capstan/services/capctl/internal/printer"
)

// listPageSize pages big lists so that no response comes near the
// message size limit.
const listPageSize = 500

type getOptions struct {
	output        string
	labelSelector string
	fieldSelector string
	allNamespaces bool
	watch         bool
	watchEvents   bool
	noHeaders     bool

	format printer.Format
}

func newGetCommand(g *globals) *cobra.Command {
	var o getOptions
	cmd := &cobra.Command{
		Use:   "get KIND [NAME...]",
		Short: "Show objects of one kind",
		Long: `Show objects of one kind as a table, or as YAML/JSON manifests that apply
reads back. With --watch, keep printing a row (or a document) per change.

KIND is a plural (` + strings.Join(resource.Names(), ", ") + `),
a singular ("pod") or a short name ("po", "rs", "deploy", "cm", "ev", "no").
KIND/NAME ("pod/web") names one object, as apply prints it. Events are
listed by when they last happened, the latest at the bottom.`,
		Example: `  capctl get pods
  capctl get pods -A -o wide
  capctl get pod web -o yaml
  capctl get deploy/web -o json
  capctl get pods -l app=web --field-selector spec.nodeName=worker-1
  capctl get pods -w
  capctl get leases -A
  capctl get events --field-selector involvedObject.name=web -w`,
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd, g, args) },
	}
	f := cmd.Flags()
	f.StringVarP(&o.output, "output", "o", "", "output format: wide, yaml, json or name (default: a table)")
	f.StringVarP(&o.labelSelector, "selector", "l", "", `label selector, e.g. "app=web,tier in (fe,be)"`)
	f.StringVar(&o.fieldSelector, "field-selector", "", `field selector, e.g. "spec.nodeName=worker-1,status.phase!=Running"`)
	f.BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "list objects in every namespace")
	f.BoolVarP(&o.watch, "watch", "w", false, "after the current objects, print every change until interrupted")
	f.BoolVar(&o.watchEvents, "output-watch-events", false, "with --watch, show each change's type (ADDED, MODIFIED, DELETED)")
	f.BoolVar(&o.noHeaders, "no-headers", false, "print tables without their header")
	return cmd
}

func (o *getOptions) run(cmd *cobra.Command, g *globals, args []string) error {
	kind, names, err := kindAndNames(cmd, args)
	if err != nil {
		return err
	}
	format, err := printer.ParseFormat(o.output)
	o.format = format
	if err != nil {
		return &usageError{command: cmd.CommandPath(), err: err}
	}
	if len(names) > 0 && o.labelSelector != "" {
		return usagef(cmd, "name cannot be provided when a selector is specified")
	}
	if len(names) > 0 && o.allNamespaces && kind.Namespaced {
		return usagef(cmd, "a resource cannot be retrieved by name across all namespaces: give -n NAMESPACE instead of -A")
	}
	if o.watch && len(names) > 1 {
		return usagef(cmd, "watch is only supported on one object or on a whole kind, but %d names were given", len(names))
	}
	ns := g.namespaceFor(kind)
	if o.allNamespaces && kind.Namespaced {
		ns = resource.AllNamespaces
	}
	c, err := g.dial(0)
	if err != nil {
		return err
	}
	defer c.Close()
	p := printer.New(g.streams.Out, kind, printer.Options{
		Format:        format,
		AllNamespaces: o.allNamespaces,
		NoHeaders:     o.noHeaders,
		WatchEvents:   o.watchEvents,
	})
	ctx := cmd.Context()
	switch {
	case o.watch:
		return o.runWatch(ctx, g, c, p, kind, ns, names)
	case len(names) > 0:
		return o.getNames(ctx, g, c, p, kind, ns, names)
	}
	res, err := c.ListAll(ctx, kind, client.ListOptions{
		Namespace: ns, LabelSelector: o.labelSelector, FieldSelector: o.fieldSelector, PageSize: listPageSize,
	})
	if err != nil {
		return err
	}
	if len(res.Items) == 0 && format != printer.YAML && format != printer.JSON {
		fmt.Fprintln(g.streams.ErrOut, noResources(kind, ns))
		return nil
	}
	if kind == eventKind {
		// What happened last matters most: it goes at the bottom, next to
		// the prompt, as kubectl prints events.
		printer.SortEvents(res.Items)
	}
	return p.PrintList(res.Items)
}

// getNames prints the named objects that exist and reports the others.
func (o *getOptions) getNames(ctx context.Context, g *globals, c *client.Client, p *printer.Printer, kind *resource.Kind, ns string, names []string) error {
	var found []resource.Object
	var failures []error
	for _, name := range names {
		obj, err := c.Get(ctx, kind, ns, name)
		if err != nil {
			failures = append(failures, objectError(kind, name, err))
			continue
		}
		found = append(found, obj)
	}
	var err error
	switch {
	case len(names) == 1 && len(found) == 1:
		err = p.PrintObject(found[0])
	case len(found) > 0:
		err = p.PrintList(found)
	}
	if err != nil {
		return err
	}
	if len(failures) == 1 && len(found) == 0 {
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

// runWatch prints the current objects, then every change, until ctx ends.
// A watch whose resume point was compacted away lists again and goes on.
func (o *getOptions) runWatch(ctx context.Context, g *globals, c *client.Client, p *printer.Printer, kind *resource.Kind, ns string, names []string) error {
	fieldSelector := o.fieldSelector
	if len(names) == 1 {
		fieldSelector = joinSelectors(fieldSelector, "metadata.name="+names[0])
	}
	for first := true; ; first = false {
		res, err := c.ListAll(ctx, kind, client.ListOptions{
			Namespace: ns, LabelSelector: o.labelSelector, FieldSelector: fieldSelector, PageSize: listPageSize,
		})
		if err != nil {
			if interrupted(ctx, err) {
				return nil
			}
			return err
		}
		if first && len(res.Items) == 0 {
			if len(names) == 1 {
				return objectError(kind, names[0], apierrors.NotFound(kind.Name, ns, names[0]))
			}
			if o.format != printer.YAML && o.format != printer.JSON {
				fmt.Fprintln(g.streams.ErrOut, noResources(kind, ns))
			}
		}
		if kind == eventKind {
			printer.SortEvents(res.Items)
		}
		for _, obj := range res.Items {
			if err := p.PrintEvent(capstanv1.WatchEventType_WATCH_EVENT_TYPE_ADDED, obj); err != nil {
				return err
			}
		}
		if err := p.Flush(); err != nil {
			return err
		}
		err = o.follow(ctx, c, p, kind, ns, fieldSelector, res.ResourceVersion)
		if !apierrors.IsExpired(err) {
			return err
		}
		fmt.Fprintf(g.streams.ErrOut, "capctl: the watch fell too far behind (%v); listing again\n", err)
	}
}

// follow prints the changes after version until ctx ends or the watch
// fails.
func (o *getOptions) follow(ctx context.Context, c *client.Client, p *printer.Printer, kind *resource.Kind, ns, fieldSelector string, version int64) error {
	w := c.Watch(ctx, kind, client.WatchOptions{
		Namespace: ns, LabelSelector: o.labelSelector, FieldSelector: fieldSelector, ResourceVersion: version,
	})
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events():
			if !ok {
				if err := w.Err(); err != nil && !interrupted(ctx, err) {
					return err
				}
				return nil
			}
			if ev.Type == client.Bookmark || ev.Object == nil {
				continue
			}
			if err := p.PrintEvent(ev.Type, ev.Object); err != nil {
				return err
			}
			if err := p.Flush(); err != nil {
				return err
			}
		}
	}
}

func joinSelectors(a, b string) string {
	if a == "" {
		return b
	}
	return a + "," + b
}

func noResources(kind *resource.Kind, ns string) string {
	if !kind.Namespaced || ns == resource.AllNamespaces {
		return "No resources found"
	}
	return fmt.Sprintf("No resources found in %s namespace.", ns)
}
