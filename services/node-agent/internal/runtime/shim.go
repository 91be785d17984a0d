package runtime

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The holding shim closes the window between starting a container's
// process and checkpointing it. The runtime does not start the command:
// it starts this very program (/proc/self/exe, so even a binary replaced
// by an upgrade) with argv[0] shimArg0, in the container's session, with
// its environment, working directory and log files. The shim waits for a
// byte on shimReleaseFD. The runtime writes the container's checkpoint
// (pid, start time, boot id) and only then writes that byte; the shim
// records its release (a marker file holding the run's id) and execve()s
// the command, which keeps the pid and the start time, so the checkpoint
// names the command's process. If the agent dies first, the shim reads EOF
// and exits having run nothing.
//
// The runtime learns how the execve went from shimStatusFD, which the
// execve closes: EOF with nothing read means the command runs; otherwise
// the shim writes why it could not (an errno) and exits.
//
// Every program that links this package can be the shim: init below takes
// over before main (or TestMain) when argv[0] says so.
const shimArg0 = "capstan-container-shim"

// shimBinary is what the runtime starts as the shim: the running program's
// own executable.
const shimBinary = "/proc/self/exe"

// The shim's file descriptors after stdin, stdout and stderr.
const (
	shimReleaseFD = 3 // read end: a byte releases the shim, EOF ends it
	shimStatusFD  = 4 // write end: closed by a successful execve
)

// Exit statuses of a shim that ran nothing.
const (
	shimExitUnreleased = 125 // its agent went away without releasing it
	shimExitFailed     = 127 // the command could not be executed
	shimExitUsage      = 2   // started with the wrong arguments
)

// releaseTimeout bounds the wait for a released shim to execve the
// command: it may still be starting (a Go program's runtime comes up
// first). Past it the process is treated as running and watched as such.
const releaseTimeout = time.Minute

// errReleaseUnconfirmed: the shim was released but did not say in time
// whether the command runs.
var errReleaseUnconfirmed = errors.New("runtime: released the container process but saw no execve")

func init() {
	if len(os.Args) > 0 && os.Args[0] == shimArg0 {
		os.Exit(runShim(os.Args[1:]))
	}
}

// shimArgs is the shim's command line: the marker that records its
// release, the run's id written into it, the resolved path of the
// command, and the command's argv (argv[0] as the spec gives it).
func shimArgs(markerPath, runID, path string, argv []string) []string {
	return append([]string{shimArg0, markerPath, runID, path}, argv...)
}

// runShim is the shim: it returns only if it runs nothing, with the exit
// status.
func runShim(args []string) int {
	if len(args) < 4 {
		fmt.Fprintf(os.Stderr, "%s: want MARKER RUN-ID PATH ARGV0 [ARG...], got %q\n", shimArg0, args)
		return shimExitUsage
	}
	marker, runID, path, argv := args[0], args[1], args[2], args[3:]
	// Neither pipe may reach the command.
	syscall.CloseOnExec(shimStatusFD)
	if !awaitRelease() {
		return shimExitUnreleased
	}
	_ = syscall.Close(shimReleaseFD)
	// Recorded before the execve: if the agent dies now, the next one
	// learns from the marker that the command may run.
	if err := os.WriteFile(marker, []byte(runID), 0o644); err != nil {
		shimReport("!record the release: " + err.Error())
		return shimExitFailed
	}
	err := syscall.Exec(path, argv, os.Environ())
	var errno syscall.Errno
	if errors.As(err, &errno) {
		shimReport(strconv.Itoa(int(errno)))
	} else {
		shimReport("!" + err.Error())
	}
	return shimExitFailed
}

// awaitRelease blocks until the agent releases the shim (true) or its end
// of the pipe is closed without a release (false).
func awaitRelease() bool {
	var b [1]byte
	for {
		n, err := syscall.Read(shimReleaseFD, b[:])
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		return err == nil && n == 1
	}
}

func shimReport(msg string) {
	_, _ = syscall.Write(shimStatusFD, []byte(msg))
}

// heldProcess is the runtime's end of a shim that has not been released.
type heldProcess struct {
	path    string
	release *os.File // a byte releases the shim; closing it without one ends it
	status  *os.File // EOF once the command runs, or why it does not
}

// newRunID names one run of a container: the shim writes it into the
// marker that records its release, and the checkpoint holds it.
func newRunID() string { return rand.Text() }

// releaseNow lets the shim execve the command and waits until it has. An
// error that is not errReleaseUnconfirmed means the command does not run
// and the shim has ended (or is ending) without running anything else.
// When ctx ends the wait stops with errReleaseUnconfirmed.
func (h *heldProcess) releaseNow(ctx context.Context) error {
	defer h.status.Close()
	_, werr := h.release.Write([]byte{1})
	h.release.Close()
	if err := h.status.SetReadDeadline(time.Now().Add(releaseTimeout)); err != nil {
		return fmt.Errorf("%w: %v", errReleaseUnconfirmed, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = h.status.SetReadDeadline(time.Now()) })
	defer stop()
	msg, err := io.ReadAll(h.status)
	switch {
	case err != nil:
		return fmt.Errorf("%w: %v", errReleaseUnconfirmed, err)
	case len(msg) > 0:
		return shimError(h.path, string(msg))
	case werr != nil:
		// Nothing to read and nobody to read the release: the shim ended
		// before it was released.
		return fmt.Errorf("the holding process ended before it was released: %w", werr)
	}
	return nil
}

// abandon ends the shim without releasing it: it exits having run nothing.
func (h *heldProcess) abandon() {
	h.release.Close()
	h.status.Close()
}

// shimError turns what the shim reported into the error an exec of path
// would have returned.
func shimError(path, msg string) error {
	if text, ok := strings.CutPrefix(msg, "!"); ok {
		return errors.New(text)
	}
	n, err := strconv.Atoi(msg)
	if err != nil {
		return fmt.Errorf("the holding process reported %q", msg)
	}
	return &os.PathError{Op: "fork/exec", Path: path, Err: syscall.Errno(n)}
}

// shimReleased reports whether the shim of run runID recorded its release
// in marker: only then may the command have run.
func shimReleased(marker, runID string) bool {
	b, err := os.ReadFile(marker)
	return err == nil && runID != "" && string(b) == runID
}

func releaseMarkerPath(podDir, container string) string {
	return filepath.Join(podDir, container+releaseMarkerExt)
}

// startStep is a step of a container start, for ProcessOptions.startHook.
type startStep int

const (
	// stepHeld: the shim runs; no checkpoint names it.
	stepHeld startStep = iota + 1
	// stepCheckpointed: its checkpoint is written; it is not released.
	stepCheckpointed
	// stepReleased: it was released and runs the command.
	stepReleased
)

func (s startStep) String() string {
	switch s {
	case stepHeld:
		return "held"
	case stepCheckpointed:
		return "checkpointed"
	case stepReleased:
		return "released"
	}
	return "step-" + strconv.Itoa(int(s))
}

func (rt *ProcessRuntime) startStep(s startStep) {
	if rt.opts.startHook != nil {
		rt.opts.startHook(s)
	}
}
