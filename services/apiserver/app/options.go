// Package app wires the API server: its options and flags, the embedded
// etcd member (or the client of an external cluster), storage, the API
// services, cluster status, health and an orderly shutdown.
//
// Start is the one assembly of the server: the binary and the in-process
// replicas of package apiservertest both run what it builds, so tests run
// the server that ships. main only parses flags and calls Run, which is
// Start, a wait for its context, and Server.Shutdown.
//
// Run blocks until its context ends. A Server's methods are safe for
// concurrent use; two servers must not share ports or a data directory.
// Options is plain data.
package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"

	"github.com/capstan-dev/capstan/internal/grpcserver"
	"github.com/capstan-dev/capstan/internal/logging"
	"github.com/capstan-dev/capstan/services/apiserver/internal/etcdmember"
)

// Limits checked by Validate.
const (
	// etcdMaxRequestBytes is etcd's default request size limit: a larger
	// API request could never be stored.
	etcdMaxRequestBytes = 1536 * 1024
	maxElectionMs       = 50000
)

// Options is everything the API server is configured with. Start from
// DefaultOptions: a zero Options does not validate.
type Options struct {
	// Name is the replica's identity (--name).
	Name string
	// Listen is the gRPC listen address, host:port (--listen).
	Listen string
	// AdvertiseAddress is the address reported in cluster status
	// (--advertise-address; default Listen, or hostname:port if Listen's
	// host is a wildcard).
	AdvertiseAddress string

	// The embedded etcd member (ignored with EtcdEndpoints).
	EtcdName                string // --etcd-name, default Name
	EtcdDataDir             string // --etcd-data-dir, default ./<etcd-name>.etcd
	EtcdListenPeer          string // --etcd-listen-peer
	EtcdListenClient        string // --etcd-listen-client
	EtcdAdvertisePeer       string // --etcd-advertise-peer, default EtcdListenPeer
	EtcdAdvertiseClient     string // --etcd-advertise-client, default EtcdListenClient
	EtcdInitialCluster      string // --etcd-initial-cluster, default <etcd-name>=<advertise-peer>
	EtcdInitialClusterState string // --etcd-initial-cluster-state: new or existing
	EtcdHeartbeatMs         int    // --etcd-heartbeat-ms
	EtcdElectionMs          int    // --etcd-election-ms
	// EtcdAutoCompactionRetention is a Go duration (--etcd-auto-compaction-retention).
	EtcdAutoCompactionRetention string

	// EtcdEndpoints are client URLs of an external etcd cluster
	// (--etcd-endpoints, comma-separated). If set, no member is embedded.
	EtcdEndpoints []string

	// RequestTimeout caps every unary call (--request-timeout).
	RequestTimeout time.Duration
	// ClockSkewAllowance is how far this replica's clock may lag its
	// clients' without a call being carried out after the caller's
	// deadline (--clock-skew-allowance): a call is refused once less than
	// this is left of its caller's absolute deadline.
	ClockSkewAllowance time.Duration
	// MaxRequestBytes is the largest request accepted (--max-request-bytes).
	MaxRequestBytes int
	// BookmarkInterval is how long a watch may idle before a BOOKMARK
	// (--bookmark-interval; 0 disables).
	BookmarkInterval time.Duration

	// LogLevel is debug, info, warn or error (--log-level).
	LogLevel string
	// LogFormat is text or json (--log-format).
	LogFormat string

	// HealthProbe, if set, switches Run to probe mode: check the
	// grpc.health.v1 status of this address and return nil only if it is
	// SERVING (--health-probe).
	HealthProbe string

	// Not flags: for tests and programs that embed the API server.

	// Listener, if set, is served instead of listening on Listen.
	Listener net.Listener
	// LogOutput receives the log (default os.Stderr).
	LogOutput io.Writer
	// EtcdUnsafeNoFsync skips fsync in the embedded member. Tests only.
	EtcdUnsafeNoFsync bool
}

