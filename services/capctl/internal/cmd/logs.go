package cmd

import (
	"context"
	"errors"
	"io"
	"strings"

	"github.com/spf13/cobra"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
)

type logsOptions struct {
	container string
	follow    bool
	tail      int64
	previous  bool
}

func newLogsCommand(g *globals) *cobra.Command {
	var o logsOptions
	cmd := &cobra.Command{
		Use:   "logs POD [-c CONTAINER]",
		Short: "Print the log of a pod's container",
		Long: `Print the log of a container of a pod (the container may be left out
when the pod has one). The API server fetches it from the node agent that
runs the pod, so only an API address is needed. With -f, keep printing new
output until interrupted; with -p, print the log of the container's run
before its last restart.`,
		Example: `  capctl logs web
  capctl logs web -c sidecar --tail 20
  capctl logs pod/web -f
  capctl logs web -p`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd, g, args[0]) },
	}
	f := cmd.Flags()
	f.StringVarP(&o.container, "container", "c", "", "the container (needed when the pod has more than one)")
	f.BoolVarP(&o.follow, "follow", "f", false, "keep printing new output until interrupted")
	f.Int64Var(&o.tail, "tail", -1, "print only the last this many lines (-1: the whole log)")
	f.BoolVarP(&o.previous, "previous", "p", false, "print the log of the container's previous run")
	return cmd
}

func (o *logsOptions) run(cmd *cobra.Command, g *globals, arg string) error {
	name := arg
	if kind, n, ok := strings.Cut(arg, "/"); ok {
		k, err := lookupKind(cmd, kind)
		if err != nil {
			return err
		}
		if k != podKind {
			return usagef(cmd, "logs are kept for pods only, not %s", k.Resource)
		}
		name = n
	}
	if name == "" {
		return usagef(cmd, "name the pod")
	}
	if o.tail < -1 {
		return usagef(cmd, "--tail must be -1 (the whole log), 0 or more, not %d", o.tail)
	}
	c, err := g.dial(0)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := cmd.Context()
	if !o.follow {
		// Without -f the whole answer comes within --timeout, like any
		// other call; a followed log runs until interrupted.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.timeout)
		defer cancel()
	}
	req := &capstanv1.StreamPodLogsRequest{
		Namespace: g.namespaceFor(podKind),
		Name:      name,
		Container: o.container,
		Follow:    o.follow,
		Previous:  o.previous,
	}
	if o.tail >= 0 {
		req.TailLines = &o.tail
	}
	stream, err := c.Pods().StreamPodLogs(ctx, req)
	if err != nil {
		return o.fail(cmd, name, err)
	}
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return o.fail(cmd, name, err)
		}
		if _, err := g.streams.Out.Write(chunk.GetData()); err != nil {
			return err
		}
	}
}

// fail is what capctl reports for err; an interrupted -f ends normally.
func (o *logsOptions) fail(cmd *cobra.Command, name string, err error) error {
	if o.follow && interrupted(cmd.Context(), err) {
		return nil
	}
	if info := apierrors.ErrorInfo(err); apierrors.IsNotFound(err) && info.GetMetadata()["kind"] == podKind.Name {
		return objectError(podKind, name, err)
	}
	return err
}
