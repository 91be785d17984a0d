// Package component is what the lease-gated binaries (controller-manager,
// scheduler) share around package leaderelection: their common options and
// flags, the logger (component and identity on every line), the API client,
// the elector, an HTTP endpoint for /metrics and /healthz, the
// --health-probe mode that lets a FROM-scratch image check itself, and an
// orderly stop that releases the lease. Each binary's app package adds its
// own flags and the work it does while leading.
//
// Run blocks until its context ends. Options is plain data. The lead
// function Run is given is called on a goroutine of the elector, once per
// leadership, never twice at once.
package component

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/leaderelection"
	"github.com/capstan-dev/capstan/internal/logging"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Options are the flags every lease-gated binary has. Start from
// DefaultOptions: a zero Options does not validate.
type Options struct {
	// Server lists the API replicas, host:port,... (--server; default
	// $CAPSTAN_SERVER, else the local cluster's three replicas).
	Server string
	// Identity is this replica's name among the candidates (--identity;
	// default the hostname).
	Identity string
	// LeaderLease is the lease, namespace/name or name in capstan-system
	// (--leader-lease).
	LeaderLease string
	// LeaseDuration is the lease's TTL (--lease-duration): whole seconds,
	// at least 2 s. A killed leader is replaced within about this long.
	LeaseDuration time.Duration
	// MetricsListen is where /metrics and /healthz are served over HTTP
	// (--metrics-listen; empty disables).
	MetricsListen string
	// LogLevel is debug, info, warn or error (--log-level).
	LogLevel string
	// LogFormat is text or json (--log-format).
	LogFormat string
	// HealthProbe, if set, switches Run to probe mode: GET this URL (or
	// http://HOST:PORT/healthz for a bare host:port) and succeed only on
	// 200 (--health-probe).
	HealthProbe string

	// Not flags: for tests and programs that embed a component.

	// LogOutput receives the log (default os.Stderr).
	LogOutput io.Writer
	// MetricsListener, if set, serves /metrics and /healthz instead of
	// listening on MetricsListen.
	MetricsListener net.Listener
}

// DefaultOptions are the flags' defaults for a binary whose lease is
// leaseName (in capstan-system) and whose metrics port is metricsListen.
func DefaultOptions(leaseName, metricsListen string) Options {
	identity, err := os.Hostname()
	if err != nil {
		identity = ""
	}
	return Options{
		Identity:      identity,
		LeaderLease:   wellknown.SystemNamespace + "/" + leaseName,
		LeaseDuration: leaderelection.DefaultTTL,
		MetricsListen: metricsListen,
		LogLevel:      "info",
		LogFormat:     "text",
	}
}

// AddFlags defines the flags on fs, with o's values as defaults, writing
// into o.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Server, "server", o.Server, "API replicas, host:port[,host:port...] (default: $"+client.EnvServer+", else "+client.DefaultEndpoints+")")
	fs.StringVar(&o.Identity, "identity", o.Identity, "this replica's identity among the candidates for the lease, unique among them (the default is the hostname)")
	fs.StringVar(&o.LeaderLease, "leader-lease", o.LeaderLease, "the lease that elects the active replica, namespace/name")
	fs.DurationVar(&o.LeaseDuration, "lease-duration", o.LeaseDuration, "lease TTL, whole seconds, at least 2s: a killed leader is replaced within about this long")
	fs.StringVar(&o.MetricsListen, "metrics-listen", o.MetricsListen, "HTTP address for /metrics and /healthz, host:port (empty: none)")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "debug, info, warn or error")
	fs.StringVar(&o.LogFormat, "log-format", o.LogFormat, "text or json")
	fs.StringVar(&o.HealthProbe, "health-probe", o.HealthProbe, "probe mode: GET this URL (host:port means http://host:port/healthz), exit 0 on 200 and 1 otherwise")
}

// Validate reports the first invalid option, naming its flag.
func (o Options) Validate() error {
	if o.HealthProbe != "" {
		if _, err := o.HealthProbeURL(); err != nil {
			return err
		}
		return nil // nothing else is used in probe mode
	}
	if o.Identity == "" {
		return errors.New("--identity must not be empty (and the hostname is unknown)")
	}
	if strings.ContainsAny(o.Identity, " \t\n") {
		return fmt.Errorf("--identity %q: must not contain white space", o.Identity)
	}
	if _, _, err := o.Lease(); err != nil {
		return err
	}
	if o.LeaseDuration < leaderelection.MinTTL || o.LeaseDuration%time.Second != 0 {
		return fmt.Errorf("--lease-duration must be whole seconds and at least %v, not %v", leaderelection.MinTTL, o.LeaseDuration)
	}
	for _, ep := range client.EndpointsFrom(o.Server) {
		if _, _, err := net.SplitHostPort(ep); err != nil {
			return fmt.Errorf("--server: %q must be host:port", ep)
		}
	}
	if o.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(o.MetricsListen); err != nil {
			return fmt.Errorf("--metrics-listen %q: must be host:port", o.MetricsListen)
		}
	}
	if _, err := logging.ParseLevel(o.LogLevel); err != nil {
		return err
	}
	if o.LogFormat != "text" && o.LogFormat != "json" {
		return fmt.Errorf("--log-format must be text or json, not %q", o.LogFormat)
	}
	return nil
}

// Lease splits LeaderLease into namespace and name.
func (o Options) Lease() (namespace, name string, err error) {
	namespace, name, found := strings.Cut(o.LeaderLease, "/")
	if !found {
		namespace, name = wellknown.SystemNamespace, o.LeaderLease
	}
	if namespace == "" || name == "" || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("--leader-lease %q: must be namespace/name or name", o.LeaderLease)
	}
	return namespace, name, nil
}

// HealthProbeURL is the URL probe mode GETs.
func (o Options) HealthProbeURL() (string, error) {
	raw := o.HealthProbe
	if !strings.Contains(raw, "://") {
		if _, _, err := net.SplitHostPort(raw); err != nil {
			return "", fmt.Errorf("--health-probe %q: must be a URL or host:port", raw)
		}
		return "http://" + raw + "/healthz", nil
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("--health-probe %q: must be an http(s) URL or host:port", raw)
	}
	return raw, nil
}

// ParseFlags parses args (without the program name) into opts, with the
// extra flags extra defines. Like the flag package, it prints a parse error
// and the usage to stderr before returning the error (flag.ErrHelp for
// -h). It does not validate: Run does.
func ParseFlags(program string, args []string, define func(fs *flag.FlagSet)) error {
	fs := flag.NewFlagSet(program, flag.ContinueOnError)
	define(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected arguments %q: every option is a flag", fs.Args())
		fmt.Fprintln(fs.Output(), err)
		fs.Usage()
		return err
	}
	return nil
}