// DefaultOptions are the flags' defaults. Fields whose default derives from
// another (AdvertiseAddress, EtcdName, EtcdDataDir, EtcdAdvertise*,
// EtcdInitialCluster) stay empty until Complete.
func DefaultOptions() Options {
	name, err := os.Hostname()
	if err != nil {
		name = ""
	}
	return Options{
		Name:                        name,
		Listen:                      "127.0.0.1:6441",
		EtcdListenPeer:              "http://127.0.0.1:2380",
		EtcdListenClient:            "http://127.0.0.1:2379",
		EtcdInitialClusterState:     etcdmember.StateNew,
		EtcdHeartbeatMs:             etcdmember.DefaultHeartbeatMs,
		EtcdElectionMs:              etcdmember.DefaultElectionMs,
		EtcdAutoCompactionRetention: etcdmember.DefaultAutoCompactionRetention,
		RequestTimeout:              grpcserver.DefaultRequestTimeout,
		ClockSkewAllowance:          grpcserver.DefaultClockSkewAllowance,
		MaxRequestBytes:             grpcserver.DefaultMaxRequestBytes,
		BookmarkInterval:            5 * time.Second,
		LogLevel:                    "info",
		LogFormat:                   "text",
	}
}

// AddFlags defines the flags on fs, with o's values as defaults, writing
// into o.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Name, "name", o.Name, "replica identity, unique among the API servers (default: the hostname)")
	fs.StringVar(&o.Listen, "listen", o.Listen, "gRPC listen address, host:port")
	fs.StringVar(&o.AdvertiseAddress, "advertise-address", o.AdvertiseAddress, "gRPC address reported in cluster status (default: --listen)")

	fs.StringVar(&o.EtcdName, "etcd-name", o.EtcdName, "name of the embedded etcd member (default: --name)")
	fs.StringVar(&o.EtcdDataDir, "etcd-data-dir", o.EtcdDataDir, "data directory of the embedded etcd member (default: ./<etcd-name>.etcd)")
	fs.StringVar(&o.EtcdListenPeer, "etcd-listen-peer", o.EtcdListenPeer, "URL the embedded member listens on for its peers")
	fs.StringVar(&o.EtcdListenClient, "etcd-listen-client", o.EtcdListenClient, "URL the embedded member listens on for clients")
	fs.StringVar(&o.EtcdAdvertisePeer, "etcd-advertise-peer", o.EtcdAdvertisePeer, "peer URL announced to the other members (default: --etcd-listen-peer)")
	fs.StringVar(&o.EtcdAdvertiseClient, "etcd-advertise-client", o.EtcdAdvertiseClient, "client URL announced to clients (default: --etcd-listen-client)")
	fs.StringVar(&o.EtcdInitialCluster, "etcd-initial-cluster", o.EtcdInitialCluster, "founding members, name=peer-url,... (default: <etcd-name>=<etcd-advertise-peer>)")
	fs.StringVar(&o.EtcdInitialClusterState, "etcd-initial-cluster-state", o.EtcdInitialClusterState, "new (founding the cluster) or existing (restarting, or joining as an added member)")
	fs.Func("etcd-endpoints", "comma-separated client URLs of an external etcd cluster; no member is embedded", func(s string) error {
		o.EtcdEndpoints = nil
		for _, ep := range strings.Split(s, ",") {
			if ep = strings.TrimSpace(ep); ep != "" {
				o.EtcdEndpoints = append(o.EtcdEndpoints, ep)
			}
		}
		return nil
	})
	fs.IntVar(&o.EtcdHeartbeatMs, "etcd-heartbeat-ms", o.EtcdHeartbeatMs, "raft heartbeat interval of the embedded member, in milliseconds")
	fs.IntVar(&o.EtcdElectionMs, "etcd-election-ms", o.EtcdElectionMs, "raft election timeout of the embedded member, in milliseconds")
	fs.StringVar(&o.EtcdAutoCompactionRetention, "etcd-auto-compaction-retention", o.EtcdAutoCompactionRetention, "history the embedded member keeps before compacting, a duration")

	fs.DurationVar(&o.RequestTimeout, "request-timeout", o.RequestTimeout, "longest a unary API call may run")
	fs.DurationVar(&o.ClockSkewAllowance, "clock-skew-allowance", o.ClockSkewAllowance, "how far this replica's clock may lag its clients': a call is refused once less than this is left before its caller's deadline")
	fs.IntVar(&o.MaxRequestBytes, "max-request-bytes", o.MaxRequestBytes, "largest API request accepted, in bytes")
	fs.DurationVar(&o.BookmarkInterval, "bookmark-interval", o.BookmarkInterval, "idle time after which a watch gets a BOOKMARK event (0 disables)")

	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "debug, info, warn or error")
	fs.StringVar(&o.LogFormat, "log-format", o.LogFormat, "text or json")

	fs.StringVar(&o.HealthProbe, "health-probe", o.HealthProbe, "probe mode: check the gRPC health of this host:port, exit 0 if SERVING and 1 otherwise")
}

