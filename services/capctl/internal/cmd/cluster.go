package cmd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/services/capctl/internal/printer"
)

// clusterRefresh is how often `cluster status -w` asks again.
const clusterRefresh = time.Second

// clusterWatchCallTimeout bounds one refresh of `cluster status -w`, so a
// frozen replica stalls the display for a moment rather than for the
// whole --timeout (the client gives each attempt half of it and then moves
// to another replica).
const clusterWatchCallTimeout = 3 * time.Second

// clearScreen moves the cursor home and clears the terminal.
const clearScreen = "\x1b[H\x1b[2J"

func newClusterCommand(g *globals) *cobra.Command {
	cluster := &cobra.Command{
		Use:   "cluster",
		Short: "Inspect the control plane",
	}
	var output string
	var watch bool
	status := &cobra.Command{
		Use:   "status",
		Short: "Show API replicas, etcd members and quorum, and who leads each lease-gated component",
		Long: `Show the control plane as one API replica sees it: every API replica (the one
that answered is marked), the etcd members (the raft leader is marked) with
their term, index, database size and health, whether etcd has quorum, and the
leases that decide which controller-manager and scheduler are active.

With -w it refreshes every second: stop masters and watch leadership move.`,
		Example: `  capctl cluster status
  capctl cluster status -w
  capctl cluster status -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := printer.ParseFormat(output)
			if err != nil {
				return &usageError{command: cmd.CommandPath(), err: err}
			}
			if format == printer.Wide || format == printer.Name {
				return usagef(cmd, "cluster status prints a table, yaml or json")
			}
			callTimeout := time.Duration(0)
			if watch {
				callTimeout = min(g.timeout, clusterWatchCallTimeout)
			}
			c, err := g.dial(callTimeout)
			if err != nil {
				return err
			}
			defer c.Close()
			if watch {
				return watchClusterStatus(cmd.Context(), g, c, format)
			}
			st, err := c.Cluster().GetClusterStatus(cmd.Context(), &capstanv1.GetClusterStatusRequest{})
			if err != nil {
				return err
			}
			return printClusterStatus(g.streams.Out, st, format)
		},
	}
	status.Flags().StringVarP(&output, "output", "o", "", "output format: yaml or json (default: tables)")
	status.Flags().BoolVarP(&watch, "watch", "w", false, "refresh every second until interrupted")
	cluster.AddCommand(status)
	return cluster
}

func printClusterStatus(out io.Writer, st *capstanv1.GetClusterStatusResponse, format printer.Format) error {
	if format == printer.YAML || format == printer.JSON {
		return printer.Message(out, st, format)
	}
	return printer.ClusterStatus(out, st, time.Now())
}

// watchClusterStatus redraws the status every clusterRefresh until ctx
// ends. A failed refresh shows its error and the next one tries again
// (the client picks another replica), so the display survives the loss of
// the replica it was talking to.
func watchClusterStatus(ctx context.Context, g *globals, c *client.Client, format printer.Format) error {
	tty := isTerminal(g.streams.Out)
	ticker := time.NewTicker(clusterRefresh)
	defer ticker.Stop()
	for n := 0; ; n++ {
		var frame bytes.Buffer
		if format == printer.Table {
			fmt.Fprintf(&frame, "Every %v: capctl cluster status    %s\n\n", clusterRefresh, time.Now().Format(time.TimeOnly))
		}
		st, err := c.Cluster().GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			fmt.Fprintln(&frame, FormatError(err))
		} else if err := printClusterStatus(&frame, st, format); err != nil {
			return err
		}
		switch {
		case tty:
			io.WriteString(g.streams.Out, clearScreen)
		case n > 0 && format == printer.YAML:
			io.WriteString(g.streams.Out, "---\n")
		case n > 0 && format == printer.Table:
			io.WriteString(g.streams.Out, "\n")
		}
		if _, err := g.streams.Out.Write(frame.Bytes()); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// isTerminal reports whether w is a character device (a terminal), where
// clearing the screen between refreshes makes sense; into a file or a pipe
// the refreshes are appended.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	info, err := f.Stat()
	return err == nil && info.Mode()&os.ModeCharDevice != 0
}
