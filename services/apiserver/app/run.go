package app

import (
	"context"
	"errors"
	"fmt"
	"github.com/capstan-dev/capstan/internal/logging"
	"log/slog"
	"net"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zapcore"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/grpcserver"
	"github.com/capstan-dev/capstan/internal/storage/etcd3"
	"github.com/capstan-dev/capstan/internal/version"
	"github.com/capstan-dev/capstan/services/apiserver/internal/api"
	"github.com/capstan-dev/capstan/services/apiserver/internal/clusterstatus"
	"github.com/capstan-dev/capstan/services/apiserver/internal/etcdendpoints"
	"github.com/capstan-dev/capstan/services/apiserver/internal/etcdmember"
	"github.com/capstan-dev/capstan/services/apiserver/internal/leases"
	"github.com/capstan-dev/capstan/services/apiserver/internal/registry"
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

// Run runs the API server until ctx ends, then shuts it down in order:
// health NOT_SERVING, gRPC graceful stop, deregistration, etcd client, the
// embedded member. It returns nil after a clean shutdown, and an error if
// the options are invalid, something fails to start, or the server or the
// embedded member stops on its own. In probe mode (HealthProbe) it only
// checks that address's health.
func Run(ctx context.Context, opts Options) error {
	opts = opts.Complete()
	if err := opts.Validate(); err != nil {
		return fmt.Errorf("apiserver: %w", err)
	}
	if opts.HealthProbe != "" {
		probeCtx, cancel := context.WithTimeout(ctx, probeTimeout)
		defer cancel()
		return grpcserver.Probe(probeCtx, opts.HealthProbe)
	}
	logger, err := newLogger(opts)
	if err != nil {
		return err
	}
	startTime := time.Now()

	lis := opts.Listener
	if lis == nil {
		if lis, err = net.Listen("tcp", opts.Listen); err != nil {
			return fmt.Errorf("apiserver: %w", err)
		}
	}
	// Whatever fails below must release what was started before it.
	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	cleanups = append(cleanups, func() { lis.Close() })

	var member *etcdmember.Member
	endpoints := opts.EtcdEndpoints
	if len(endpoints) == 0 {
		member, err = etcdmember.Start(ctx, opts.memberConfig(logger.With("subsystem", "etcd")))
		if err != nil {
			cleanup()
			return fmt.Errorf("apiserver: %w", err)
		}
		cleanups = append(cleanups, func() { closeMember(logger, member) })
		endpoints = []string{member.ClientURL()}
		logger.Info("embedded etcd member started; waiting for its cluster", "etcd-member", member.Name(), "etcd-client-url", member.ClientURL(), "etcd-peer-url", member.PeerURL())
	}

	client, err := clientv3.New(clientv3.Config{
		// etcdendpoints.Track keeps the list to the members that are ready.
		Endpoints: endpoints,
		// Notice a dead or frozen member within seconds and move on.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Logger:               etcdmember.NewZapLogger(logger.With("subsystem", "etcd-client"), zapcore.ErrorLevel),
	})
	if err != nil {
		cleanup()
		return fmt.Errorf("apiserver: etcd client of %v: %w", endpoints, err)
	}
	cleanups = append(cleanups, func() {
		if err := client.Close(); err != nil && !errors.Is(err, context.Canceled) {
			logger.Warn("closing the etcd client", "error", err)
		}
	})

	store := etcd3.New(client, etcd3.Options{Logger: logger.With("subsystem", "storage")})
	reg := registry.New(store, registry.Options{Logger: logger.With("subsystem", "registry"), BookmarkInterval: opts.BookmarkInterval})
	srv := grpcserver.New(grpcserver.Options{
		Logger:          logger.With("subsystem", "grpc"),
		RequestTimeout:  opts.RequestTimeout,
		MaxRequestBytes: opts.MaxRequestBytes,
	})
	closeAPI, err := api.Register(srv, reg, leases.New(client, logger.With("subsystem", "leases")))
	if err != nil {
		cleanup()
		return fmt.Errorf("apiserver: register the API: %w", err)
	}
	cleanups = append(cleanups, closeAPI) // runs after the gRPC server stopped
	self := &capstanv1.ApiServer{
		Name:      opts.Name,
		Address:   opts.AdvertiseAddress,
		StartTime: timestamppb.New(startTime),
		Version:   version.Version,
	}
	if member != nil {
		self.EtcdMember = member.Name()
	}
	status, err := clusterstatus.New(clusterstatus.Options{Client: client, Self: self, Logger: logger.With("subsystem", "cluster-status")})
	if err != nil {
		cleanup()
		return fmt.Errorf("apiserver: %w", err)
	}
	capstanv1.RegisterClusterServiceServer(srv, status)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	logger.Info("serving gRPC; NOT_SERVING until etcd has a quorum", "address", lis.Addr().String(), "advertise-address", opts.AdvertiseAddress, "etcd-endpoints", endpoints, "version", self.Version)

	monitorCtx, stopMonitor := context.WithCancel(context.WithoutCancel(ctx))
	monitorDone := make(chan struct{})
	go func() {
		defer close(monitorDone)
		var wg sync.WaitGroup
		wg.Go(func() {
			etcdendpoints.Track(monitorCtx, client, etcdendpoints.Options{Logger: logger.With("subsystem", "etcd-endpoints")})
		})
		monitorQuorum(monitorCtx, client, srv, logger)
		wg.Wait()
	}()
	registrationCtx, stopRegistration := context.WithCancel(context.WithoutCancel(ctx))
	registrationDone := make(chan struct{})
	go func() {
		defer close(registrationDone)
		_ = status.Run(registrationCtx) // always nil; it logs its own failures
	}()

	var runErr error
	var memberDone <-chan struct{}
	if member != nil {
		memberDone = member.Done()
	}
	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case err := <-served:
		served <- err // for the wait below
		runErr = fmt.Errorf("apiserver: gRPC server stopped: %w", err)
		logger.Error("gRPC server stopped on its own; shutting down", "error", err)
	case <-memberDone:
		runErr = fmt.Errorf("apiserver: %w", member.Err())
		logger.Error("embedded etcd member stopped on its own; shutting down", "error", member.Err())
	}

	stopMonitor()
	<-monitorDone
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grpcStopTimeout)
	if err := srv.Stop(stopCtx); err != nil {
		logger.Warn("graceful gRPC stop timed out; remaining calls were cut off", "error", err)
	}
	cancel()
	if err := <-served; err != nil && runErr == nil {
		runErr = fmt.Errorf("apiserver: %w", err)
	}
	stopRegistration()
	<-registrationDone
	cleanup()
	if runErr == nil {
		logger.Info("stopped")
	}
	return runErr
}

// monitorQuorum sets the health status from a linearizable read every
// second: SERVING while etcd answers one, NOT_SERVING otherwise. The first
// success also refreshes the client's endpoints from the member list, so the
// client reaches every member, not only the one it started with.
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
