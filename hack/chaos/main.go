// Command chaos is `make chaos`: a chaos run (package chaos) on the compose
// cluster when a Docker engine answers, on local processes otherwise — it
// says which — for -duration, from -seed (printed; pass it again to replay
// the same faults). The report goes to stdout and, as text and JSON, to
// -out. It exits 1 when a check fails.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/capstan-dev/capstan/internal/chaos"
	"github.com/capstan-dev/capstan/internal/composecluster"
	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/testcluster"
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		duration = flag.Duration("duration", 5*time.Minute, "how long faults keep coming")
		seed     = flag.Uint64("seed", 0, "seed of every random choice (0: a new one, printed)")
		target   = flag.String("target", "auto", "compose, local, or auto (compose when `docker info` succeeds)")
		out      = flag.String("out", filepath.Join(".chaos", time.Now().Format("20060102-150405")), "directory for report.txt, report.json and history.html")
		keep     = flag.Bool("keep", false, "leave the compose cluster up afterwards")
		kinds    = flag.String("faults", "", "only these scenarios, comma-separated (component, lease-holder, etcd-leader, master, worker, network-cut, quorum-loss)")
		apiArgs  = flag.String("apiserver-args", "", "extra arguments of the local API servers, space-separated (e.g. --log-level=debug)")
		program  testcluster.ProgramFlags
	)
	program.AddFlags(flag.CommandLine)
	flag.Parse()
	if *seed == 0 {
		*seed = rand.Uint64() >> 12
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(s string) { fmt.Printf("%s %s\n", time.Now().Format("15:04:05"), s) }

	if *target == "auto" {
		*target = "local"
		if composecluster.Available(ctx) {
			*target = "compose"
		}
	}
	var t chaos.Target
	var saveLogs func() (string, error)
	switch *target {
	case "compose":
		root, err := os.Getwd()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		logf("chaos on the compose cluster (project capstan-chaos); SEED=" + fmt.Sprint(*seed))
		c, err := composecluster.Up(ctx, composecluster.Config{Root: root, Project: "capstan-chaos"})
		if err != nil {
			fmt.Fprintln(os.Stderr, "compose up:", err)
			return 2
		}
		if !*keep {
			defer func() {
				downCtx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				if err := c.Down(downCtx); err != nil {
					fmt.Fprintln(os.Stderr, "compose down:", err)
				}
			}()
		}
		t = chaos.NewComposeTarget(c)
		// A failed run keeps every container's log beside its report,
		// since the containers are gone after it.
		saveLogs = func() (string, error) {
			logCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			path := filepath.Join(*out, "compose.log")
			return path, os.WriteFile(path, []byte(c.Logs(logCtx, 0)), 0o644)
		}
	case "local":
		logf("no Docker engine or -target local: chaos on local processes (3 masters, 3 workers); SEED=" + fmt.Sprint(*seed))
		cfg := testcluster.Config{Name: "chaos", Workers: 3}
		if *apiArgs != "" {
			cfg.Args = map[string][]string{localcluster.APIServerBinary: strings.Fields(*apiArgs)}
		}
		c, err := program.Start(ctx, cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "start:", err)
			return 2
		}
		defer program.Close(c)
		t = chaos.NewLocalTarget(c)
	default:
		fmt.Fprintf(os.Stderr, "-target %q: want compose, local or auto\n", *target)
		return 2
	}

	var only []chaos.FaultKind
	for _, k := range strings.Split(*kinds, ",") {
		if k = strings.TrimSpace(k); k != "" {
			only = append(only, chaos.FaultKind(k))
		}
	}
	rep, err := chaos.Run(ctx, t, chaos.Config{Duration: *duration, Seed: *seed, OutDir: *out, Log: logf, Kinds: only})
	fmt.Println()
	fmt.Print(rep.Text())
	if werr := rep.WriteFiles(*out); werr != nil {
		fmt.Fprintln(os.Stderr, "report:", werr)
	} else {
		fmt.Printf("report: %s/report.txt, %s/report.json\n", *out, *out)
	}
	if (err != nil || !rep.Passed()) && saveLogs != nil {
		if path, lerr := saveLogs(); lerr != nil {
			fmt.Fprintln(os.Stderr, "saving the containers' logs:", lerr)
		} else {
			fmt.Printf("the containers' logs: %s\n", path)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos run stopped: %v (replay with SEED=%d)\n", err, *seed)
		return 1
	}
	if !rep.Passed() {
		return 1
	}
	return 0
}
