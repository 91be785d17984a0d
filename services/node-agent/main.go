// Command node-agent runs the pods bound to one node as local processes:
// it registers the Node, renews its node lease, and keeps the pods running
// even while every API server is gone. With --hollow-nodes it simulates
// many nodes instead. Flags are defined in package app; --health-probe=ADDR
// only checks ADDR. SIGTERM stops the agent and leaves the pods running:
// the next agent on the same --state-dir adopts them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/capstan-dev/capstan/services/node-agent/app"
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
