// Package logging builds the structured logger every Capstan binary writes
// with, from its --log-level and --log-format flags. Callers add their own
// keys (component, replica, identity...) with Logger.With.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
)

// ParseLevel reads a --log-level value: debug, info, warn or error.
func ParseLevel(s string) (slog.Level, error) {
	switch s {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("--log-level must be debug, info, warn or error, not %q", s)
}

// New returns a logger writing to out (os.Stderr if nil) at level, as JSON
// when format is "json" and as text otherwise.
func New(out io.Writer, level, format string) (*slog.Logger, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	if out == nil {
		out = os.Stderr
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(out, opts)), nil
	}
	return slog.New(slog.NewTextHandler(out, opts)), nil
}
