package component

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/events"
	"github.com/capstan-dev/capstan/internal/leaderelection"
	"github.com/capstan-dev/capstan/internal/logging"
	"github.com/capstan-dev/capstan/internal/version"
)

// Timings of the component's own machinery.
const (
	// probeTimeout bounds --health-probe.
	probeTimeout = 3 * time.Second
	// httpStopTimeout bounds the HTTP server's graceful stop.
	httpStopTimeout = 2 * time.Second
	// eventFlushTimeout bounds writing the events still pending at exit.
	eventFlushTimeout = 2 * time.Second
)

// Spec is what a binary tells Run about itself.
type Spec struct {
	// Name is the component: the "component" of every log line, the API
	// client's user agent.
	Name string
	// Lead does the component's work while this replica leads, and
	// returns soon after ctx ends. ctx is cancelled the moment leadership
	// may be lost and carries the lease's fence, so every API call made
	// with it is fenced. Returning (an error or nil) while still leading
	// gives the lease up; the replica competes again one TTL later.
	Lead func(ctx context.Context, l Leadership) error
}

// Leadership is what one leadership of this replica gets.
type Leadership struct {
	// Client is the API client, shared by every leadership; calls made
	// with Lead's ctx are fenced.
	Client *client.Client
	// Logger carries the component, the identity and the epoch.
	Logger *slog.Logger
	// Identity of this replica.
	Identity string
	// Epoch is the fencing token of this leadership.
	Epoch int64
	// Registerer is the registry served on /metrics. It outlives the
	// leadership: register with it in a way that tolerates the next
	// leadership registering the same collectors again.
	Registerer prometheus.Registerer
}

// Run runs the component until ctx ends: it campaigns for the lease and,
// while it leads, calls spec.Lead. When ctx ends it stops the work, releases
// the lease (so a standby takes over at once) and returns nil. It returns an
// error if the options are invalid or something fails to start. In probe
// mode (HealthProbe) it only GETs the health URL.
func Run(ctx context.Context, opts Options, spec Spec) error {
	if err := opts.Validate(); err != nil {
		return fmt.Errorf("%s: %w", spec.Name, err)
	}
	if spec.Lead == nil {
		return fmt.Errorf("%s: component.Spec.Lead is nil", spec.Name)
	}
	if opts.HealthProbe != "" {
		return probe(ctx, opts)
	}
	logger, err := newLogger(opts, spec.Name)
	if err != nil {
		return err
	}
	namespace, leaseName, _ := opts.Lease()

	registry := prometheus.NewRegistry()
	registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "capstan_build_info",
			Help:        "Always 1; the labels say which component and version runs.",
			ConstLabels: prometheus.Labels{"component": spec.Name, "version": version.Version},
		}, func() float64 { return 1 }),
	)

	c, err := client.New(client.Config{
		Endpoints: client.EndpointsFrom(opts.Server),
		Logger:    logger.With("subsystem", "client"),
		UserAgent: spec.Name,
	})
	if err != nil {
		return fmt.Errorf("%s: %w", spec.Name, err)
	}
	defer c.Close()

	// Events of this replica's own lease transitions (fenced off).
	leaseEvents := events.NewRecorder(c, &capstanv1.EventSource{Component: spec.Name, Host: opts.Identity}, logger.With("subsystem", "events"))
	defer func() {
		flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), eventFlushTimeout)
		defer cancel()
		leaseEvents.Flush(flushCtx)
	}()
	elector, err := leaderelection.New(leaderelection.Config{
		Client:     c,
		Namespace:  namespace,
		Name:       leaseName,
		Identity:   opts.Identity,
		TTL:        opts.LeaseDuration,
		Logger:     logger.With("subsystem", "leader-election"),
		Registerer: registry,
		Events:     leaseEvents,
	})
	if err != nil {
		return fmt.Errorf("%s: %w", spec.Name, err)
	}

	var httpDone chan error
	var httpServer *http.Server
	lis := opts.MetricsListener
	if lis == nil && opts.MetricsListen != "" {
		if lis, err = net.Listen("tcp", opts.MetricsListen); err != nil {
			return fmt.Errorf("%s: --metrics-listen: %w", spec.Name, err)
		}
	}
	if lis != nil {
		httpServer = &http.Server{
			Handler:           newMux(registry, elector),
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.NewLogLogger(logger.With("subsystem", "http").Handler(), slog.LevelWarn),
		}
		httpDone = make(chan error, 1)
		go func() { httpDone <- httpServer.Serve(lis) }()
		logger.Info("serving /metrics and /healthz", "address", lis.Addr().String())
	}

	logger.Info("starting: campaigning for the lease", "lease", namespace+"/"+leaseName,
		"lease-duration", opts.LeaseDuration, "servers", c.Endpoints(), "version", version.Version)
	runErr := elector.Run(ctx, leaderelection.Callbacks{
		OnStartedLeading: func(leadCtx context.Context) {
			fence, _ := client.FenceFrom(leadCtx)
			l := Leadership{Client: c, Logger: logger.With("epoch", fence.Epoch), Identity: opts.Identity, Epoch: fence.Epoch, Registerer: registry}
			l.Logger.Info("leading: starting the work")
			err := spec.Lead(leadCtx, l)
			switch {
			case leadCtx.Err() != nil:
				l.Logger.Info("leadership over: the work stopped", "why", context.Cause(leadCtx))
			case err != nil:
				l.Logger.Error("the work failed while leading; giving the lease up", "error", err)
			default:
				l.Logger.Warn("the work ended by itself while leading; giving the lease up")
			}
		},
	})

	if httpServer != nil {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), httpStopTimeout)
		if err := httpServer.Shutdown(stopCtx); err != nil {
			logger.Warn("HTTP server did not stop in time", "error", err)
		}
		cancel()
		if err := <-httpDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Warn("HTTP server stopped with an error", "error", err)
		}
	}
	if runErr != nil {
		return fmt.Errorf("%s: %w", spec.Name, runErr)
	}
	logger.Info("stopped")
	return nil
}

// newMux serves /metrics and /healthz. /healthz answers 200 as long as the
// process runs its elector, standby or leader: restarting a standby whose
// API servers are away would not bring them back. Its body says whether
// this replica leads and which holding of the lease it last saw; identities
// are the candidates' names, holder identities add the process nonce the
// lease is held under (leaderelection.HolderIdentity):
//
//	ok
//	identity: controller-manager-2
//	holder-identity: controller-manager-2_5c0ffee1
//	leading: false
//	leader: controller-manager-1
//	leader-holder-identity: controller-manager-1_9e3a77d0
//	leader-epoch: 42
func newMux(registry *prometheus.Registry, elector *leaderelection.Elector) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{Registry: registry}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		holder, epoch := elector.Leader()
		fmt.Fprintf(w, "ok\nidentity: %s\nholder-identity: %s\nleading: %t\nleader: %s\nleader-holder-identity: %s\nleader-epoch: %d\n",
			leaderelection.IdentityOf(elector.Identity()), elector.Identity(), elector.IsLeader(), leaderelection.IdentityOf(holder), holder, epoch)
	})
	return mux
}

// probe GETs the health URL: nil only on 200.
func probe(ctx context.Context, opts Options) error {
	target, err := opts.HealthProbeURL()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("health probe %s: %w", target, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("health probe: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health probe %s: %s", target, resp.Status)
	}
	return nil
}

func newLogger(opts Options, component string) (*slog.Logger, error) {
	log, err := logging.New(opts.LogOutput, opts.LogLevel, opts.LogFormat)
	if err != nil {
		return nil, err
	}
	return log.With("component", component, "identity", opts.Identity), nil
}
