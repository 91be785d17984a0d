// Package etcdmember runs the etcd member an API server embeds in the stacked
// topology (go.etcd.io/etcd/server/v3/embed), from a Config that is
// validated before anything starts.
//
// A member of a new multi-member cluster becomes ready only once a quorum
// of its peers has started, and the masters start one by one, so Start does
// not wait for readiness: it returns as soon as the member serves its peer
// and client ports, and ReadyNotify says when it has joined. etcd's zap
// logging is routed to the Config's slog.Logger, warnings and errors only by
// default.
//
// A Member's methods are safe for concurrent use. Close may be called more
// than once.
package etcdmember

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Defaults for zero Config fields.
const (
	DefaultHeartbeatMs             = 100
	DefaultElectionMs              = 1000
	DefaultAutoCompactionRetention = "5m"
	DefaultLogLevel                = "warn"
	// ClusterToken keeps Capstan's members from joining an unrelated etcd
	// cluster that happens to reuse a peer address.
	ClusterToken = "capstan"
)

// Initial cluster states.
const (
	StateNew      = "new"
	StateExisting = "existing"
)

// maxElectionMs is etcd's own upper bound.
const maxElectionMs = 50000

// Config describes one member. Zero fields take the defaults noted.
type Config struct {
	// Name of the member, unique in the cluster. Required.
	Name string
	// DataDir holds the member's WAL and database. Required.
	DataDir string
	// ListenPeerURL and ListenClientURL are where the member listens
	// (http://host:port). Required.
	ListenPeerURL   string
	ListenClientURL string
	// AdvertisePeerURL and AdvertiseClientURL are the URLs other members
	// and clients use (default: the listen URLs; they must not be
	// 0.0.0.0).
	AdvertisePeerURL   string
	AdvertiseClientURL string
	// InitialCluster lists every founding member as name=peerURL,...
	// (default: Name=AdvertisePeerURL, a one-member cluster). It must give
	// this member AdvertisePeerURL. Ignored once DataDir holds data.
	InitialCluster string
	// InitialClusterState is StateNew (founding a cluster) or
	// StateExisting (joining one as an added member). Default StateNew.
	InitialClusterState string
	// HeartbeatMs and ElectionMs are the raft timings (defaults 100 and
	// 1000); ElectionMs must be at least 5 × HeartbeatMs.
	HeartbeatMs int
	ElectionMs  int
	// AutoCompactionRetention is how much history etcd keeps, as a Go
	// duration (periodic compaction; default "5m"). A watch resumed from
	// before it gets OUT_OF_RANGE and relists.
	AutoCompactionRetention string
	// Logger receives etcd's log lines; nil discards them.
	Logger *slog.Logger
	// LogLevel is the lowest level of etcd's lines passed to Logger:
	// "debug", "info", "warn" (default) or "error".
	LogLevel string
	// UnsafeNoFsync skips fsync: a crash may lose acknowledged writes. For
	// tests only.
	UnsafeNoFsync bool
}

