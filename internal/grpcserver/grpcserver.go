// Package grpcserver builds the gRPC server every Capstan API replica runs:
// the standard health service, server reflection (so grpcurl works with
// nothing but an address), and one interceptor chain — logging, panic
// recovery, a per-call deadline cap that also honours the caller's absolute
// deadline — in front of every handler, and a watch that drops the calls a
// frozen process held (pause.go).
//
// A Server is safe for concurrent use: handlers run on gRPC's goroutines, the
// owner may change the health status at any time, and Stop may be called from
// any goroutine (once; later calls return at once). Streams are cancelled when
// Stop begins and end with UNAVAILABLE (SHUTTING_DOWN), so a watching client
// resumes on another replica instead of holding this one open.
package grpcserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/capstan-dev/capstan/internal/apierrors"
)

// Defaults for zero Options fields.
const (
	// DefaultRequestTimeout caps how long a unary call may run.
	DefaultRequestTimeout = 10 * time.Second
	// DefaultMaxRequestBytes is the largest request message accepted: below
	// etcd's 1.5 MiB request limit, so a request that passes gRPC also fits
	// in one etcd transaction.
	DefaultMaxRequestBytes = 1 << 20
	// DefaultClockSkewAllowance is how far this replica's clock may lag a
	// client's without a call being acted on after the client's deadline.
	DefaultClockSkewAllowance = 50 * time.Millisecond
	// DefaultPauseThreshold: a gap of the monotonic clock longer than this
	// between two looks (every 100 ms) means the process was frozen.
	DefaultPauseThreshold = time.Second
)

// pauseCheckInterval is how often the pause watch looks at the clock.
const pauseCheckInterval = 100 * time.Millisecond

// Options configure a Server. The zero value is usable.
type Options struct {
	// Logger receives one line per finished call and one per recovered
	// panic. nil discards.
	Logger *slog.Logger
	// RequestTimeout caps the deadline of unary calls (default
	// DefaultRequestTimeout). Streams are not capped.
	RequestTimeout time.Duration
	// MaxRequestBytes is the largest request message; gRPC answers
	// RESOURCE_EXHAUSTED above it (default DefaultMaxRequestBytes).
	MaxRequestBytes int
	// ClockSkewAllowance is subtracted from a caller's absolute deadline
	// (wellknown.MetadataDeadline) before it is compared with this
	// replica's clock: as long as the clocks differ by less, a call is
	// never acted on after its caller's deadline (default
	// DefaultClockSkewAllowance; negative: none).
	ClockSkewAllowance time.Duration
	// PauseThreshold: a jump of the monotonic clock longer than this means
	// the process was frozen, and the unary calls it held are dropped with
	// UNAVAILABLE (REPLICA_PAUSED) (default DefaultPauseThreshold).
	PauseThreshold time.Duration
	// UnaryInterceptors and StreamInterceptors run after the built-in ones,
	// just before the handler (room for authentication and authorization).
	UnaryInterceptors  []grpc.UnaryServerInterceptor
	StreamInterceptors []grpc.StreamServerInterceptor
}

// Server is a *grpc.Server with health, reflection and the interceptor chain.
// Register services on it (it is a grpc.ServiceRegistrar) before Serve.
type Server struct {
	// GRPC is the underlying server.
	GRPC *grpc.Server
	// Health is the grpc.health.v1 service. The overall status (service "")
	// starts NOT_SERVING: the owner sets it when the replica is ready, with
	// SetServing or Health.SetServingStatus.
	Health *health.Server

	logger *slog.Logger
	pauses *pauseWatch

	// draining is cancelled when Stop begins; every stream's context is
	// derived from it.
	draining     context.Context
	stopDraining context.CancelFunc
	stopOnce     sync.Once
	// stopping is set when Stop or Abort begins: a handler whose stream
	// ends then knows the server, not its caller, ended it.
	stopping atomic.Bool
}

