// Package app wires the node agent: its options and flags, the API client,
// the process runtime (or, with --hollow-nodes, many hollow nodes), the
// agent, the NodeAgentService on --listen (health, reflection, logs), and
// an orderly stop that leaves the pods running. main only parses flags and
// calls Run; tests call Run in-process.
//
// Run blocks until its context ends; it is not meant to be called twice at
// once with the same --listen or --state-dir. Options is plain data.
package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	k8sresource "k8s.io/apimachinery/pkg/api/resource"
	k8svalidation "k8s.io/apimachinery/pkg/util/validation"

	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/logging"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/validation"
	"github.com/capstan-dev/capstan/services/node-agent/internal/agent"
	"github.com/capstan-dev/capstan/services/node-agent/internal/runtime"
)

// Name is the component name: in every log line and the API client's user
// agent.
const Name = "node-agent"

// DefaultListen is the NodeAgentService address unless --listen says
// otherwise (the kubelet's port).
const DefaultListen = "127.0.0.1:10250"

// maxHollowNodes bounds --hollow-nodes: beyond it one process is the
// bottleneck, not the control plane under test.
const maxHollowNodes = 10000

// Options is everything the node agent is configured with. Start from
// DefaultOptions: a zero Options does not validate.
type Options struct {
	// NodeName names the Node (--node-name; default the hostname). In
	// hollow mode the nodes are <NodeName>-0 ... <NodeName>-<N-1>.
	NodeName string
	// Server lists the API replicas, host:port,... (--server; default
	// $CAPSTAN_SERVER, else the local cluster's three replicas).
	Server string
	// Address is the node's address: its InternalIP, the address pods are
	// reached at, and the host of the published agent endpoint
	// (--address).
	Address string
	// Listen is the NodeAgentService's gRPC address, host:port (--listen).
	// The Node publishes <Address>:<port of Listen> as agent_endpoint.
	Listen string
	// StateDir holds the runtime's state (checkpoints, logs) and the
	// agent's pod checkpoints (--state-dir; default
	// ./.node-agent/<NodeName>). A restarted agent on the same directory
	// adopts the running pods.
	StateDir string
	// Labels are added to the Node (--labels k=v,...).
	Labels map[string]string
	// CPU and Memory override the node's capacity and allocatable
	// (--cpu, --memory; default the machine's).
	CPU    string
	Memory string
	// MaxPods is the pods capacity (--max-pods).
	MaxPods int
	// LeaseDuration is the node lease's TTL (--lease-duration): whole
	// seconds, at least 2 s.
	LeaseDuration time.Duration
	// NodePortRange is where the pods' declared container ports get their
	// node ports, FIRST-LAST (--node-port-range; default 30000-32767). It
	// must not lie inside the kernel's ephemeral port range
	// (net.ipv4.ip_local_port_range), and node agents that share a machine
	// need disjoint ranges. Not used with --hollow-nodes.
	NodePortRange string
	// HollowNodes, if positive, runs that many simulated nodes instead of
	// one real node (--hollow-nodes).
	HollowNodes int
	// LogLevel is debug, info, warn or error (--log-level).
	LogLevel string
	// LogFormat is text or json (--log-format).
	LogFormat string
	// HealthProbe, if set, switches Run to probe mode: check the
	// grpc.health.v1 status of this address and return nil only if it is
	// SERVING (--health-probe).
	HealthProbe string

	// Not flags: for tests and programs that embed the node agent.

	// Listener, if set, is served instead of listening on Listen.
	Listener net.Listener
	// LogOutput receives the log (default os.Stderr).
	LogOutput io.Writer
	// Tune adjusts the agent's config before it starts (tests shorten
	// periods). Nil: defaults.
	Tune func(*agent.Config)
}

// DefaultOptions are the flags' defaults. StateDir stays empty until
// Complete (it derives from NodeName).
func DefaultOptions() Options {
	name, err := os.Hostname()
	if err != nil {
		name = ""
	}
	return Options{
		NodeName:      strings.ToLower(name),
		Address:       "127.0.0.1",
		Listen:        DefaultListen,
		MaxPods:       agent.DefaultMaxPods,
		LeaseDuration: agent.DefaultLeaseDuration,
		NodePortRange: runtime.DefaultNodePortRange.String(),
		LogLevel:      "info",
		LogFormat:     "text",
	}
}

// AddFlags defines the flags on fs, with o's values as defaults, writing
// into o.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.NodeName, "node-name", o.NodeName, "name of the Node and its lease (default: the hostname); with --hollow-nodes, the prefix of the nodes' names")
	fs.StringVar(&o.Server, "server", o.Server, "API replicas, host:port[,host:port...] (default: $"+client.EnvServer+", else "+client.DefaultEndpoints+")")
	fs.StringVar(&o.Address, "address", o.Address, "the node's address: its InternalIP, the pods' address, and the host of the published agent endpoint")
	fs.StringVar(&o.Listen, "listen", o.Listen, "gRPC address of the NodeAgentService (logs, health), host:port")
	fs.StringVar(&o.StateDir, "state-dir", o.StateDir, "directory of the runtime's and agent's state; a restarted agent on it adopts the running pods (default: ./.node-agent/<node-name>)")
	fs.Func("labels", "labels of the Node, key=value[,key=value...]", func(s string) error {
		labels, err := parseLabels(s)
		if err != nil {
			return err
		}
		o.Labels = labels
		return nil
	})
	fs.StringVar(&o.CPU, "cpu", o.CPU, "CPU the node offers to pods, a quantity such as 2 or 1500m (default: the machine's CPUs)")
	fs.StringVar(&o.Memory, "memory", o.Memory, "memory the node offers to pods, a quantity such as 8Gi (default: the machine's memory)")
	fs.IntVar(&o.MaxPods, "max-pods", o.MaxPods, "most pods the node runs")
	fs.DurationVar(&o.LeaseDuration, "lease-duration", o.LeaseDuration, "node lease TTL, whole seconds, at least 2s: the node looks dead after about this long without the agent")
	fs.StringVar(&o.NodePortRange, "node-port-range", o.NodePortRange, "FIRST-LAST: the ports the pods' declared container ports are given on the node; "+
		"outside the kernel's ephemeral range (net.ipv4.ip_local_port_range), and disjoint for node agents sharing a machine")
	fs.IntVar(&o.HollowNodes, "hollow-nodes", o.HollowNodes, "run this many simulated nodes (<node-name>-0...) that run no processes, for scale tests")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "debug, info, warn or error")
	fs.StringVar(&o.LogFormat, "log-format", o.LogFormat, "text or json")
	fs.StringVar(&o.HealthProbe, "health-probe", o.HealthProbe, "probe mode: check the gRPC health of this host:port, exit 0 if SERVING and 1 otherwise")
}

