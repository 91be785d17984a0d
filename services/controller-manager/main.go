// Command controller-manager runs Capstan's controllers (ReplicaSet,
// Deployment, NodeLifecycle, GarbageCollector). Several replicas run at
// once; the one holding the lease acts, fenced, and the others stand by.
// Flags are defined in package app; --health-probe=URL only checks URL.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/capstan-dev/capstan/services/controller-manager/app"
)

func main() {
	opts, err := app.ParseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	} else if err != nil {
		os.Exit(2) // the flag package has printed the error and the usage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err = app.Run(ctx, opts)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