// ParseFlags parses the command line (without the program name) into
// DefaultOptions. Like the flag package, it prints a parse error and the
// usage to stderr before returning the error (flag.ErrHelp for -h). It does
// not validate: Run does.
func ParseFlags(args []string) (Options, error) {
	o := DefaultOptions()
	fs := flag.NewFlagSet("apiserver", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return Options{}, err
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected arguments %q: every option is a flag", fs.Args())
		fmt.Fprintln(fs.Output(), err)
		fs.Usage()
		return Options{}, err
	}
	return o, nil
}

// Complete fills the defaults that derive from other options.
func (o Options) Complete() Options {
	if o.AdvertiseAddress == "" {
		o.AdvertiseAddress = o.Listen
		if o.Listener != nil {
			o.AdvertiseAddress = o.Listener.Addr().String()
		}
		if host, port, err := net.SplitHostPort(o.AdvertiseAddress); err == nil {
			if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
				if hostname, err := os.Hostname(); err == nil {
					o.AdvertiseAddress = net.JoinHostPort(hostname, port)
				}
			}
		}
	}
	if o.EtcdName == "" {
		o.EtcdName = o.Name
	}
	if o.EtcdDataDir == "" && o.EtcdName != "" {
		o.EtcdDataDir = "./" + o.EtcdName + ".etcd"
	}
	if o.EtcdAdvertisePeer == "" {
		o.EtcdAdvertisePeer = o.EtcdListenPeer
	}
	if o.EtcdAdvertiseClient == "" {
		o.EtcdAdvertiseClient = o.EtcdListenClient
	}
	if o.EtcdInitialCluster == "" && o.EtcdName != "" && o.EtcdAdvertisePeer != "" {
		o.EtcdInitialCluster = o.EtcdName + "=" + o.EtcdAdvertisePeer
	}
	return o
}

// Validate reports the first invalid option of o.Complete(), naming its
// flag.
func (o Options) Validate() error {
	o = o.Complete()
	if o.HealthProbe != "" {
		if _, _, err := net.SplitHostPort(o.HealthProbe); err != nil {
			return fmt.Errorf("--health-probe %q: must be host:port", o.HealthProbe)
		}
		return nil // nothing else is used in probe mode
	}
	if o.Name == "" {
		return errors.New("--name must not be empty (and the hostname is unknown)")
	}
	if strings.Contains(o.Name, "/") {
		return fmt.Errorf("--name %q: must not contain '/'", o.Name)
	}
	if o.Listener == nil {
		if _, _, err := net.SplitHostPort(o.Listen); err != nil {
			return fmt.Errorf("--listen %q: must be host:port", o.Listen)
		}
	}
	if _, _, err := net.SplitHostPort(o.AdvertiseAddress); err != nil {
		return fmt.Errorf("--advertise-address %q: must be host:port", o.AdvertiseAddress)
	}
	if len(o.EtcdEndpoints) > 0 {
		for _, ep := range o.EtcdEndpoints {
			if !isHTTPURL(ep) {
				return fmt.Errorf("--etcd-endpoints: %q must be http://host:port or https://host:port", ep)
			}
		}
	} else if err := o.validateMember(); err != nil {
		return err
	}
	if o.RequestTimeout <= 0 {
		return fmt.Errorf("--request-timeout must be positive, not %v", o.RequestTimeout)
	}
	if o.ClockSkewAllowance < 0 || o.ClockSkewAllowance >= o.RequestTimeout {
		return fmt.Errorf("--clock-skew-allowance must be at least 0 and less than --request-timeout (%v), not %v", o.RequestTimeout, o.ClockSkewAllowance)
	}
	if o.MaxRequestBytes < 1 || o.MaxRequestBytes > etcdMaxRequestBytes {
		return fmt.Errorf("--max-request-bytes must be between 1 and %d (etcd's request limit), not %d", etcdMaxRequestBytes, o.MaxRequestBytes)
	}
	if o.BookmarkInterval < 0 {
		return fmt.Errorf("--bookmark-interval must not be negative, not %v", o.BookmarkInterval)
	}
	if _, err := logging.ParseLevel(o.LogLevel); err != nil {
		return err
	}
	if o.LogFormat != "text" && o.LogFormat != "json" {
		return fmt.Errorf("--log-format must be text or json, not %q", o.LogFormat)
	}
	return nil
}

