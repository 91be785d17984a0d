package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/capstan-dev/capstan/internal/apierrors"
)

// Log files of a container, next to its base path (<pod dir>/<container>).
const (
	currentLogExt  = ".log"
	rotatedLogExt  = ".log.1"
	previousLogExt = ".previous.log"
	previousRotExt = ".previous.log.1"
)

// newLogFile starts a new run's log: the current one (and its rotated
// part) becomes the previous run's log.
func (c *container) newLogFile() {
	base := c.basePath()
	c.logMu.Lock()
	defer c.logMu.Unlock()
	c.logGeneration++
	c.logRotations = 0
	if _, err := os.Stat(base + currentLogExt); err != nil {
		return // the first run
	}
	for _, move := range [][2]string{{base + currentLogExt, base + previousLogExt}, {base + rotatedLogExt, base + previousRotExt}} {
		if err := os.Remove(move[1]); err != nil && !os.IsNotExist(err) {
			c.rt.log.Warn("previous log not removed", "path", move[1], "err", err)
		}
		if err := os.Rename(move[0], move[1]); err != nil && !os.IsNotExist(err) {
			c.rt.log.Warn("log not kept as previous", "path", move[0], "err", err)
		}
	}
}

func (rt *ProcessRuntime) rotateLogsLoop(ctx context.Context) {
	ticker := rt.clock.NewTicker(rt.opts.LogRotateInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		}
		rt.mu.Lock()
		var all []*container
		for _, p := range rt.pods {
			all = append(all, p.containers...)
		}
		rt.mu.Unlock()
		for _, c := range all {
			if err := c.rotateLog(rt.opts.MaxLogBytes); err != nil {
				rt.log.Warn("log rotation failed", "pod-uid", c.pod.uid, "container", c.name, "err", err)
			}
		}
	}
}

// rotateLog moves the current log into .log.1 if it is over max: copy,
// then truncate in place, because the process keeps writing to its open
// file (O_APPEND, so its next write lands at the new end). What it writes
// between the copy and the truncation is lost.
func (c *container) rotateLog(max int64) error {
	base := c.basePath()
	c.logMu.Lock()
	defer c.logMu.Unlock()
	f, err := os.OpenFile(base+currentLogExt, os.O_RDWR, 0)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() <= max {
		return err
	}
	tmp := base + rotatedLogExt + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, f); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, base+rotatedLogExt); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	c.logRotations++
	return nil
}

// Logs implements Runtime. A container that has not written anything has
// an empty log. Previous is the run before the current one (NOT_FOUND if
// there is none) and is never followed. Following ends without an error
// when ctx ends, the runtime closes or KillPod has stopped the pod (after
// the last output); it goes on
// across restarts (the new run's output follows the old one's) and
// rotations.
func (rt *ProcessRuntime) Logs(ctx context.Context, uid, container string, opts LogOptions, w io.Writer) error {
	c, err := rt.lookupContainer(uid, container)
	if err != nil {
		return err
	}
	base := c.basePath()
	if opts.Previous {
		c.logMu.RLock()
		segs, err := openSegments(base+previousRotExt, base+previousLogExt)
		c.logMu.RUnlock()
		if err != nil {
			return err
		}
		defer segs.close()
		if len(segs) == 0 {
			return apierrors.NotFound("previous container log", c.pod.namespace, c.pod.name+"/"+container)
		}
		return writeTail(w, segs, opts.TailLines)
	}

	c.logMu.RLock()
	segs, err := openSegments(base+rotatedLogExt, base+currentLogExt)
	f := &logFollower{c: c, generation: c.logGeneration, rotations: c.logRotations}
	c.logMu.RUnlock()
	if err != nil {
		return err
	}
	if err := writeTail(w, segs, opts.TailLines); err != nil {
		segs.close()
		return err
	}
	// The follower goes on from the end of the current log as it was read.
	if n := len(segs); n > 0 && segs[n-1].name == base+currentLogExt {
		f.cur, f.offset = segs[n-1].f, segs[n-1].size
		segs = segs[:n-1]
	}
	segs.close()
	defer f.close()
	if !opts.Follow {
		return nil
	}
	return rt.follow(ctx, f, w)
}

func (rt *ProcessRuntime) lookupContainer(uid, name string) (*container, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	p := rt.pods[uid]
	if p == nil {
		return nil, apierrors.NotFound("pod", "", uid)
	}
	for _, c := range p.containers {
		if c.name == name {
			return c, nil
		}
	}
	return nil, apierrors.NotFound("container", p.namespace, p.name+"/"+name)
}

func (rt *ProcessRuntime) podKnown(p *pod) bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.pods[p.uid] == p
}

