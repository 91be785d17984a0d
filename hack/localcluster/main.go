// Command localcluster starts, stops and lists the local processes of the
// default Capstan topology (see package localcluster): what `make local-up`,
// `make local-down` and `make local-status` run.
//
//	localcluster [--state-dir .local] [--bin-dir bin] up|down|status
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/capstan-dev/capstan/internal/localcluster"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func run() error {
	flags := flag.NewFlagSet("localcluster", flag.ExitOnError)
	stateDir := flags.String("state-dir", ".local", "directory for data/, logs/ and pids/")
	binDir := flags.String("bin-dir", "bin", "directory holding the built binaries")
	grace := flags.Duration("grace", 10*time.Second, "down: how long a process may take to exit after SIGTERM before SIGKILL")
	readyTimeout := flags.Duration("ready-timeout", localcluster.DefaultReadyTimeout, "up: how long to wait for every process to be ready")
	flags.Usage = func() {
		fmt.Fprintln(flags.Output(), "usage: localcluster [flags] up|down|kill-pods|status")
		fmt.Fprintln(flags.Output(), "  down leaves the pods of the node agents running (the next agent adopts them); kill-pods stops them")
		flags.PrintDefaults()
	}
	// Flags may come before or after the command.
	_ = flags.Parse(os.Args[1:])
	command := flags.Arg(0)
	_ = flags.Parse(flags.Args()[min(1, flags.NArg()):])
	if command == "" || flags.NArg() > 0 {
		flags.Usage()
		os.Exit(2)
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		},
	}))
	cluster, err := localcluster.New(localcluster.Config{
		Topology:     localcluster.Default(*binDir, *stateDir),
		Logger:       logger,
		ReadyTimeout: *readyTimeout,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	switch command {
	case "up":
		if err := cluster.Up(ctx); err != nil {
			return err
		}
		fmt.Println("cluster is up; API servers:", strings.Join(cluster.Topology().APIAddresses(), ","))
		return nil
	case "down":
		return cluster.Down(ctx, *grace)
	case "kill-pods":
		n, err := cluster.KillPods()
		fmt.Printf("killed %d pod processes\n", n)
		return err
	case "status":
		return printStatus(ctx, cluster)
	default:
		flags.Usage()
		os.Exit(2)
		return nil
	}
}

func printStatus(ctx context.Context, cluster *localcluster.Cluster) error {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tPID\tSTATE\tHEALTH\tLOG")
	for _, st := range cluster.Status() {
		pid, state, health := "-", "stopped", "-"
		if st.Pid != 0 {
			pid = fmt.Sprint(st.Pid)
		}
		if st.Running {
			state = "running"
		} else if st.Pid != 0 {
			state = "dead (stale pid file)"
		}
		if st.Running && (st.HealthAddr != "" || st.HealthURL != "") {
			target, good, bad := st.HealthAddr, "SERVING", "not serving"
			if target == "" {
				target, good, bad = st.HealthURL, "OK", "not OK"
			}
			checkCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
			health = target + " " + good
			if err := cluster.CheckReady(checkCtx, st.Name); err != nil {
				health = target + " " + bad
			}
			cancel()
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", st.Name, pid, state, health, st.LogPath)
	}
	return w.Flush()
}
