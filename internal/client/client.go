package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	// Registers client-side health checking, which the service config below
	// turns on.
	_ "google.golang.org/grpc/health"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// DefaultEndpoints are the API replicas of a local cluster (make up /
// make local-up publish them on these ports).
const DefaultEndpoints = "127.0.0.1:6441,127.0.0.1:6442,127.0.0.1:6443"

// EnvServer is the environment variable that lists the API endpoints when no
// flag does.
const EnvServer = "CAPSTAN_SERVER"

// ClientHeader is the request metadata key that names the calling program.
const ClientHeader = "x-capstan-client"

// Defaults of Config.
const (
	DefaultCallTimeout = 10 * time.Second
	// KeepaliveTime is how often an idle connection is pinged; the servers'
	// keepalive enforcement policy must allow it.
	KeepaliveTime = 10 * time.Second
	// KeepaliveTimeout is how long a ping may go unanswered before the
	// connection is closed as dead.
	KeepaliveTimeout = 3 * time.Second
	// DefaultAttemptTimeout caps one attempt of a unary call: a frozen
	// replica (SIGSTOP, docker pause) keeps its connection open until
	// keepalive gives up on it, and each call sent there meanwhile costs one
	// attempt. A healthy API call takes milliseconds.
	DefaultAttemptTimeout = 3 * time.Second
)