func (rt *ProcessRuntime) follow(ctx context.Context, f *logFollower, w io.Writer) error {
	ticker := rt.clock.NewTicker(rt.opts.LogFollowInterval)
	defer ticker.Stop()
	buf := make([]byte, 64<<10)
	for {
		// Looked at before draining: once the pod is forgotten its
		// processes are gone, so this drain is the last one.
		known := rt.podKnown(f.c.pod)
		for {
			n, err := f.next(buf)
			if err != nil {
				return err
			}
			if n == 0 {
				break
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if ctx.Err() != nil {
				return nil
			}
		}
		if !known {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-rt.ctx.Done():
			return nil
		case <-ticker.C():
		}
	}
}

// logFollower reads what is appended to a container's log, across the
// runtime's rotations and new runs.
type logFollower struct {
	c                     *container
	generation, rotations uint64 // of the files it reads, see container

	cur    *os.File // the current run's log, nil until it exists
	offset int64
	// drain is read before cur: the rest of a rotated or replaced file.
	drain       *os.File
	drainOffset int64
}

func (f *logFollower) close() {
	for _, file := range []*os.File{f.cur, f.drain} {
		if file != nil {
			file.Close()
		}
	}
	f.cur, f.drain = nil, nil
}

// next reads the next new bytes into buf; 0 when there are none yet.
func (f *logFollower) next(buf []byte) (int, error) {
	c := f.c
	c.logMu.RLock()
	defer c.logMu.RUnlock()
	for {
		if f.drain != nil {
			n, err := f.drain.ReadAt(buf, f.drainOffset)
			f.drainOffset += int64(n)
			if n > 0 {
				return n, nil
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return 0, err
			}
			f.drain.Close()
			f.drain = nil
		}
		if c.logGeneration != f.generation {
			// A new run: finish the old file (now .previous.log, still open
			// here), then read the new one from its start, rotations
			// included (a new run's log starts with none).
			f.generation, f.rotations = c.logGeneration, 0
			f.drain, f.drainOffset = f.cur, f.offset
			f.cur, f.offset = nil, 0
			continue
		}
		if c.logRotations != f.rotations {
			// .log.1 holds what .log held up to its truncation, at the same
			// offsets. After more than one rotation the older ones are gone:
			// all of .log.1 is new.
			missed := c.logRotations - f.rotations
			f.rotations = c.logRotations
			from := f.offset
			if missed > 1 || f.cur == nil {
				from = 0
			}
			f.offset = 0
			if rotated, err := os.Open(f.c.basePath() + rotatedLogExt); err == nil {
				f.drain, f.drainOffset = rotated, from
			}
			continue
		}
		if f.cur == nil {
			cur, err := os.Open(f.c.logPath())
			if os.IsNotExist(err) {
				return 0, nil
			}
			if err != nil {
				return 0, err
			}
			f.cur, f.offset = cur, 0
		}
		n, err := f.cur.ReadAt(buf, f.offset)
		f.offset += int64(n)
		if err != nil && !errors.Is(err, io.EOF) {
			return n, err
		}
		return n, nil
	}
}

// logSegment is one log file and the size it had when opened; a log is
// the concatenation of its segments.
type logSegment struct {
	name string
	f    *os.File
	size int64
}

type logSegments []logSegment

func (s logSegments) close() {
	for _, seg := range s {
		seg.f.Close()
	}
}

// openSegments opens the files that exist, in order.
func openSegments(paths ...string) (logSegments, error) {
	var segs logSegments
	for _, p := range paths {
		f, err := os.Open(p)
		if os.IsNotExist(err) {
			continue
		}
		if err == nil {
			var fi os.FileInfo
			if fi, err = f.Stat(); err == nil {
				segs = append(segs, logSegment{name: p, f: f, size: fi.Size()})
				continue
			}
			f.Close()
		}
		segs.close()
		return nil, fmt.Errorf("open log: %w", err)
	}
	return segs, nil
}

// writeTail writes the last tailLines lines of segs (all of them if
// negative). A last line without a newline counts as a line.
func writeTail(w io.Writer, segs logSegments, tailLines int64) error {
	startSeg, startOff := 0, int64(0)
	if tailLines == 0 {
		return nil
	}
	if tailLines > 0 {
		startSeg, startOff = tailStart(segs, tailLines)
	}
	for i := startSeg; i < len(segs); i++ {
		from := int64(0)
		if i == startSeg {
			from = startOff
		}
		if _, err := io.Copy(w, io.NewSectionReader(segs[i].f, from, segs[i].size-from)); err != nil {
			return err
		}
	}
	return nil
}

// tailStart finds where the last n lines of segs begin, reading backwards.
func tailStart(segs logSegments, n int64) (seg int, off int64) {
	buf := make([]byte, 32<<10)
	newlines := int64(0)
	last := true // the very last byte: a newline there ends the last line
	for i := len(segs) - 1; i >= 0; i-- {
		end := segs[i].size
		for end > 0 {
			chunk := min(int64(len(buf)), end)
			start := end - chunk
			got, err := segs[i].f.ReadAt(buf[:chunk], start)
			if int64(got) < chunk {
				// The file shrank under us (a rotation): give what there is.
				_ = err
				return i, end
			}
			for j := chunk - 1; j >= 0; j-- {
				if buf[j] != '\n' {
					last = false
					continue
				}
				if last {
					last = false
					continue
				}
				newlines++
				if newlines == n {
					return i, start + j + 1
				}
			}
			end = start
		}
	}
	return 0, 0
}
