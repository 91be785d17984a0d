package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zapcore"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/events"
	"github.com/capstan-dev/capstan/internal/grpcserver"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/storage/etcd3"
	"github.com/capstan-dev/capstan/internal/version"
	"github.com/capstan-dev/capstan/services/apiserver/internal/api"
	"github.com/capstan-dev/capstan/services/apiserver/internal/clusterstatus"
	"github.com/capstan-dev/capstan/services/apiserver/internal/etcdendpoints"
	"github.com/capstan-dev/capstan/services/apiserver/internal/etcdmember"
	"github.com/capstan-dev/capstan/services/apiserver/internal/leases"
	"github.com/capstan-dev/capstan/services/apiserver/internal/registry"
)

// eventFlushTimeout bounds writing the events still pending at a stop.
const eventFlushTimeout = 2 * time.Second

// registryEvents is the events.Store of the API server's own events: its
// registry.
type registryEvents struct{ reg *registry.Registry }

var eventKind = resource.MustLookup("Event")

func (r registryEvents) CreateEvent(ctx context.Context, event *capstanv1.Event) (*capstanv1.Event, error) {
	obj, err := r.reg.Create(ctx, eventKind, event, registry.WriteOptions{})
	if err != nil {
		return nil, err
	}
	return obj.(*capstanv1.Event), nil
}

func (r registryEvents) UpdateEvent(ctx context.Context, event *capstanv1.Event) (*capstanv1.Event, error) {
	obj, err := r.reg.Update(ctx, eventKind, event, registry.WriteOptions{})
	if err != nil {
		return nil, err
	}
	return obj.(*capstanv1.Event), nil
}

func (r registryEvents) GetEvent(ctx context.Context, namespace, name string) (*capstanv1.Event, error) {
	obj, err := r.reg.Get(ctx, eventKind, namespace, name)
	if err != nil {
		return nil, err
	}
	return obj.(*capstanv1.Event), nil
}

// Server is a running API server, assembled by Start: the embedded etcd
// member (or none, with EtcdEndpoints), its own etcd client, storage, the
// registry, the gRPC server with the API and cluster services, the quorum
// monitor behind its health status, etcd endpoint tracking and its
// registration in cluster status.
//
// It stops in one of three ways: Shutdown (the orderly stop of a SIGTERM),
// Kill (as if the process died), or on its own when the gRPC server or the
// embedded member fails, in which case it shuts itself down in order and Err
// says why. Done is closed once it has stopped, every goroutine it started
// has ended and everything it opened is closed.
//
// A Server's methods are safe for concurrent use; Shutdown and Kill may be
// called more than once and from any goroutine: the first stop wins, and
// every call returns once the server has stopped.
type Server struct {
	logger *slog.Logger
	addr   string
	member *etcdmember.Member // nil with an external etcd
	grpc   *grpcserver.Server
	status *clusterstatus.Service
	// release closes what Start opened, in reverse order: the API's
	// connections to node agents, the etcd client, the embedded member, the
	// listener. Only the stopping goroutine calls it, once.
	release func()

	// serveErr is Serve's result, written before serveDone is closed.
	serveDone chan struct{}
	serveErr  error

	stopMonitor      context.CancelFunc
	monitorDone      chan struct{}
	stopRegistration context.CancelFunc
	registrationDone chan struct{}

	// stopc carries the first stop request to the supervising goroutine.
	stopc chan stopRequest
	// err is written before done is closed.
	done chan struct{}
	err  error
}

// stopRequest asks the supervisor to stop the server: in order (ctx bounds
// the graceful gRPC stop) or, with kill, at once.
type stopRequest struct {
	ctx  context.Context
	kill bool
}

