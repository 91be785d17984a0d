// Command capctl controls a Capstan cluster, the way kubectl controls
// Kubernetes: get, describe, apply, delete, scale, rollout status, logs and
// cluster status. See package services/capctl/internal/cmd.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/capstan-dev/capstan/services/capctl/internal/cmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cmd.Execute(ctx, os.Args[1:], cmd.Streams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	stop()
	os.Exit(code)
}
