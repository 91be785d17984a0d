package localcluster

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
)

// Process is one program of a topology: what to run and how to tell that it
// is ready. A Process is plain data; the Cluster decides when to start it.
type Process struct {
	// Name identifies the process: its pid file, log file and data directory
	// are named after it. It must be a valid file name.
	Name string
	// Binary is the path of the executable. It is also how the runner
	// recognises its own process behind a pid file: argv[0] of a running
	// process must equal it (made absolute by New).
	Binary string
	// Args are the arguments of a first start.
	Args []string
	// RestartArgs, when not nil, replace Args once RestartMarker exists in
	// the process's data directory: an etcd member that already joined its
	// cluster restarts with --etcd-initial-cluster-state=existing instead of
	// bootstrapping a new cluster again.
	RestartArgs []string
	// RestartMarker is a path relative to the data directory whose existence
	// selects RestartArgs.
	RestartMarker string
	// Env is added to the runner's own environment.
	Env []string
	// HealthAddr, when set, is the gRPC address (host:port) whose
	// grpc.health.v1 status must be SERVING before Up returns.
	HealthAddr string
	// HealthURL, when set (and HealthAddr is not), is an http URL that
	// must answer 200 before Up returns: the /healthz of a component that
	// serves no gRPC. A process with neither is ready once it runs.
	HealthURL string
}

// Topology is a set of processes and the directory that holds their state:
// data/<name>/, logs/<name>.log and pids/<name>.pid.
type Topology struct {
	// StateDir is where the state lives (made absolute by New).
	StateDir string
	// Processes are started in this order. Down stops them in reverse order
	// of their binaries (all processes of one binary at once), so clients
	// stop before the API servers they talk to.
	Processes []Process
}

// DataDir is the data directory of the named process.
func (t Topology) DataDir(name string) string { return filepath.Join(t.StateDir, "data", name) }

// LogPath is the file the named process's stdout and stderr are appended to.
func (t Topology) LogPath(name string) string {
	return filepath.Join(t.StateDir, "logs", name+".log")
}

// PidPath is the file that holds the named process's pid while it runs.
func (t Topology) PidPath(name string) string {
	return filepath.Join(t.StateDir, "pids", name+".pid")
}

// APIAddresses are the gRPC addresses of the topology's API servers, in
// order: what a client of this cluster dials.
func (t Topology) APIAddresses() []string {
	var addrs []string
	for _, p := range t.Processes {
		if filepath.Base(p.Binary) == APIServerBinary && p.HealthAddr != "" {
			addrs = append(addrs, p.HealthAddr)
		}
	}
	return addrs
}

// File names of the binaries in a bin directory.
const (
	APIServerBinary         = "apiserver"
	ControllerManagerBinary = "controller-manager"
	SchedulerBinary         = "scheduler"
	NodeAgentBinary         = "node-agent"
)

// PortRange is an inclusive range of ports, FIRST-LAST as a flag.
type PortRange struct {
	First, Last int
}

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// Split cuts r into n disjoint slices of (nearly) equal size, in order;
// the last one also takes what does not divide evenly. r must hold at
// least n ports.
func (r PortRange) Split(n int) []PortRange {
	size := (r.Last - r.First + 1) / n
	out := make([]PortRange, n)
	for i := range out {
		out[i] = PortRange{First: r.First + i*size, Last: r.First + (i+1)*size - 1}
	}
	out[n-1].Last = r.Last
	return out
}

// DefaultNodePorts is the node agent's own default --node-port-range: the
// ports the workers of a Layout share unless it says otherwise.
var DefaultNodePorts = PortRange{First: 30000, Last: 32767}

// ControlPlaneBinaries are the binaries a ControlPlane topology runs.
var ControlPlaneBinaries = []string{APIServerBinary, ControllerManagerBinary, SchedulerBinary, NodeAgentBinary}