// Start validates opts, builds the API server and starts it serving; it
// returns the running Server, or an error (and nothing left running) if the
// options are invalid or a part fails to start. ctx bounds the start only
// (the embedded member's, mainly): once Start has returned, the server runs
// until Shutdown, Kill or a failure of its own, whatever becomes of ctx.
//
// The server answers at once but reports NOT_SERVING until its first
// linearizable read of etcd succeeds, which it tries immediately and then
// every second; from then on its health follows etcd's quorum. Start does
// not wait for that: a caller that needs SERVING waits on the health service.
// HealthProbe must be empty: probing is Run's other mode, not a server.
func Start(ctx context.Context, opts Options) (*Server, error) {
	opts = opts.Complete()
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("apiserver: %w", err)
	}
	if opts.HealthProbe != "" {
		return nil, fmt.Errorf("apiserver: --health-probe %s: a probe is not a server; use Run", opts.HealthProbe)
	}
	logger, err := newLogger(opts)
	if err != nil {
		return nil, fmt.Errorf("apiserver: %w", err)
	}
	startTime := time.Now()

	lis := opts.Listener
	if lis == nil {
		if lis, err = net.Listen("tcp", opts.Listen); err != nil {
			return nil, fmt.Errorf("apiserver: %w", err)
		}
	}
	// Whatever fails below must release what was started before it; once
	// the server runs, the same list is its release on the way out.
	var cleanups []func()
	release := func() {
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
			release()
			return nil, fmt.Errorf("apiserver: %w", err)
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
		release()
		return nil, fmt.Errorf("apiserver: etcd client of %v: %w", endpoints, err)
	}
	cleanups = append(cleanups, func() {
		if err := client.Close(); err != nil && !errors.Is(err, context.Canceled) {
			logger.Warn("closing the etcd client", "error", err)
		}
	})

	store := etcd3.New(client, etcd3.Options{
		Logger: logger.With("subsystem", "storage"),
		// A Lease's epoch is its key's create revision; the store hands the
		// revision out and the leases package says what it means.
		StampCreateRevision: leases.StampEpoch,
	})
	reg := registry.New(store, registry.Options{Logger: logger.With("subsystem", "registry"), BookmarkInterval: opts.BookmarkInterval})
	skew := opts.ClockSkewAllowance
	if skew == 0 {
		skew = -1 // none (grpcserver's zero means its default)
	}
	srv := grpcserver.New(grpcserver.Options{
		Logger:             logger.With("subsystem", "grpc"),
		RequestTimeout:     opts.RequestTimeout,
		ClockSkewAllowance: skew,
		MaxRequestBytes:    opts.MaxRequestBytes,
	})
	// The lease transitions this replica makes are Events, written through
	// its own registry.
	recorder := events.NewRecorderWith(registryEvents{reg}, &capstanv1.EventSource{Component: "apiserver", Host: opts.Name},
		logger.With("subsystem", "events"))
	cleanups = append(cleanups, func() { // before the etcd client closes
		flushCtx, cancel := context.WithTimeout(context.Background(), eventFlushTimeout)
		defer cancel()
		recorder.Flush(flushCtx)
	})
	leaseService := leases.New(client, leases.Options{
		Logger:       logger.With("subsystem", "leases"),
		Replica:      opts.Name,
		Events:       recorder,
		Stopping:     srv.Stopping,
		FrozenWithin: srv.FrozenWithin,
	})
	closeAPI, err := api.Register(srv, reg, leaseService)
	if err != nil {
		release()
		return nil, fmt.Errorf("apiserver: register the API: %w", err)
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
		release()
		return nil, fmt.Errorf("apiserver: %w", err)
	}
	capstanv1.RegisterClusterServiceServer(srv, status)

	s := &Server{
		logger:           logger,
		addr:             lis.Addr().String(),
		member:           member,
		grpc:             srv,
		status:           status,
		release:          release,
		serveDone:        make(chan struct{}),
		monitorDone:      make(chan struct{}),
		registrationDone: make(chan struct{}),
		stopc:            make(chan stopRequest),
		done:             make(chan struct{}),
	}
	go func() {
		defer close(s.serveDone)
		s.serveErr = srv.Serve(lis)
	}()
	logger.Info("serving gRPC; NOT_SERVING until etcd has a quorum", "address", s.addr, "advertise-address", opts.AdvertiseAddress, "etcd-endpoints", endpoints, "version", self.Version)

	// The server's own goroutines outlive Start's ctx, keeping its values.
	var monitorCtx, registrationCtx context.Context
	monitorCtx, s.stopMonitor = context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		defer close(s.monitorDone)
		var wg sync.WaitGroup
		wg.Go(func() {
			etcdendpoints.Track(monitorCtx, client, etcdendpoints.Options{Logger: logger.With("subsystem", "etcd-endpoints")})
		})
		wg.Go(func() { store.ExpireRequests(monitorCtx) })
		wg.Go(func() { store.TickClock(monitorCtx) })
		monitorQuorum(monitorCtx, client, srv, logger)
		wg.Wait()
	}()
	registrationCtx, s.stopRegistration = context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		defer close(s.registrationDone)
		_ = status.Run(registrationCtx) // always nil; it logs its own failures
	}()
	go s.supervise()
	return s, nil
}

