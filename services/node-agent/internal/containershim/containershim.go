// Package containershim is the process side of the holding shim that
// starts every container of the process runtime: the runtime starts the
// node agent's own executable with argv[0] Arg0, in the container's
// session, with its environment, working directory and log files; the
// shim waits for a byte on ReleaseFD, records its release in a marker file
// and execve()s the command — keeping the pid and the process start time
// the runtime has checkpointed meanwhile. If the agent goes away first, the
// shim reads EOF and exits having run nothing. How the execve went is told
// on StatusFD, which a successful execve closes. (The runtime's side, and
// why, is in package runtime.)
//
// The package imports nothing but the standard library, so that Go
// initialises it, and its init takes over a shim, before the packages of
// the node agent with heavy initialisers (gRPC, protobuf registries, ...):
// a container starts a few milliseconds sooner, which on a node starting
// dozens of pods at once is most of the start-up cost. Every program that
// links it — the node agent, the runtime's tests — can be the shim.
package containershim

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// Arg0 is the argv[0] that makes a program the shim.
const Arg0 = "capstan-container-shim"

// The shim's file descriptors after stdin, stdout and stderr.
const (
	ReleaseFD = 3 // read end: a byte releases the shim, EOF ends it
	StatusFD  = 4 // write end: closed by a successful execve
)

// Exit statuses of a shim that ran nothing.
const (
	ExitUnreleased = 125 // its agent went away without releasing it
	ExitFailed     = 127 // the command could not be executed
	ExitUsage      = 2   // started with the wrong arguments
)

func init() {
	if len(os.Args) > 0 && os.Args[0] == Arg0 {
		os.Exit(run(os.Args[1:]))
	}
}

// Args is the shim's command line: the marker that records its release,
// the run's id written into it, the resolved path of the command, and the
// command's argv (argv[0] as the spec gives it).
func Args(markerPath, runID, path string, argv []string) []string {
	return append([]string{Arg0, markerPath, runID, path}, argv...)
}

// run is the shim: it returns only if it runs nothing, with the exit
// status.
func run(args []string) int {
	if len(args) < 4 {
		fmt.Fprintf(os.Stderr, "%s: want MARKER RUN-ID PATH ARGV0 [ARG...], got %q\n", Arg0, args)
		return ExitUsage
	}
	marker, runID, path, argv := args[0], args[1], args[2], args[3:]
	// Neither pipe may reach the command.
	syscall.CloseOnExec(StatusFD)
	if !awaitRelease() {
		return ExitUnreleased
	}
	_ = syscall.Close(ReleaseFD)
	// Recorded before the execve: if the agent dies now, the next one
	// learns from the marker that the command may run.
	if err := os.WriteFile(marker, []byte(runID), 0o644); err != nil {
		report("!record the release: " + err.Error())
		return ExitFailed
	}
	err := syscall.Exec(path, argv, os.Environ())
	var errno syscall.Errno
	if errors.As(err, &errno) {
		report(strconv.Itoa(int(errno)))
	} else {
		report("!" + err.Error())
	}
	return ExitFailed
}

// awaitRelease blocks until the agent releases the shim (true) or its end
// of the pipe is closed without a release (false).
func awaitRelease() bool {
	var b [1]byte
	for {
		n, err := syscall.Read(ReleaseFD, b[:])
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		return err == nil && n == 1
	}
}

func report(msg string) {
	_, _ = syscall.Write(StatusFD, []byte(msg))
}