func (o Options) validateMember() error {
	if o.EtcdName == "" {
		return errors.New("--etcd-name must not be empty")
	}
	for _, u := range []struct{ flag, value string }{
		{"--etcd-listen-peer", o.EtcdListenPeer},
		{"--etcd-listen-client", o.EtcdListenClient},
		{"--etcd-advertise-peer", o.EtcdAdvertisePeer},
		{"--etcd-advertise-client", o.EtcdAdvertiseClient},
	} {
		if !isHTTPURL(u.value) {
			return fmt.Errorf("%s %q: must be http://host:port or https://host:port", u.flag, u.value)
		}
	}
	members, err := types.NewURLsMap(o.EtcdInitialCluster)
	if err != nil {
		return fmt.Errorf("--etcd-initial-cluster %q: must be name=http://host:port,...: %w", o.EtcdInitialCluster, err)
	}
	own, ok := members[o.EtcdName]
	if !ok {
		return fmt.Errorf("--etcd-initial-cluster %q has no member named %q (--etcd-name)", o.EtcdInitialCluster, o.EtcdName)
	}
	if !slices.Contains(own.StringSlice(), o.EtcdAdvertisePeer) {
		return fmt.Errorf("--etcd-initial-cluster gives %s the peer URLs %v, not --etcd-advertise-peer %s", o.EtcdName, own.StringSlice(), o.EtcdAdvertisePeer)
	}
	if s := o.EtcdInitialClusterState; s != etcdmember.StateNew && s != etcdmember.StateExisting {
		return fmt.Errorf("--etcd-initial-cluster-state must be new or existing, not %q", s)
	}
	if o.EtcdHeartbeatMs <= 0 {
		return fmt.Errorf("--etcd-heartbeat-ms must be positive, not %d", o.EtcdHeartbeatMs)
	}
	if o.EtcdElectionMs < 5*o.EtcdHeartbeatMs || o.EtcdElectionMs > maxElectionMs {
		return fmt.Errorf("--etcd-election-ms must be between 5 × --etcd-heartbeat-ms (%d) and %d, not %d", 5*o.EtcdHeartbeatMs, maxElectionMs, o.EtcdElectionMs)
	}
	if d, err := time.ParseDuration(o.EtcdAutoCompactionRetention); err != nil || d <= 0 {
		return fmt.Errorf("--etcd-auto-compaction-retention must be a positive duration such as 5m, not %q", o.EtcdAutoCompactionRetention)
	}
	// Anything the checks above missed, in etcdmember's words.
	if err := o.memberConfig(nil).Validate(); err != nil {
		return err
	}
	return nil
}

func (o Options) memberConfig(logger *slog.Logger) etcdmember.Config {
	etcdLevel := "warn"
	switch o.LogLevel {
	case "debug":
		etcdLevel = "info"
	case "error":
		etcdLevel = "error"
	}
	return etcdmember.Config{
		Name:                    o.EtcdName,
		DataDir:                 o.EtcdDataDir,
		ListenPeerURL:           o.EtcdListenPeer,
		ListenClientURL:         o.EtcdListenClient,
		AdvertisePeerURL:        o.EtcdAdvertisePeer,
		AdvertiseClientURL:      o.EtcdAdvertiseClient,
		InitialCluster:          o.EtcdInitialCluster,
		InitialClusterState:     o.EtcdInitialClusterState,
		HeartbeatMs:             o.EtcdHeartbeatMs,
		ElectionMs:              o.EtcdElectionMs,
		AutoCompactionRetention: o.EtcdAutoCompactionRetention,
		Logger:                  logger,
		LogLevel:                etcdLevel,
		UnsafeNoFsync:           o.EtcdUnsafeNoFsync,
	}
}

func isHTTPURL(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	_, port, err := net.SplitHostPort(u.Host)
	return err == nil && port != ""
}