// New builds a Server; it serves nothing until Serve.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.MaxRequestBytes <= 0 {
		opts.MaxRequestBytes = DefaultMaxRequestBytes
	}
	switch {
	case opts.ClockSkewAllowance == 0:
		opts.ClockSkewAllowance = DefaultClockSkewAllowance
	case opts.ClockSkewAllowance < 0:
		opts.ClockSkewAllowance = 0
	}
	if opts.PauseThreshold <= 0 {
		opts.PauseThreshold = DefaultPauseThreshold
	}
	s := &Server{Health: health.NewServer(), logger: opts.Logger,
		pauses: newPauseWatch(pauseCheckInterval, opts.PauseThreshold, opts.Logger)}
	s.draining, s.stopDraining = context.WithCancel(context.Background())

	callLogger := logging.LoggerFunc(newCallLogger(opts.Logger))
	logOpts := []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithLevels(callLevel),
		logging.WithDurationField(func(d time.Duration) logging.Fields { return logging.Fields{"duration", d} }),
	}
	recoverOpt := recovery.WithRecoveryHandlerContext(s.recoverPanic)

	unary := append([]grpc.UnaryServerInterceptor{
		logging.UnaryServerInterceptor(callLogger, logOpts...),
		recovery.UnaryServerInterceptor(recoverOpt),
		s.deadlineCapInterceptor(opts.RequestTimeout, opts.ClockSkewAllowance, time.Now),
	}, opts.UnaryInterceptors...)
	stream := append([]grpc.StreamServerInterceptor{
		logging.StreamServerInterceptor(callLogger, logOpts...),
		recovery.StreamServerInterceptor(recoverOpt),
		s.drainInterceptor,
	}, opts.StreamInterceptors...)

	s.GRPC = grpc.NewServer(
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		grpc.MaxRecvMsgSize(opts.MaxRequestBytes),
		// Clients ping every 10 s to notice a dead replica; without a
		// permissive policy the server would answer with GOAWAY
		// "too_many_pings" and cut their connections.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             5 * time.Second,
			PermitWithoutStream: true,
		}),
		// Find clients that vanished without closing (a frozen or
		// partitioned process) so their watch streams are released.
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    30 * time.Second,
			Timeout: 10 * time.Second,
		}),
	)
	s.Health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s.GRPC, s.Health)
	reflection.Register(s.GRPC)
	return s
}

// RegisterService implements grpc.ServiceRegistrar.
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.GRPC.RegisterService(desc, impl)
}

// SetServing sets the overall health status (service ""). It has no effect
// once Stop has begun.
func (s *Server) SetServing(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.Health.SetServingStatus("", st)
}

// Serve accepts connections on lis until Stop (or a hard stop of GRPC),
// watching meanwhile for freezes of the process. It returns nil after Stop.
func (s *Server) Serve(lis net.Listener) error {
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		s.pauses.run(watchCtx, time.Since)
	}()
	defer func() {
		stopWatch()
		<-watchDone
	}()
	if err := s.GRPC.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("grpcserver: serve %s: %w", lis.Addr(), err)
	}
	return nil
}

// Stop reports NOT_SERVING (for good), ends every open stream with
// UNAVAILABLE, and waits for unary calls in flight to finish. If ctx ends
// first, the remaining calls are cut off and their connections closed. Stop
// returns once the server has stopped; it returns ctx's error if it had to
// cut calls off.
func (s *Server) Stop(ctx context.Context) error {
	var err error
	s.stopping.Store(true)
	s.stopOnce.Do(func() {
		// Shutdown first, so that a health-checking balancer moves
		// clients away before their connections get GOAWAY.
		s.Health.Shutdown()
		s.stopDraining()
		done := make(chan struct{})
		go func() {
			s.GRPC.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			err = fmt.Errorf("grpcserver: graceful stop: %w", ctx.Err())
			s.logger.Warn("graceful stop cut short; closing remaining connections", "error", ctx.Err())
			s.GRPC.Stop()
			<-done
		}
	})
	return err
}

// Abort stops the server at once, as a killed process would stop: no
// health change, connections cut, calls and streams ended with them.
// Handlers can tell (Stopping) that the server ended them.
func (s *Server) Abort() {
	s.stopping.Store(true)
	s.GRPC.Stop()
}

// Stopping reports whether Stop or Abort has begun: a stream handler whose
// stream ended asks it to tell a caller that went away from a server that
// is going.
func (s *Server) Stopping() bool { return s.stopping.Load() }

// FrozenWithin reports whether the process was frozen (see pauseWatch)
// within the last window, or is only just running again after a freeze the
// watch has yet to notice: a connection a handler finds broken now may have
// been given up by its caller because this process was frozen.
func (s *Server) FrozenWithin(window time.Duration) bool {
	return s.pauses.frozenWithin(time.Now(), window)
}

// recoverPanic turns a handler's panic into INTERNAL, with the stack in the
// log rather than in the answer.
func (s *Server) recoverPanic(ctx context.Context, p any) error {
	method, _ := grpc.Method(ctx)
	s.logger.Error("handler panicked", "method", method, "panic", fmt.Sprint(p), "stack", stack())
	return apierrors.Internal("the server hit a bug while handling %s; it has been logged", method)
}

// drainInterceptor ties a stream to the server's lifetime: when Stop begins,
// the handler's context is cancelled and the caller gets UNAVAILABLE
// (SHUTTING_DOWN), its cue to resume on another replica.
func (s *Server) drainInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	stopAfter := context.AfterFunc(s.draining, cancel)
	defer stopAfter()
	err := handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
	// ctx is only cancelled by the drain or by the caller going away.
	if ctx.Err() != nil && ss.Context().Err() == nil {
		return apierrors.ShuttingDown()
	}
	return err
}

type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *contextStream) Context() context.Context { return c.ctx }