// MasterPorts are the loopback ports one master's processes listen on.
type MasterPorts struct {
	// GRPC is the API server's gRPC port.
	GRPC int
	// EtcdClient and EtcdPeer are the embedded etcd member's ports.
	EtcdClient int
	EtcdPeer   int
	// ControllerManagerHTTP and SchedulerHTTP serve those components'
	// /metrics and /healthz; 0 means they serve none (and are ready once
	// they run).
	ControllerManagerHTTP int
	SchedulerHTTP         int
	// NodeAgentGRPC is the NodeAgentService port of the worker that goes
	// with this master in ControlPlane (node-agent-<i>, node node-<i>: one
	// worker per master on loopback); 0 means no worker. A Layout has its
	// workers apart, in any number.
	NodeAgentGRPC int
}

// DefaultPorts are the ports of `make local-up`: gRPC 6441-6443 (the ports
// docker compose publishes too), etcd 12379/12380, 22379/22380,
// 32379/32380, the conventional etcd ports of a three-member cluster on one
// host, HTTP 10251-10253 for the controller-managers and 10261-10263 for
// the schedulers, and gRPC 10271-10273 for the node agents (not the
// kubelet's 10250 and up, which the controller-managers hold here).
func DefaultPorts() []MasterPorts {
	ports := make([]MasterPorts, 3)
	for i := range ports {
		ports[i] = MasterPorts{
			GRPC:                  6441 + i,
			EtcdClient:            (i+1)*10000 + 2379,
			EtcdPeer:              (i+1)*10000 + 2380,
			ControllerManagerHTTP: 10251 + i,
			SchedulerHTTP:         10261 + i,
			NodeAgentGRPC:         10271 + i,
		}
	}
	return ports
}

// FreePorts picks ports for the given number of masters, each with its
// worker (NodeAgentGRPC), that nothing listens on right now, so a test's
// cluster never collides with the one a user runs. The ports are distinct;
// another program may still take one before the cluster binds it, which a
// test sees as a failed start.
func FreePorts(masters int) ([]MasterPorts, error) {
	ports, workers, err := FreeLayoutPorts(masters, masters)
	if err != nil {
		return nil, err
	}
	for i := range ports {
		ports[i].NodeAgentGRPC = workers[i]
	}
	return ports, nil
}

// FreeLayoutPorts picks, in one go, the ports of the given number of
// masters (NodeAgentGRPC left 0) and of workers: a Layout's Masters and
// Workers. Like FreePorts, they are distinct and free right now.
func FreeLayoutPorts(masters, workers int) ([]MasterPorts, []int, error) {
	const perMaster = 5
	free, err := FreeLoopbackPorts(perMaster*masters + workers)
	if err != nil {
		return nil, nil, err
	}
	ports := make([]MasterPorts, masters)
	for i := range ports {
		p := free[perMaster*i:]
		ports[i] = MasterPorts{GRPC: p[0], EtcdClient: p[1], EtcdPeer: p[2], ControllerManagerHTTP: p[3], SchedulerHTTP: p[4]}
	}
	return ports, free[perMaster*masters:], nil
}

