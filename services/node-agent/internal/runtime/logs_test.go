package runtime

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// waitForFile: a shell function the test scripts use to wait for the test.
const waitForFile = `wait_for() { while [ ! -f "$1" ]; do sleep 0.02; done; }; `

func TestLogsTailAndFollow(t *testing.T) {
	rt := newRuntime(t, fastOptions(t))
	syncPod(t, rt, testPod("u-logs", "", 1, shell("app",
		waitForFile+`for i in 1 2 3 4 5; do echo line-$i; done; wait_for go; printf 'after-go\npartial'; exec sleep 300`)))
	all := "line-1\nline-2\nline-3\nline-4\nline-5\n"
	poll.For(t, waitTimeout, "5 lines", func(context.Context) error {
		if out := logsOf(t, rt, "u-logs", "app", LogOptions{TailLines: -1}); out != all {
			return fmt.Errorf("log %q", out)
		}
		return nil
	})
	for _, tt := range []struct {
		tail int64
		want string
	}{
		{-1, all},
		{0, ""},
		{2, "line-4\nline-5\n"},
		{5, all},
		{10, all},
	} {
		if got := logsOf(t, rt, "u-logs", "app", LogOptions{TailLines: tt.tail}); got != tt.want {
			t.Errorf("tail %d = %q, want %q", tt.tail, got, tt.want)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var follow syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- rt.Logs(ctx, "u-logs", "app", LogOptions{Follow: true, TailLines: 1}, &follow)
	}()
	poll.For(t, waitTimeout, "follow to show the tail", func(context.Context) error {
		if got := follow.String(); got != "line-5\n" {
			return fmt.Errorf("follow shows %q", got)
		}
		return nil
	})
	touch(t, filepath.Join(workDir(rt, "u-logs"), "go"))
	poll.For(t, waitTimeout, "follow to show new output", func(context.Context) error {
		if got := follow.String(); got != "line-5\nafter-go\npartial" {
			return fmt.Errorf("follow shows %q", got)
		}
		return nil
	})
	if got := logsOf(t, rt, "u-logs", "app", LogOptions{TailLines: 1}); got != "partial" {
		t.Errorf("tail 1 with an unterminated last line = %q", got)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("follow ended with %v, want nil", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("follow did not end with its ctx")
	}

	var buf bytes.Buffer
	for _, tt := range []struct {
		name           string
		uid, container string
		opts           LogOptions
	}{
		{"unknown pod", "u-nope", "app", LogOptions{}},
		{"unknown container", "u-logs", "nope", LogOptions{}},
		{"no previous run", "u-logs", "app", LogOptions{Previous: true}},
	} {
		if err := rt.Logs(context.Background(), tt.uid, tt.container, tt.opts, &buf); !apierrors.IsNotFound(err) {
			t.Errorf("%s: %v, want NOT_FOUND", tt.name, err)
		}
	}
}

// TestLogsPreviousAndFollowAcrossRestart: the previous run's log is kept
// apart, and a follower goes on from the old run into the new one.
func TestLogsPreviousAndFollowAcrossRestart(t *testing.T) {
	rt := newRuntime(t, fastOptions(t))
	syncPod(t, rt, testPod("u-prev", wellknown.RestartAlways, 1, shell("app", waitForFile+
		`n=$(cat runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > runs; echo run-$n; `+
		`if [ $n -eq 1 ]; then wait_for go; echo run-1-ends; exit 1; fi; exec sleep 300`)))
	poll.For(t, waitTimeout, "run 1", func(context.Context) error {
		if out := logsOf(t, rt, "u-prev", "app", LogOptions{TailLines: -1}); out != "run-1\n" {
			return fmt.Errorf("log %q", out)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var follow syncBuffer
	done := make(chan error, 1)
	go func() { done <- rt.Logs(ctx, "u-prev", "app", LogOptions{Follow: true, TailLines: -1}, &follow) }()
	poll.For(t, waitTimeout, "follow to show run 1", func(context.Context) error {
		if got := follow.String(); got != "run-1\n" {
			return fmt.Errorf("follow shows %q", got)
		}
		return nil
	})

	touch(t, filepath.Join(workDir(rt, "u-prev"), "go"))
	waitContainer(t, rt, "u-prev", "app", "run 2", func(cs *capstanv1.ContainerStatus) bool {
		return isRunning(cs) && cs.GetRestartCount() == 1
	})
	poll.For(t, waitTimeout, "follow into run 2", func(context.Context) error {
		if got := follow.String(); got != "run-1\nrun-1-ends\nrun-2\n" {
			return fmt.Errorf("follow shows %q", got)
		}
		return nil
	})
	poll.For(t, waitTimeout, "the current log to be run 2's", func(context.Context) error {
		if out := logsOf(t, rt, "u-prev", "app", LogOptions{TailLines: -1}); out != "run-2\n" {
			return fmt.Errorf("log %q", out)
		}
		return nil
	})
	if prev := logsOf(t, rt, "u-prev", "app", LogOptions{Previous: true, TailLines: -1}); prev != "run-1\nrun-1-ends\n" {
		t.Errorf("previous log %q", prev)
	}
	if prev := logsOf(t, rt, "u-prev", "app", LogOptions{Previous: true, TailLines: 1}); prev != "run-1-ends\n" {
		t.Errorf("previous log, tail 1: %q", prev)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("follow: %v", err)
	}
}

// TestLogRotation: a log over MaxLogBytes is moved to .log.1; tail reads
// across both and a follower loses nothing when the process is idle during
// the rotation.
func TestLogRotation(t *testing.T) {
	t.Run("follow and tail across a rotation", func(t *testing.T) {
		opts := fastOptions(t)
		opts.MaxLogBytes = 500
		opts.LogRotateInterval = time.Hour // rotated by hand below
		rt := newRuntime(t, opts)
		syncPod(t, rt, testPod("u-rot", "", 1, shell("app", waitForFile+
			`i=0; while [ $i -lt 100 ]; do printf 'line-%03d\n' $i; i=$((i+1)); done; wait_for go; `+
			`while [ $i -lt 200 ]; do printf 'line-%03d\n' $i; i=$((i+1)); done; exec sleep 300`)))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var follow syncBuffer
		done := make(chan error, 1)
		go func() { done <- rt.Logs(ctx, "u-rot", "app", LogOptions{Follow: true, TailLines: -1}, &follow) }()
		c := containerOf(t, rt, "u-rot", "app")
		poll.For(t, waitTimeout, "first 100 lines", func(context.Context) error {
			fi, err := os.Stat(c.logPath())
			if err != nil {
				return err
			}
			if fi.Size() != 900 {
				return fmt.Errorf("log is %d bytes, want 900", fi.Size())
			}
			return nil
		})
		if err := c.rotateLog(rt.opts.MaxLogBytes); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(c.logPath()); err != nil || fi.Size() != 0 {
			t.Fatalf("log after rotation: %v %v", fi, err)
		}
		touch(t, filepath.Join(workDir(rt, "u-rot"), "go"))
		var want strings.Builder
		for i := range 200 {
			fmt.Fprintf(&want, "line-%03d\n", i)
		}
		poll.For(t, waitTimeout, "all 200 lines followed", func(context.Context) error {
			if got := follow.String(); got != want.String() {
				return fmt.Errorf("followed %d bytes, want %d", len(got), want.Len())
			}
			return nil
		})
		cancel()
		if err := <-done; err != nil {
			t.Errorf("follow: %v", err)
		}
		got := logsOf(t, rt, "u-rot", "app", LogOptions{TailLines: 150})
		if wantTail := want.String()[50*9:]; got != wantTail {
			t.Errorf("tail 150 across .log.1 and .log: %d bytes, want %d", len(got), len(wantTail))
		}
	})
	t.Run("size checked periodically", func(t *testing.T) {
		opts := fastOptions(t)
		opts.MaxLogBytes = 500
		opts.LogRotateInterval = 10 * time.Millisecond
		rt := newRuntime(t, opts)
		syncPod(t, rt, testPod("u-auto", "", 1, shell("app", `i=0; while [ $i -lt 100 ]; do echo line-$i; i=$((i+1)); done; exec sleep 300`)))
		c := containerOf(t, rt, "u-auto", "app")
		poll.For(t, waitTimeout, "rotated log", func(context.Context) error {
			fi, err := os.Stat(c.basePath() + rotatedLogExt)
			if err != nil {
				return err
			}
			if fi.Size() <= 500 {
				return fmt.Errorf("%s is %d bytes, want over 500", fi.Name(), fi.Size())
			}
			return nil
		})
	})
}

func TestTailStart(t *testing.T) {
	tests := []struct {
		name  string
		files []string
		n     int64
		want  string
	}{
		{"empty", []string{""}, 3, ""},
		{"fewer lines than asked", []string{"a\nb\n"}, 3, "a\nb\n"},
		{"exact", []string{"a\nb\nc\n"}, 2, "b\nc\n"},
		{"unterminated last line", []string{"a\nb\nc"}, 2, "b\nc"},
		{"across files", []string{"a\nb\n", "c\n"}, 2, "b\nc\n"},
		{"line split across files", []string{"a\nb", "c\nd\n"}, 2, "bc\nd\n"},
		{"empty last file", []string{"a\nb\n", ""}, 1, "b\n"},
		{"blank lines", []string{"\n\n\n"}, 2, "\n\n"},
		{"long", []string{strings.Repeat("x", 70<<10) + "\nlast\n"}, 1, "last\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			var paths []string
			for i, content := range tt.files {
				p := filepath.Join(dir, fmt.Sprint(i))
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
				paths = append(paths, p)
			}
			segs, err := openSegments(paths...)
			if err != nil {
				t.Fatal(err)
			}
			defer segs.close()
			var buf bytes.Buffer
			if err := writeTail(&buf, segs, tt.n); err != nil {
				t.Fatal(err)
			}
			if buf.String() != tt.want {
				t.Errorf("tail %d = %q, want %q", tt.n, buf.String(), tt.want)
			}
		})
	}
}
