package testcluster

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/capstan-dev/capstan/internal/localcluster"
)

// closeTimeout bounds ProgramFlags.Close.
const closeTimeout = time.Minute

// ProgramFlags are the flags of a program that runs a cluster — the
// benchmarks in hack/, a fault-injection run — so that every such program
// offers the same ones, and starts and closes its cluster the same way,
// reporting on stderr.
type ProgramFlags struct {
	// BinDir is -bin-dir, Config.BinDir.
	BinDir string
	// KeepState is -keep-state: Close keeps the cluster's directory.
	KeepState bool
	// Verbose is -v: the runner logs to stderr.
	Verbose bool
}

// AddFlags defines -bin-dir, -keep-state and -v on fs.
func (f *ProgramFlags) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&f.BinDir, "bin-dir", f.BinDir, "directory holding the built binaries (default: $"+localcluster.BinDirEnv+" if it has them, else build them into the state directory)")
	fs.BoolVar(&f.KeepState, "keep-state", f.KeepState, "keep the state directory (data and logs of every process) and print its path")
	fs.BoolVar(&f.Verbose, "v", f.Verbose, "log what the runner does")
}

// Logger is the logger the flags ask for: stderr with -v, else none.
func (f ProgramFlags) Logger() *slog.Logger {
	if f.Verbose {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// Start is Start of cfg with the flags' BinDir and Logger; it says on
// stderr when it is about to build the binaries.
func (f ProgramFlags) Start(ctx context.Context, cfg Config) (*Cluster, error) {
	cfg.BinDir, cfg.Logger = f.BinDir, f.Logger()
	if cfg.BinDir == "" && os.Getenv(localcluster.BinDirEnv) == "" {
		fmt.Fprintln(os.Stderr, "building the binaries ...")
	}
	return Start(ctx, cfg)
}

// Close closes c (within a minute), keeping its directory with
// -keep-state, and says on stderr where the state is kept or what failed.
// A program defers it right after Start, so that Ctrl-C stops the cluster
// too.
func (f ProgramFlags) Close(c *Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if err := c.Close(ctx, f.KeepState); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", c.cfg.Name, err)
	} else if f.KeepState {
		fmt.Fprintln(os.Stderr, "state (data and logs) kept in", c.Dir())
	}
}
