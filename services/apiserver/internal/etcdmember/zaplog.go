package etcdmember

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// demoted are etcd messages logged at warn or above that say nothing an
// operator can act on in Capstan's setup; they go out at debug.
var demoted = map[string]bool{
	// Capstan serves etcd's gRPC and HTTP on one client port on purpose.
	"Running http and grpc server on single port. This is not recommended for production.": true,
	// Auth is not enabled, so no token is ever issued.
	"simple token is not cryptographically signed": true,
	// A new member logs these once while its first raft entries are
	// applied; the version monitor retries and succeeds.
	"Failed to detect schema version":  true,
	"failed to update storage version": true,
}

// NewZapLogger returns a zap logger (for embed.Config or clientv3.Config)
// that passes entries at level or above to logger, with their fields as
// attributes. It is safe for concurrent use.
func NewZapLogger(logger *slog.Logger, level zapcore.Level) *zap.Logger {
	return zap.New(&slogCore{logger: logger, level: level, quiet: new(atomic.Bool)})
}

// parseZapLevel accepts the level names the apiserver's flags use.
func parseZapLevel(s string) (zapcore.Level, error) {
	switch s {
	case "debug":
		return zapcore.DebugLevel, nil
	case "info":
		return zapcore.InfoLevel, nil
	case "warn":
		return zapcore.WarnLevel, nil
	case "error":
		return zapcore.ErrorLevel, nil
	}
	return 0, fmt.Errorf("level must be debug, info, warn or error, not %q", s)
}

type slogCore struct {
	logger *slog.Logger
	level  zapcore.Level
	fields []zapcore.Field
	// quiet, once set, sends every line below DPanic out at debug: a
	// member being closed reports each listener it closes as an error.
	quiet *atomic.Bool
}

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default: // error, dpanic, panic, fatal
		return slog.LevelError
	}
}

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return l >= c.level && c.logger.Enabled(context.Background(), slogLevel(l))
}

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{logger: c.logger, level: c.level, fields: append(c.fields[:len(c.fields):len(c.fields)], fields...), quiet: c.quiet}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	level := slogLevel(e.Level)
	if demoted[e.Message] || (c.quiet.Load() && e.Level < zapcore.DPanicLevel) {
		level = slog.LevelDebug
	}
	if !c.logger.Enabled(context.Background(), level) {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	attrs := make([]slog.Attr, 0, len(keys)+1)
	if e.LoggerName != "" {
		attrs = append(attrs, slog.String("logger", e.LoggerName))
	}
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	c.logger.LogAttrs(context.Background(), level, e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