// Addr is the address the server listens on, host:port.
func (s *Server) Addr() string { return s.addr }

// Done is closed once the server has stopped, by Shutdown, Kill or on its
// own, and released everything it held.
func (s *Server) Done() <-chan struct{} { return s.done }

// Err says, once Done is closed, why the server stopped on its own (the
// gRPC server or the embedded member failed), or that serving failed during
// a shutdown. It is nil while the server runs and after a clean stop.
func (s *Server) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Shutdown stops the server in order: the quorum monitor stops, health turns
// NOT_SERVING for good, open watch streams end with UNAVAILABLE so their
// clients resume elsewhere, and unary calls in flight may finish — until ctx
// ends or 5 s pass, whichever is first, after which they are cut off. Then
// the replica deregisters from cluster status, and the etcd client and the
// embedded member close (each with bounds of its own). Shutdown returns once
// all of that is done, with Err; if the server had already stopped, it
// returns Err at once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.requestStop(stopRequest{ctx: ctx})
	return s.Err()
}

// Kill stops the server as if its process had been killed: connections are
// closed at once, so calls in flight and open streams fail with UNAVAILABLE;
// the health status is not changed and the replica does not deregister (its
// registration expires with its lease, as a dead process's does). Then every
// goroutine ends and the etcd client closes. An embedded member is closed
// too, the one way embed can stop it (a leader hands leadership over first).
// Kill returns once the server has stopped.
func (s *Server) Kill() {
	s.requestStop(stopRequest{ctx: context.Background(), kill: true})
}

// requestStop hands req to the supervisor unless the server is already
// stopping, and waits until it has stopped.
func (s *Server) requestStop(req stopRequest) {
	select {
	case s.stopc <- req:
	case <-s.done:
	}
	<-s.done
}

// supervise waits for a stop request or a failure, and stops the server
// accordingly. It is the only goroutine that stops the server.
func (s *Server) supervise() {
	defer close(s.done)
	var memberDone <-chan struct{}
	if s.member != nil {
		memberDone = s.member.Done()
	}
	req := stopRequest{ctx: context.Background()}
	select {
	case req = <-s.stopc:
		if !req.kill {
			s.logger.Info("shutting down")
		}
	case <-s.serveDone:
		err := s.serveErr
		if err == nil {
			err = errors.New("serving ended before any stop")
		}
		s.err = fmt.Errorf("apiserver: gRPC server stopped: %w", err)
		s.logger.Error("gRPC server stopped on its own; shutting down", "error", err)
	case <-memberDone:
		s.err = fmt.Errorf("apiserver: %w", s.member.Err())
		s.logger.Error("embedded etcd member stopped on its own; shutting down", "error", s.member.Err())
	}
	if req.kill {
		s.kill()
		return
	}
	s.shutdown(req.ctx)
}

// shutdown is Shutdown's ordered stop.
func (s *Server) shutdown(ctx context.Context) {
	s.stopMonitor()
	<-s.monitorDone
	stopCtx, cancel := context.WithTimeout(ctx, grpcStopTimeout)
	if err := s.grpc.Stop(stopCtx); err != nil {
		s.logger.Warn("graceful gRPC stop timed out; remaining calls were cut off", "error", err)
	}
	cancel()
	<-s.serveDone
	if s.serveErr != nil && s.err == nil {
		s.err = fmt.Errorf("apiserver: %w", s.serveErr)
	}
	s.stopRegistration()
	<-s.registrationDone
	s.status.Deregister(context.WithoutCancel(ctx))
	s.release()
	if s.err == nil {
		s.logger.Info("stopped")
	}
}

// kill is Kill's abrupt stop.
func (s *Server) kill() {
	s.grpc.Abort() // no grace and no health change, as a killed process
	<-s.serveDone
	s.stopMonitor()
	<-s.monitorDone
	s.stopRegistration()
	<-s.registrationDone
	s.release()
	s.logger.Info("killed: stopped without a shutdown")
}
