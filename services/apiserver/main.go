// Command apiserver is a Capstan API replica: the gRPC API over etcd, with an
// embedded etcd member unless --etcd-endpoints names an external cluster.
// Flags are defined in package app; --health-probe=ADDR only checks ADDR.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/capstan-dev/capstan/services/apiserver/app"
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
