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
// by an upgrade) as the shim of package containershim, in the container's
// session, with its environment, working directory and log files. The
// runtime writes the container's checkpoint (pid, start time, boot id) and
// only then releases the shim, which records its release (a marker file
// holding the run's id) and execve()s the command, keeping the pid and the
// start time, so the checkpoint names the command's process. If the agent
// dies first, the shim reads EOF and exits having run nothing.
//
// The runtime learns how the execve went from the status pipe, which the
// execve closes: EOF with nothing read means the command runs; otherwise
// the shim writes why it could not (an errno) and exits.

// shimBinary is what the runtime starts as the shim: the running program's
// own executable.
const shimBinary = "/proc/self/exe"

// releaseTimeout bounds the wait for a released shim to execve the
// command: it may still be starting. Past it the process is treated as
// running and watched as such.
const releaseTimeout = time.Minute

// errReleaseUnconfirmed: the shim was released but did not say in time
// whether the command runs.
var errReleaseUnconfirmed = errors.New("runtime: released the container process but saw no execve")

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
