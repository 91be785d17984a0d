package app

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-dev/capstan/internal/grpcserver"
	"github.com/capstan-dev/capstan/internal/logging"
	"github.com/capstan-dev/capstan/services/apiserver/internal/etcdmember"
)

// Timings of the API server's own machinery (not flags: they follow from
// the design, not from the deployment).
const (
	// probeTimeout bounds --health-probe.
	probeTimeout = 3 * time.Second
	// quorumCheckInterval and quorumCheckTimeout pace the health monitor.
	quorumCheckInterval = time.Second
	quorumCheckTimeout  = time.Second
	// grpcStopTimeout bounds the graceful stop; calls still running after
	// it are cut off.
	grpcStopTimeout = 5 * time.Second
	// memberCloseTimeout bounds closing the embedded member (a leader hands
	// leadership over first, about one election timeout).
	memberCloseTimeout = 15 * time.Second
)

// quorumCheckKey is read (linearizably) to tell whether etcd has a quorum;
// it need not exist.
const quorumCheckKey = "/capstan-internal/quorum-check"

// Run runs the API server until ctx ends, then shuts it down in order (see
// Server.Shutdown): it is Start, a wait, and Shutdown. It returns nil after a
// clean shutdown, and an error if the options are invalid, something fails
// to start, or the server or the embedded member stops on its own. In probe
// mode (HealthProbe) it only checks that address's health.
func Run(ctx context.Context, opts Options) error {
	if opts.HealthProbe != "" {
		if err := opts.Validate(); err != nil {
			return fmt.Errorf("apiserver: %w", err)
		}
		probeCtx, cancel := context.WithTimeout(ctx, probeTimeout)
		defer cancel()
		return grpcserver.Probe(probeCtx, opts.HealthProbe)
	}
	s, err := Start(ctx, opts)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-s.Done():
	}
	return s.Shutdown(context.WithoutCancel(ctx))
}

// monitorQuorum sets the health status from a linearizable read, made at
// once and then every second: SERVING while etcd answers one, NOT_SERVING
// otherwise. It returns when ctx ends, leaving the status as it was.
func monitorQuorum(ctx context.Context, client *clientv3.Client, srv *grpcserver.Server, logger *slog.Logger) {
	serving, everServed := false, false
	ticker := time.NewTicker(quorumCheckInterval)
	defer ticker.Stop()
	for {
		checkCtx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), quorumCheckTimeout)
		_, err := client.Get(checkCtx, quorumCheckKey)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if ok := err == nil; ok != serving {
			serving = ok
			srv.SetServing(ok)
			switch {
			case ok && !everServed:
				everServed = true
				logger.Info("etcd has a quorum: SERVING")
			case ok:
				logger.Info("etcd quorum is back: SERVING")
			default:
				logger.Warn("etcd has no quorum: NOT_SERVING", "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func closeMember(logger *slog.Logger, member *etcdmember.Member) {
	ctx, cancel := context.WithTimeout(context.Background(), memberCloseTimeout)
	defer cancel()
	if err := member.Close(ctx); err != nil {
		logger.Warn("closing the embedded etcd member", "error", err)
	}
}

func newLogger(opts Options) (*slog.Logger, error) {
	log, err := logging.New(opts.LogOutput, opts.LogLevel, opts.LogFormat)
	if err != nil {
		return nil, err
	}
	return log.With("component", "apiserver", "replica", opts.Name), nil
}
