// Package cmd is capctl's command line: the cobra commands (get, describe,
// apply, delete, scale, rollout status, logs, cluster status), their flags,
// and how errors reach the user.
// Rendering lives in package printer and manifest parsing in package
// manifest; this package only connects them to the API client.
//
// Execute runs one command line to completion and is safe to call from
// several goroutines at once (tests do): every call builds its own command
// tree and client, and shares nothing.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
)

// Streams are where a command reads and writes.
type Streams struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
}

// Execute runs capctl with args (without the program name) and returns the
// process exit code: 0 on success, 1 if anything failed (after the error
// has been printed on streams.ErrOut). Cancelling ctx ends a watch
// normally.
func Execute(ctx context.Context, args []string, streams Streams) int {
	root := NewRootCommand(streams)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var printed *alreadyReported
	if errors.As(err, &printed) {
		return 1
	}
	// Several bad manifest documents come joined: one line each.
	errs := []error{err}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs = flatten(joined.Unwrap())
	}
	for _, e := range errs {
		fmt.Fprintln(streams.ErrOut, FormatError(e))
	}
	var usage *usageError
	if errors.As(err, &usage) {
		fmt.Fprintf(streams.ErrOut, "See '%s --help' for usage.\n", usage.command)
	}
	return 1
}

func flatten(errs []error) []error {
	var out []error
	for _, e := range errs {
		if joined, ok := e.(interface{ Unwrap() []error }); ok {
			out = append(out, flatten(joined.Unwrap())...)
		} else {
			out = append(out, e)
		}
	}
	return out
}

// globals are the flags every command has, and what they lead to.
type globals struct {
	streams   Streams
	server    string
	namespace string
	// namespaceSet: -n was given, so a manifest naming another namespace
	// is a mistake rather than a choice.
	namespaceSet bool
	timeout      time.Duration
	verbose      bool
}

// dial connects to the API replicas. callTimeout bounds each call (0: the
// --timeout flag).
func (g *globals) dial(callTimeout time.Duration) (*client.Client, error) {
	if callTimeout == 0 {
		callTimeout = g.timeout
	}
	logger := slog.New(slog.DiscardHandler)
	if g.verbose {
		logger = slog.New(slog.NewTextHandler(g.streams.ErrOut, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	c, err := client.New(client.Config{
		Endpoints:   client.EndpointsFrom(g.server),
		CallTimeout: callTimeout,
		Logger:      logger.With("component", "capctl"),
		UserAgent:   "capctl",
	})
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return c, nil
}

// NewRootCommand builds the capctl command tree.
func NewRootCommand(streams Streams) *cobra.Command {
	g := &globals{streams: streams}
	root := &cobra.Command{
		Use:   "capctl",
		Short: "capctl controls a Capstan cluster",
		Long: `capctl controls a Capstan cluster, the way kubectl controls Kubernetes.

It talks gRPC to any of the API replicas (--server, else $CAPSTAN_SERVER, else
` + client.DefaultEndpoints + `) and fails over between them on its own.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			g.namespaceSet = cmd.Flags().Changed("namespace")
		},
	}
	root.SetIn(streams.In)
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{command: cmd.CommandPath(), err: err}
	})
	root.CompletionOptions.DisableDefaultCmd = true

	pf := root.PersistentFlags()
	pf.StringVar(&g.server, "server", "", "API replicas to talk to, host:port[,host:port...] (default $"+client.EnvServer+", else "+client.DefaultEndpoints+")")
	pf.StringVarP(&g.namespace, "namespace", "n", resource.DefaultNamespace, "namespace of namespaced objects")
	pf.DurationVar(&g.timeout, "timeout", client.DefaultCallTimeout, "give up on an API call (retries on other replicas included) after this long")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "log retries and failovers on stderr")

	root.AddCommand(newGetCommand(g), newDescribeCommand(g), newApplyCommand(g), newDeleteCommand(g),
		newScaleCommand(g), newRolloutCommand(g), newClusterCommand(g), newLogsCommand(g), newPortForwardCommand(g))
	return root
}

// usageError is a mistake in the command line itself.
type usageError struct {
	command string
	err     error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(cmd *cobra.Command, format string, args ...any) error {
	return &usageError{command: cmd.CommandPath(), err: fmt.Errorf(format, args...)}
}

// alreadyReported says the command has printed its errors (one per object)
// and only the exit code is left to set.
type alreadyReported struct{ failures int }

func (e *alreadyReported) Error() string { return fmt.Sprintf("%d operations failed", e.failures) }

// The kinds some commands treat specially.
var (
	eventKind      = resource.MustLookup("Event")
	podKind        = resource.MustLookup("Pod")
	replicaSetKind = resource.MustLookup("ReplicaSet")
	deploymentKind = resource.MustLookup("Deployment")
)

// kindList names kinds for messages: "deployments and replicasets".
func kindList(kinds ...*resource.Kind) string {
	var names []string
	for _, k := range kinds {
		names = append(names, k.Resource)
	}
	return strings.Join(names, " and ")
}

// lookupKind finds the kind an argument names ("po", "pods", "Pod").
func lookupKind(cmd *cobra.Command, name string) (*resource.Kind, error) {
	kind, ok := resource.Lookup(name)
	if !ok {
		return nil, usagef(cmd, "the server doesn't have a resource type %q (known: %s)", name, strings.Join(resource.Names(), ", "))
	}
	return kind, nil
}

// kindAndNames reads KIND NAME... or a single KIND/NAME.
func kindAndNames(cmd *cobra.Command, args []string) (*resource.Kind, []string, error) {
	if len(args) == 0 {
		return nil, nil, usagef(cmd, "name a kind: one of %s", strings.Join(resource.Names(), ", "))
	}
	first, rest := args[0], args[1:]
	if k, n, ok := strings.Cut(first, "/"); ok {
		if len(rest) > 0 {
			return nil, nil, usagef(cmd, "give either KIND/NAME or KIND NAME..., not both")
		}
		first, rest = k, []string{n}
	}
	kind, err := lookupKind(cmd, first)
	if err != nil {
		return nil, nil, err
	}
	for _, n := range rest {
		if n == "" {
			return nil, nil, usagef(cmd, "an object name may not be empty")
		}
	}
	return kind, rest, nil
}

// namespaceFor is the namespace a command works in for kind.
func (g *globals) namespaceFor(kind *resource.Kind) string {
	if !kind.Namespaced {
		return ""
	}
	return g.namespace
}

// writeErr prints one per-object error line.
func (g *globals) writeErr(err error) {
	fmt.Fprintln(g.streams.ErrOut, FormatError(err))
}

// interrupted reports whether err only says the command was stopped (by
// Ctrl-C), which ends a watch normally.
func interrupted(ctx context.Context, err error) bool {
	return ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, ctx.Err()) || isCanceled(err))
}