// FreeLoopbackPorts returns n distinct loopback ports that nothing listens
// on right now. Every listener is held until all n are chosen, so the
// ports differ from each other; once they are released another program may
// take one.
func FreeLoopbackPorts(n int) ([]int, error) {
	listeners := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("localcluster: pick a free port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Default is the topology of `make local-up`: three masters on the default
// ports, each with an API server, a controller-manager and a scheduler,
// and three workers, each a node agent (ControlPlane), binaries from
// binDir, state under stateDir.
func Default(binDir, stateDir string) Topology {
	return ControlPlane(binDir, stateDir, DefaultPorts())
}

// ControlPlane is the Layout of one master per entry of ports, each with
// its API server, controller-manager and scheduler, and for each master
// whose NodeAgentGRPC port is set a worker on that port: the topology of
// `make local-up`, where master i and worker i share a port plan.
func ControlPlane(binDir, stateDir string, ports []MasterPorts) Topology {
	l := Layout{BinDir: binDir, StateDir: stateDir, Masters: ports}
	for _, p := range ports {
		if p.NodeAgentGRPC != 0 {
			l.Workers = append(l.Workers, p.NodeAgentGRPC)
		}
	}
	return l.Topology()
}

// Stacked is the Layout of API servers only: one master per entry of
// ports, each an API server embedding its etcd member.
func Stacked(binDir, stateDir string, ports []MasterPorts) Topology {
	return Layout{BinDir: binDir, StateDir: stateDir, Masters: ports, APIServersOnly: true}.Topology()
}

// Layout describes a cluster on loopback ports: its masters, what they
// run, its workers and extra arguments. Topology turns it into processes.
type Layout struct {
	// BinDir holds the binaries and StateDir the state; both are made
	// absolute, as the paths in the arguments must not depend on the
	// directory a process runs in.
	BinDir, StateDir string
	// Masters are the ports of each master (NodeAgentGRPC is not used:
	// the workers are Workers).
	Masters []MasterPorts
	// APIServersOnly leaves the controller-managers and schedulers out.
	APIServersOnly bool
	// Workers are the NodeAgentService ports of the workers, as many as
	// there are, whatever the number of masters.
	Workers []int
	// NodePorts are the node ports the workers share (DefaultNodePorts if
	// zero): each gets an equal, disjoint slice as its --node-port-range,
	// since the node agents of one machine share its ports and each keeps
	// only its own pods' ports apart. It must hold a port per worker.
	NodePorts PortRange
	// Args are appended to the arguments (first start and restart) of
	// every process of a binary, by the binary's name: a lease duration
	// for the controller-managers, labels for the node agents.
	Args map[string][]string
}

// Topology is the layout's processes, in the order Up starts them:
//
//   - for each master i (from 1), apiserver-<i>, embedding the etcd member
//     master-<i>; the members form one cluster. An API server whose member
//     has already joined (its data directory holds etcd/member) restarts
//     with --etcd-initial-cluster-state=existing.
//   - unless APIServersOnly, controller-manager-<i> and then scheduler-<i>
//     for each master: identities equal to their process names, --server
//     listing every API server, /metrics and /healthz on the master's HTTP
//     ports (none for a port of 0, and the process is then ready once it
//     runs). They come after the API servers, so Down stops them first and
//     a stopping leader can still release its lease.
//   - for each worker i, node-agent-<i> runs the node node-<i>, with its
//     NodeAgentService on the worker's port (ready once SERVING there: the
//     node is registered) and its state (the runtime's checkpoints and the
//     pods' logs) in its data directory. They are last, so Down stops them
//     first, each releasing its node lease while the API servers are up.
//     Stopping a node agent leaves its pods' processes running (the next
//     one adopts them): Down stops the cluster, not the workloads; KillPods
//     stops those. Worker i gets slice i of NodePorts split evenly as its
//     --node-port-range (with the default range and three workers:
//     30000-30921, 30922-31843, 31844-32767).
func (l Layout) Topology() Topology {
	binDir, stateDir := absPath(l.BinDir), absPath(l.StateDir)
	topo := Topology{StateDir: stateDir}
	withArgs := func(p Process) Process {
		extra := l.Args[filepath.Base(p.Binary)]
		p.Args = append(p.Args, extra...)
		if p.RestartArgs != nil {
			p.RestartArgs = append(p.RestartArgs, extra...)
		}
		return p
	}
	var initialCluster []string
	for i, p := range l.Masters {
		initialCluster = append(initialCluster, fmt.Sprintf("%s=http://127.0.0.1:%d", masterName(i), p.EtcdPeer))
	}
	for i, p := range l.Masters {
		name := fmt.Sprintf("apiserver-%d", i+1)
		grpcAddr := fmt.Sprintf("127.0.0.1:%d", p.GRPC)
		args := func(clusterState string) []string {
			return []string{
				"--name=" + name,
				"--listen=" + grpcAddr,
				"--advertise-address=" + grpcAddr,
				"--etcd-name=" + masterName(i),
				"--etcd-data-dir=" + filepath.Join(topo.DataDir(name), "etcd"),
				fmt.Sprintf("--etcd-listen-peer=http://127.0.0.1:%d", p.EtcdPeer),
				fmt.Sprintf("--etcd-listen-client=http://127.0.0.1:%d", p.EtcdClient),
				fmt.Sprintf("--etcd-advertise-peer=http://127.0.0.1:%d", p.EtcdPeer),
				fmt.Sprintf("--etcd-advertise-client=http://127.0.0.1:%d", p.EtcdClient),
				"--etcd-initial-cluster=" + strings.Join(initialCluster, ","),
				"--etcd-initial-cluster-state=" + clusterState,
			}
		}
		topo.Processes = append(topo.Processes, withArgs(Process{
			Name:          name,
			Binary:        filepath.Join(binDir, APIServerBinary),
			Args:          args("new"),
			RestartArgs:   args("existing"),
			RestartMarker: filepath.Join("etcd", "member"),
			HealthAddr:    grpcAddr,
		}))
	}
	servers := "--server=" + strings.Join(topo.APIAddresses(), ",")
	component := func(binary string, i, httpPort int) Process {
		return withArgs(LeaseGated(binDir, binary, fmt.Sprintf("%s-%d", binary, i+1), topo.APIAddresses(), httpPort))
	}
	if !l.APIServersOnly {
		for i, p := range l.Masters {
			topo.Processes = append(topo.Processes, component(ControllerManagerBinary, i, p.ControllerManagerHTTP))
		}
		for i, p := range l.Masters {
			topo.Processes = append(topo.Processes, component(SchedulerBinary, i, p.SchedulerHTTP))
		}
	}
	nodePorts := l.NodePorts
	if nodePorts == (PortRange{}) {
		nodePorts = DefaultNodePorts
	}
	var agentPorts []PortRange
	if len(l.Workers) > 0 {
		agentPorts = nodePorts.Split(len(l.Workers))
	}
	for i, port := range l.Workers {
		name := fmt.Sprintf("%s-%d", NodeAgentBinary, i+1)
		listen := fmt.Sprintf("127.0.0.1:%d", port)
		topo.Processes = append(topo.Processes, withArgs(Process{
			Name:   name,
			Binary: filepath.Join(binDir, NodeAgentBinary),
			Args: []string{
				"--node-name=" + NodeName(i),
				servers,
				"--address=127.0.0.1",
				"--listen=" + listen,
				"--state-dir=" + topo.DataDir(name),
				"--node-port-range=" + agentPorts[i].String(),
			},
			HealthAddr: listen,
		}))
	}
	return topo
}

// LeaseGated is the process of one replica of a lease-gated component
// (ControllerManagerBinary, SchedulerBinary) as a Layout runs it: the binary
// from binDir, the identity name (also the process's name), --server
// listing servers, and /metrics and /healthz on 127.0.0.1:httpPort (none
// for 0, and the process is then ready once it runs). A program adds one
// with other servers — proxies in front of the API servers, say — through
// Cluster.Add.
func LeaseGated(binDir, binary, name string, servers []string, httpPort int) Process {
	p := Process{
		Name:   name,
		Binary: filepath.Join(binDir, binary),
		Args:   []string{"--identity=" + name, "--server=" + strings.Join(servers, ","), "--metrics-listen="},
	}
	if httpPort != 0 {
		addr := fmt.Sprintf("127.0.0.1:%d", httpPort)
		p.Args[2] = "--metrics-listen=" + addr
		p.HealthURL = "http://" + addr + "/healthz"
	}
	return p
}

// absPath is path made absolute, or path itself in the unlikely case that
// the working directory is unknown (New then fails on the same call).
func absPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}

func masterName(i int) string { return fmt.Sprintf("master-%d", i+1) }

// NodeName is the node that worker i (from 0) of a Layout runs: node-<i+1>.
func NodeName(i int) string { return fmt.Sprintf("node-%d", i+1) }