// ParseFlags parses the command line (without the program name) into
// DefaultOptions. Like the flag package, it prints a parse error and the
// usage to stderr before returning the error (flag.ErrHelp for -h). It
// does not validate: Run does.
func ParseFlags(args []string) (Options, error) {
	o := DefaultOptions()
	fs := flag.NewFlagSet(Name, flag.ContinueOnError)
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

func parseLabels(s string) (map[string]string, error) {
	labels := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("%q: must be key=value", kv)
		}
		labels[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return labels, nil
}

// Complete fills the defaults that derive from other options.
func (o Options) Complete() Options {
	if o.StateDir == "" && o.NodeName != "" {
		o.StateDir = filepath.Join(".", ".node-agent", o.NodeName)
	}
	return o
}

// nodePortRange is --node-port-range parsed and, for a real node, checked
// against the kernel's ephemeral port range.
func (o Options) nodePortRange() (runtime.PortRange, error) {
	r, err := runtime.ParsePortRange(o.NodePortRange)
	if err != nil {
		return r, fmt.Errorf("--node-port-range: %w", err)
	}
	if o.HollowNodes == 0 {
		if err := runtime.CheckNodePortRange(r); err != nil {
			return r, fmt.Errorf("--node-port-range: %w", err)
		}
	}
	return r, nil
}

// AgentEndpoint is the NodeAgentService address the Node publishes: the
// node's address with the port the agent listens on.
func (o Options) AgentEndpoint() (string, error) {
	listen := o.Listen
	if o.Listener != nil {
		listen = o.Listener.Addr().String()
	}
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("--listen %q: must be host:port", listen)
	}
	return net.JoinHostPort(o.Address, port), nil
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
	if o.NodeName == "" {
		return errors.New("--node-name must not be empty (and the hostname is unknown)")
	}
	names := []string{o.NodeName}
	if o.HollowNodes > 0 {
		names = []string{fmt.Sprintf("%s-%d", o.NodeName, o.HollowNodes-1)}
	}
	for _, n := range names {
		if err := validation.Name(resource.MustLookup("Node"), "node_name", n); err != nil {
			return fmt.Errorf("--node-name %q: not a valid node name (a DNS-1123 subdomain): %w", n, err)
		}
	}
	for _, ep := range client.EndpointsFrom(o.Server) {
		if _, _, err := net.SplitHostPort(ep); err != nil {
			return fmt.Errorf("--server: %q must be host:port", ep)
		}
	}
	if o.Address == "" || strings.ContainsAny(o.Address, " /") {
		return fmt.Errorf("--address %q: must be an IP address or a host name", o.Address)
	}
	if _, err := o.AgentEndpoint(); err != nil {
		return err
	}
	if o.StateDir == "" {
		return errors.New("--state-dir must not be empty")
	}
	for _, k := range slices.Sorted(maps.Keys(o.Labels)) {
		if errs := k8svalidation.IsQualifiedName(k); len(errs) > 0 {
			return fmt.Errorf("--labels: key %q: %s", k, strings.Join(errs, "; "))
		}
		if errs := k8svalidation.IsValidLabelValue(o.Labels[k]); len(errs) > 0 {
			return fmt.Errorf("--labels: value %q of %s: %s", o.Labels[k], k, strings.Join(errs, "; "))
		}
	}
	for _, q := range []struct{ flag, value string }{{"--cpu", o.CPU}, {"--memory", o.Memory}} {
		if q.value == "" {
			continue
		}
		if parsed, err := k8sresource.ParseQuantity(q.value); err != nil || parsed.Sign() <= 0 {
			return fmt.Errorf("%s %q: must be a positive quantity such as 2, 1500m or 8Gi", q.flag, q.value)
		}
	}
	if o.MaxPods < 1 {
		return fmt.Errorf("--max-pods must be at least 1, not %d", o.MaxPods)
	}
	if o.LeaseDuration < 2*time.Second || o.LeaseDuration%time.Second != 0 {
		return fmt.Errorf("--lease-duration must be whole seconds and at least 2s, not %v", o.LeaseDuration)
	}
	if o.HollowNodes < 0 || o.HollowNodes > maxHollowNodes {
		return fmt.Errorf("--hollow-nodes must be between 0 and %d, not %d", maxHollowNodes, o.HollowNodes)
	}
	if _, err := o.nodePortRange(); err != nil {
		return err
	}
	if _, err := logging.ParseLevel(o.LogLevel); err != nil {
		return err
	}
	if o.LogFormat != "text" && o.LogFormat != "json" {
		return fmt.Errorf("--log-format must be text or json, not %q", o.LogFormat)
	}
	return nil
}