// withDefaults fills the zero fields.
func (c Config) withDefaults() Config {
	if c.AdvertisePeerURL == "" {
		c.AdvertisePeerURL = c.ListenPeerURL
	}
	if c.AdvertiseClientURL == "" {
		c.AdvertiseClientURL = c.ListenClientURL
	}
	if c.InitialCluster == "" && c.Name != "" && c.AdvertisePeerURL != "" {
		c.InitialCluster = c.Name + "=" + c.AdvertisePeerURL
	}
	if c.InitialClusterState == "" {
		c.InitialClusterState = StateNew
	}
	if c.HeartbeatMs == 0 {
		c.HeartbeatMs = DefaultHeartbeatMs
	}
	if c.ElectionMs == 0 {
		c.ElectionMs = DefaultElectionMs
	}
	if c.AutoCompactionRetention == "" {
		c.AutoCompactionRetention = DefaultAutoCompactionRetention
	}
	if c.LogLevel == "" {
		c.LogLevel = DefaultLogLevel
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first problem with the Config (after defaults), with
// the offending field's name.
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.Name == "" {
		return errors.New("etcdmember: Name is empty")
	}
	if c.DataDir == "" {
		return errors.New("etcdmember: DataDir is empty")
	}
	for _, u := range []struct {
		field, value string
		listen       bool
	}{
		{"ListenPeerURL", c.ListenPeerURL, true},
		{"ListenClientURL", c.ListenClientURL, true},
		{"AdvertisePeerURL", c.AdvertisePeerURL, false},
		{"AdvertiseClientURL", c.AdvertiseClientURL, false},
	} {
		if err := checkURL(u.value, u.listen); err != nil {
			return fmt.Errorf("etcdmember: %s %q: %w", u.field, u.value, err)
		}
	}
	members, err := types.NewURLsMap(c.InitialCluster)
	if err != nil {
		return fmt.Errorf("etcdmember: InitialCluster %q: %w", c.InitialCluster, err)
	}
	own, ok := members[c.Name]
	if !ok {
		return fmt.Errorf("etcdmember: InitialCluster %q has no member named %q", c.InitialCluster, c.Name)
	}
	if !slices.Contains(own.StringSlice(), c.AdvertisePeerURL) {
		return fmt.Errorf("etcdmember: InitialCluster gives %s the peer URLs %v, not AdvertisePeerURL %s", c.Name, own.StringSlice(), c.AdvertisePeerURL)
	}
	if c.InitialClusterState != StateNew && c.InitialClusterState != StateExisting {
		return fmt.Errorf("etcdmember: InitialClusterState must be %q or %q, not %q", StateNew, StateExisting, c.InitialClusterState)
	}
	if c.HeartbeatMs < 0 {
		return fmt.Errorf("etcdmember: HeartbeatMs must be positive, not %d", c.HeartbeatMs)
	}
	if c.ElectionMs < 5*c.HeartbeatMs {
		return fmt.Errorf("etcdmember: ElectionMs (%d) must be at least 5 × HeartbeatMs (%d)", c.ElectionMs, c.HeartbeatMs)
	}
	if c.ElectionMs > maxElectionMs {
		return fmt.Errorf("etcdmember: ElectionMs (%d) must be at most %d", c.ElectionMs, maxElectionMs)
	}
	if d, err := time.ParseDuration(c.AutoCompactionRetention); err != nil || d <= 0 {
		return fmt.Errorf("etcdmember: AutoCompactionRetention %q must be a positive duration such as \"5m\"", c.AutoCompactionRetention)
	}
	if _, err := parseZapLevel(c.LogLevel); err != nil {
		return fmt.Errorf("etcdmember: LogLevel: %w", err)
	}
	return nil
}

func checkURL(raw string, listen bool) error {
	if raw == "" {
		return errors.New("is empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("must be http://host:port or https://host:port")
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || port == "" {
		return errors.New("must be http://host:port or https://host:port")
	}
	if u.Path != "" && u.Path != "/" {
		return errors.New("must have no path")
	}
	if !listen {
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return errors.New("an advertised URL must name a reachable host, not the unspecified address")
		}
	}
	return nil
}

func (c Config) embedConfig(quiet *atomic.Bool) (*embed.Config, error) {
	level, err := parseZapLevel(c.LogLevel)
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.DataDir
	urls := func(s string) []url.URL {
		u, _ := url.Parse(s) // checked by Validate
		return []url.URL{*u}
	}
	cfg.ListenPeerUrls = urls(c.ListenPeerURL)
	cfg.ListenClientUrls = urls(c.ListenClientURL)
	cfg.AdvertisePeerUrls = urls(c.AdvertisePeerURL)
	cfg.AdvertiseClientUrls = urls(c.AdvertiseClientURL)
	cfg.InitialCluster = c.InitialCluster
	cfg.InitialClusterToken = ClusterToken
	cfg.ClusterState = c.InitialClusterState
	cfg.TickMs = uint(c.HeartbeatMs)
	cfg.ElectionMs = uint(c.ElectionMs)
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = c.AutoCompactionRetention
	cfg.UnsafeNoFsync = c.UnsafeNoFsync
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(&slogCore{logger: c.Logger, level: level, quiet: quiet}))
	return cfg, nil
}

// Member is a running embedded etcd member.
type Member struct {
	cfg  Config
	etcd *embed.Etcd

	quiet     *atomic.Bool // hushes etcd's log while it closes
	closeEtcd func()       // embed.Etcd.Close, once
	closing   chan struct{}
	closeOnce sync.Once
	done      chan struct{}
	err       error // why the member stopped on its own; set before done closes
}

// Start validates cfg and starts the member. It returns once the member
// serves its peer and client ports — before it has joined a quorum; wait on
// ReadyNotify for that. embed does not take a context, so if ctx ends while
// etcd is starting, Start waits for that start to finish, closes the member
// and returns ctx's error.
func Start(ctx context.Context, cfg Config) (*Member, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	quiet := new(atomic.Bool)
	ecfg, err := cfg.embedConfig(quiet)
	if err != nil {
		return nil, fmt.Errorf("etcdmember: %w", err)
	}
	type started struct {
		etcd *embed.Etcd
		err  error
	}
	result := make(chan started, 1)
	go func() {
		e, err := embed.StartEtcd(ecfg)
		result <- started{e, err}
	}()
	var r started
	select {
	case r = <-result:
	case <-ctx.Done():
		r = <-result
		if r.err == nil {
			quiet.Store(true)
			r.etcd.Close()
		}
		return nil, fmt.Errorf("etcdmember: start %s: %w", cfg.Name, ctx.Err())
	}
	if r.err != nil {
		return nil, fmt.Errorf("etcdmember: start %s: %w", cfg.Name, r.err)
	}
	m := &Member{
		cfg:       cfg,
		etcd:      r.etcd,
		quiet:     quiet,
		closeEtcd: sync.OnceFunc(r.etcd.Close),
		closing:   make(chan struct{}),
		done:      make(chan struct{}),
	}
	go m.watch()
	return m, nil
}

// watch notices the member stopping on its own (a listener failed, the
// member was removed from the cluster) and releases it.
func (m *Member) watch() {
	defer close(m.done)
	var err error
	select {
	case <-m.closing:
	case serveErr, ok := <-m.etcd.Err():
		if ok {
			err = fmt.Errorf("etcdmember: %s failed: %w", m.cfg.Name, serveErr)
		}
	case <-m.etcd.Server.StopNotify():
		err = fmt.Errorf("etcdmember: %s stopped on its own (removed from the cluster, or a fatal error in its log)", m.cfg.Name)
	}
	select {
	case <-m.closing:
		return // Close stopped it: not an error
	default:
	}
	if err == nil {
		err = fmt.Errorf("etcdmember: %s stopped", m.cfg.Name)
	}
	m.err = err
	m.cfg.Logger.Error("embedded etcd member stopped", "error", err)
	m.closeEtcd()
}

// Name is the member's name.
func (m *Member) Name() string { return m.cfg.Name }

// ID is the member's id in the cluster.
func (m *Member) ID() uint64 { return uint64(m.etcd.Server.MemberID()) }

// ClientURL is the member's advertised client URL.
func (m *Member) ClientURL() string { return m.cfg.AdvertiseClientURL }

// PeerURL is the member's advertised peer URL.
func (m *Member) PeerURL() string { return m.cfg.AdvertisePeerURL }

// ReadyNotify is closed once the member has joined the cluster and can
// serve requests (which needs a quorum of the cluster to be up).
func (m *Member) ReadyNotify() <-chan struct{} { return m.etcd.Server.ReadyNotify() }

// Done is closed when the member has stopped, by Close or on its own.
func (m *Member) Done() <-chan struct{} { return m.done }

// Err says, once Done is closed, why the member stopped on its own; it is
// nil if Close stopped it.
func (m *Member) Err() error {
	select {
	case <-m.done:
		return m.err
	default:
		return nil
	}
}

// Close stops the member: a leader first hands leadership over (about one
// election timeout), then listeners and the database close. If ctx ends
// first, Close returns ctx's error and the member finishes closing in the
// background.
func (m *Member) Close(ctx context.Context) error {
	m.closeOnce.Do(func() {
		m.quiet.Store(true)
		close(m.closing)
	})
	closed := make(chan struct{})
	go func() {
		m.closeEtcd()
		<-m.done
		close(closed)
	}()
	select {
	case <-closed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("etcdmember: close %s: %w", m.cfg.Name, ctx.Err())
	}
}