// serviceConfig picks round robin over the replicas and lets it use only
// those whose grpc.health.v1 status (service "") is SERVING.
const serviceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "healthCheckConfig": {"serviceName": ""}
}`

// Config is everything New needs.
type Config struct {
	// Endpoints are the API replicas, host:port. At least one.
	Endpoints []string
	// CallTimeout bounds a unary call whose context has no deadline,
	// retries included. Default 10 s.
	CallTimeout time.Duration
	// AttemptTimeout bounds one attempt of a unary call, so that a replica
	// that stopped answering without closing its connections (a frozen
	// process) costs one attempt and the call moves on. Default: the
	// smaller of CallTimeout/2 and DefaultAttemptTimeout; negative means no
	// bound beyond the call's deadline.
	AttemptTimeout time.Duration
	// Logger receives retries and watch resumptions. Default: discard.
	Logger *slog.Logger
	// UserAgent names the calling program in the user-agent and in the
	// x-capstan-client metadata. Default: the executable's name.
	UserAgent string
	// TransportCredentials secure the connections. Default: insecure
	// (plain text), until the cluster has its CA.
	TransportCredentials credentials.TransportCredentials
}

// EndpointsFrom returns the API endpoints: the comma-separated flagValue if
// it is not empty, else $CAPSTAN_SERVER, else DefaultEndpoints.
func EndpointsFrom(flagValue string) []string {
	list := flagValue
	if strings.TrimSpace(list) == "" {
		list = os.Getenv(EnvServer)
	}
	if strings.TrimSpace(list) == "" {
		list = DefaultEndpoints
	}
	return splitEndpoints(list)
}

func splitEndpoints(list string) []string {
	var out []string
	for _, e := range strings.Split(list, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func (cfg Config) withDefaults() (Config, error) {
	if len(cfg.Endpoints) == 0 {
		return cfg, errors.New("client: Config.Endpoints is empty: give at least one API endpoint (host:port)")
	}
	for _, e := range cfg.Endpoints {
		if strings.TrimSpace(e) == "" || strings.Contains(e, ",") {
			return cfg, fmt.Errorf("client: Config.Endpoints has %q: each endpoint must be one host:port", e)
		}
	}
	if cfg.CallTimeout < 0 {
		return cfg, fmt.Errorf("client: Config.CallTimeout is %v: it must not be negative", cfg.CallTimeout)
	}
	if cfg.CallTimeout == 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.AttemptTimeout == 0 {
		cfg.AttemptTimeout = min(cfg.CallTimeout/2, DefaultAttemptTimeout)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = filepath.Base(os.Args[0])
	}
	if cfg.TransportCredentials == nil {
		cfg.TransportCredentials = insecure.NewCredentials()
	}
	return cfg, nil
}

// Client is a connection to the API replicas. See the package doc.
type Client struct {
	cfg  Config
	log  *slog.Logger
	conn *grpc.ClientConn

	pods        capstanv1.PodServiceClient
	nodes       capstanv1.NodeServiceClient
	replicaSets capstanv1.ReplicaSetServiceClient
	deployments capstanv1.DeploymentServiceClient
	leases      capstanv1.LeaseServiceClient
	events      capstanv1.EventServiceClient
	configMaps  capstanv1.ConfigMapServiceClient
	cluster     capstanv1.ClusterServiceClient
}

// New validates cfg and creates the connection. It does not wait for any
// replica: connections are made in the background, and calls wait (within
// their deadline) for a healthy one. Close the Client when done.
func New(cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: cfg.Logger}

	// A manual resolver holds the fixed endpoint list; it is private to
	// this connection (WithResolvers), so clients never share state.
	r := manual.NewBuilderWithScheme("capstan")
	state := resolver.State{}
	for _, e := range cfg.Endpoints {
		state.Endpoints = append(state.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: e}}})
	}
	r.InitialState(state)

	conn, err := grpc.NewClient("capstan:///api",
		grpc.WithResolvers(r),
		grpc.WithTransportCredentials(cfg.TransportCredentials),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithUserAgent(cfg.UserAgent),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                KeepaliveTime,
			Timeout:             KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
		// gRPC's default reconnect backoff grows to 2 minutes; a replica
		// that comes back should be used again within seconds.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   2 * time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithChainUnaryInterceptor(c.interceptUnary),
		grpc.WithChainStreamInterceptor(c.interceptStream),
	)
	if err != nil {
		return nil, fmt.Errorf("client: connect to %v: %w", cfg.Endpoints, err)
	}
	// Start connecting now rather than on the first call.
	conn.Connect()

	c.conn = conn
	c.pods = capstanv1.NewPodServiceClient(conn)
	c.nodes = capstanv1.NewNodeServiceClient(conn)
	c.replicaSets = capstanv1.NewReplicaSetServiceClient(conn)
	c.deployments = capstanv1.NewDeploymentServiceClient(conn)
	c.leases = capstanv1.NewLeaseServiceClient(conn)
	c.events = capstanv1.NewEventServiceClient(conn)
	c.configMaps = capstanv1.NewConfigMapServiceClient(conn)
	c.cluster = capstanv1.NewClusterServiceClient(conn)
	return c, nil
}

// Close closes the connection; calls and watches in flight fail with
// CANCELED.
func (c *Client) Close() error {
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("client: close: %w", err)
	}
	return nil
}

// Endpoints are the API replicas this client uses.
func (c *Client) Endpoints() []string { return append([]string(nil), c.cfg.Endpoints...) }

// Conn is the shared connection, with the retrying interceptors installed.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Pods is the PodService client on the shared connection.
func (c *Client) Pods() capstanv1.PodServiceClient { return c.pods }

// Nodes is the NodeService client on the shared connection.
func (c *Client) Nodes() capstanv1.NodeServiceClient { return c.nodes }

// ReplicaSets is the ReplicaSetService client on the shared connection.
func (c *Client) ReplicaSets() capstanv1.ReplicaSetServiceClient { return c.replicaSets }

// Deployments is the DeploymentService client on the shared connection.
func (c *Client) Deployments() capstanv1.DeploymentServiceClient { return c.deployments }

// Leases is the LeaseService client on the shared connection.
func (c *Client) Leases() capstanv1.LeaseServiceClient { return c.leases }

// Events is the EventService client on the shared connection.
func (c *Client) Events() capstanv1.EventServiceClient { return c.events }

// ConfigMaps is the ConfigMapService client on the shared connection.
func (c *Client) ConfigMaps() capstanv1.ConfigMapServiceClient { return c.configMaps }

// Cluster is the ClusterService client on the shared connection.
func (c *Client) Cluster() capstanv1.ClusterServiceClient { return c.cluster }

// withIdentity names the caller in the request metadata.
func (c *Client) withIdentity(ctx context.Context) context.Context {
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(ClientHeader)) > 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, ClientHeader, c.cfg.UserAgent)
}
