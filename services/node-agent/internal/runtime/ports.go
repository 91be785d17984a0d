package runtime

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// EnvPortPrefix + a declared container port names the variable that holds
// the node port it was given (CAPSTAN_PORT_8080=30012).
const EnvPortPrefix = "CAPSTAN_PORT_"

// ErrNodePortsExhausted: every port of the node port range is held by a
// pod of the node, used by another program, or left to the kernel.
var ErrNodePortsExhausted = errors.New("runtime: node port range exhausted")

// PortRange is an inclusive range of ports, written FIRST-LAST.
type PortRange struct {
	First, Last int
}

// DefaultNodePortRange is where node ports come from unless configured:
// Kubernetes' NodePort range, just below the kernel's usual ephemeral
// range (32768-60999), so that no outgoing connection of the machine takes
// a port a pod was given before the pod binds it.
var DefaultNodePortRange = PortRange{First: 30000, Last: 32767}

// ParsePortRange reads FIRST-LAST (30000-32767).
func ParsePortRange(s string) (PortRange, error) {
	first, last, ok := strings.Cut(strings.TrimSpace(s), "-")
	f, ferr := strconv.Atoi(first)
	l, lerr := strconv.Atoi(last)
	if !ok || ferr != nil || lerr != nil {
		return PortRange{}, fmt.Errorf("%q is not FIRST-LAST, such as %s", s, DefaultNodePortRange)
	}
	r := PortRange{First: f, Last: l}
	return r, r.validate()
}

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// Size is the number of ports in r.
func (r PortRange) Size() int { return r.Last - r.First + 1 }

// Contains reports whether port is in r.
func (r PortRange) Contains(port int) bool { return port >= r.First && port <= r.Last }

func (r PortRange) validate() error {
	if r.First < 1 || r.First > r.Last || r.Last > 65535 {
		return fmt.Errorf("%s is not a range of ports: want 1 <= FIRST <= LAST <= 65535", r)
	}
	return nil
}

// Where the kernel says which local ports it hands to outgoing
// connections (sysctl net.ipv4.ip_local_port_range, which applies to IPv6
// too) and which of those it keeps for explicit binds only.
const (
	ephemeralRangeFile = "/proc/sys/net/ipv4/ip_local_port_range"
	reservedPortsFile  = "/proc/sys/net/ipv4/ip_local_reserved_ports"
)

// kernelPorts is the kernel's ephemeral port range less its reserved
// ports: where a node port could be taken by any outgoing connection of
// the machine between its allocation and the pod's bind.
type kernelPorts struct {
	ephemeral PortRange // zero: unknown
	reserved  []PortRange
}

func readKernelPorts() (kernelPorts, error) {
	rng, err := os.ReadFile(ephemeralRangeFile)
	if err != nil {
		return kernelPorts{}, err
	}
	reserved, err := os.ReadFile(reservedPortsFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return kernelPorts{}, err
	}
	return parseKernelPorts(string(rng), string(reserved))
}

// parseKernelPorts reads ip_local_port_range ("32768\t60999") and
// ip_local_reserved_ports ("30000-32767,8080" or empty).
func parseKernelPorts(rng, reserved string) (kernelPorts, error) {
	var k kernelPorts
	fields := strings.Fields(rng)
	if len(fields) != 2 {
		return k, fmt.Errorf("%s: %q", ephemeralRangeFile, rng)
	}
	eph, err := ParsePortRange(fields[0] + "-" + fields[1])
	if err != nil {
		return k, fmt.Errorf("%s: %w", ephemeralRangeFile, err)
	}
	k.ephemeral = eph
	for _, item := range strings.Split(strings.TrimSpace(reserved), ",") {
		if item == "" {
			continue
		}
		if !strings.Contains(item, "-") {
			item += "-" + item
		}
		r, err := ParsePortRange(item)
		if err != nil {
			return k, fmt.Errorf("%s: %w", reservedPortsFile, err)
		}
		k.reserved = append(k.reserved, r)
	}
	return k, nil
}

// ephemeralPort reports whether the kernel may give port to an outgoing
// connection.
func (k kernelPorts) ephemeralPort(port int) bool {
	if k.ephemeral.Size() <= 0 || !k.ephemeral.Contains(port) {
		return false
	}
	for _, r := range k.reserved {
		if r.Contains(port) {
			return false
		}
	}
	return true
}

// usable counts the ports of r that the kernel never hands out by itself.
func (k kernelPorts) usable(r PortRange) int {
	n := 0
	for port := r.First; port <= r.Last; port++ {
		if !k.ephemeralPort(port) {
			n++
		}
	}
	return n
}

func (k kernelPorts) inRange(r PortRange) error {
	if k.usable(r) > 0 {
		return nil
	}
	return fmt.Errorf("%s lies inside the kernel's ephemeral port range %s (net.ipv4.ip_local_port_range), "+
		"whose ports any outgoing connection of the machine may take: choose a range outside it (the default is %s) "+
		"or reserve it in net.ipv4.ip_local_reserved_ports", r, k.ephemeral, DefaultNodePortRange)
}

// CheckNodePortRange reports whether r can serve as the node port range on
// this machine: a range of ports with at least one outside the kernel's
// ephemeral range (its reserved ports count as outside). Ports of r inside
// that range are never allocated. If the kernel's settings cannot be read
// only the bounds are checked.
func CheckNodePortRange(r PortRange) error {
	if err := r.validate(); err != nil {
		return err
	}
	k, err := readKernelPorts()
	if err != nil {
		return nil
	}
	return k.inRange(r)
}

// nodePorts is the node-wide set of node ports: every port a pod of this
// node holds (allocated from the range, a declared host_port, or adopted
// from a checkpoint, wherever it lies). A port is allocated only if no pod
// holds it, the kernel does not use it for outgoing connections, and a
// bind probe shows that no other program holds it. A pod's ports are
// released when the pod is removed. Allocation goes round the range, so a
// released port is the last to be given again.
//
// It is safe for concurrent use; its lock is taken after
// ProcessRuntime.mu and portMap.mu, never before. The bind probes happen
// under it: each is one socket, bind and close.
type nodePorts struct {
	rng    PortRange
	kernel kernelPorts
	log    *slog.Logger

	mu    sync.Mutex
	next  int              // where the next search starts
	users map[int]int      // node port → how many pods hold it
	held  map[string][]int // pod uid → the node ports it holds
}

func newNodePorts(rng PortRange, kernel kernelPorts, log *slog.Logger) *nodePorts {
	return &nodePorts{
		rng: rng, kernel: kernel, log: log,
		next: rng.First, users: map[int]int{}, held: map[string][]int{},
	}
}

// hold records that pod uid uses port: a declared host_port, or a port
// adopted from a pod's checkpoint. A port another pod holds too is held by
// both (logged): the scheduler keeps host ports apart, and only ports
// allocated before this set existed can clash.
func (np *nodePorts) hold(uid string, port int) {
	np.mu.Lock()
	defer np.mu.Unlock()
	if np.users[port] > 0 && !slices.Contains(np.held[uid], port) {
		np.log.Warn("node port held by more than one pod", "pod-uid", uid, "node-port", port)
	}
	np.takeLocked(uid, port)
	// After an agent restart, go on after the ports already given, as the
	// previous agent would have.
	if np.rng.Contains(port) && port >= np.next {
		np.next = port + 1
	}
}

func (np *nodePorts) takeLocked(uid string, port int) {
	np.users[port]++
	np.held[uid] = append(np.held[uid], port)
}

// allocate gives pod uid a free port of the range for protocol ("TCP",
// the default, or "UDP"), or fails with ErrNodePortsExhausted.
func (np *nodePorts) allocate(uid, protocol string) (int, error) {
	np.mu.Lock()
	defer np.mu.Unlock()
	size := np.rng.Size()
	var byPods, byKernel, byOthers int
	for i := range size {
		port := np.rng.First + (np.next-np.rng.First+i)%size
		switch {
		case np.users[port] > 0:
			byPods++
		case np.kernel.ephemeralPort(port):
			byKernel++
		case probeFree(port, protocol) != nil:
			byOthers++
		default:
			np.takeLocked(uid, port)
			np.next = port + 1
			if np.next > np.rng.Last {
				np.next = np.rng.First
			}
			return port, nil
		}
	}
	why := []string{fmt.Sprintf("%d held by this node's pods", byPods)}
	if byOthers > 0 {
		why = append(why, fmt.Sprintf("%d in use by other programs", byOthers))
	}
	if byKernel > 0 {
		why = append(why, fmt.Sprintf("%d in the kernel's ephemeral range %s", byKernel, np.kernel.ephemeral))
	}
	return 0, fmt.Errorf("%w: all %d ports of %s are taken (%s)", ErrNodePortsExhausted, size, np.rng, strings.Join(why, ", "))
}

// release frees every port pod uid holds.
func (np *nodePorts) release(uid string) {
	np.mu.Lock()
	defer np.mu.Unlock()
	for _, port := range np.held[uid] {
		if np.users[port]--; np.users[port] <= 0 {
			delete(np.users, port)
		}
	}
	delete(np.held, uid)
}

// inUse is the number of distinct ports held.
func (np *nodePorts) inUse() int {
	np.mu.Lock()
	defer np.mu.Unlock()
	return len(np.users)
}

// probeFree binds port on every address (IPv6 and IPv4 where the machine
// has both) and lets it go: it fails if any program listens on the port,
// on any address.
func probeFree(port int, protocol string) error {
	addr := ":" + strconv.Itoa(port)
	if strings.EqualFold(protocol, "UDP") {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		return pc.Close()
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return lis.Close()
}

// portMap gives each port a pod declares a port of its own on the node.
// Processes of all pods share the node's network, so two pods declaring
// container port 8080 must not both get 8080: a declared host_port is taken
// as is (the scheduler keeps those unique per node), any other port gets a
// port of the node port range, allocated once and kept in the pod's
// checkpoint so an adopted pod keeps its ports. Probes and $PORT use the
// node port. All of them are held in the runtime's node-wide set until the
// pod is removed.
//
// It is safe for concurrent use; its lock is taken after
// ProcessRuntime.mu, never before.
type portMap struct {
	uid   string
	nodes *nodePorts

	mu sync.RWMutex
	m  map[int32]int32 // declared container port → node port
}

// newPortMap is the port map of pod uid, holding the ports saved in its
// checkpoint (an adopted pod) in the node-wide set.
func newPortMap(nodes *nodePorts, uid string, saved map[int32]int32) *portMap {
	pm := &portMap{uid: uid, nodes: nodes, m: map[int32]int32{}}
	for _, declared := range slices.Sorted(maps.Keys(saved)) {
		pm.m[declared] = saved[declared]
		nodes.hold(uid, int(saved[declared]))
	}
	return pm
}

// nodePort is where declared port p listens on the node (p itself if the
// pod does not declare it, e.g. a probe of an undeclared port).
func (pm *portMap) nodePort(p int32) int32 {
	pm.mu.RLock()
	defer pm.mu.RUnlock()
	if v, ok := pm.m[p]; ok {
		return v
	}
	return p
}

// ensure gives every port spec declares a node port if it has none yet.
// added reports whether any was given (the pod's checkpoint must be
// written again). A port for which none is free is left without one, and
// the error says why; the others are given theirs all the same.
func (pm *portMap) ensure(spec *capstanv1.PodSpec) (added bool, err error) {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	for _, c := range spec.GetContainers() {
		for _, p := range c.GetPorts() {
			declared := p.GetContainerPort()
			if _, ok := pm.m[declared]; ok || declared <= 0 {
				continue
			}
			if hp := p.GetHostPort(); hp > 0 {
				pm.nodes.hold(pm.uid, int(hp))
				pm.m[declared] = hp
				added = true
				continue
			}
			port, aerr := pm.nodes.allocate(pm.uid, p.GetProtocol())
			if aerr != nil {
				err = aerr
				continue
			}
			pm.m[declared] = int32(port)
			added = true
		}
	}
	return added, err
}

// unmapped lists the ports c declares that have no node port yet.
func (pm *portMap) unmapped(c *capstanv1.Container) []int32 {
	pm.mu.RLock()
	defer pm.mu.RUnlock()
	var out []int32
	for _, p := range c.GetPorts() {
		if _, ok := pm.m[p.GetContainerPort()]; !ok && p.GetContainerPort() > 0 {
			out = append(out, p.GetContainerPort())
		}
	}
	return out
}

func (pm *portMap) snapshot() map[int32]int32 {
	pm.mu.RLock()
	defer pm.mu.RUnlock()
	return maps.Clone(pm.m)
}

// statuses reports container c's ports with their node ports (host_port 0
// for a port that has none yet).
func (pm *portMap) statuses(c *capstanv1.Container) []*capstanv1.ContainerPort {
	pm.mu.RLock()
	defer pm.mu.RUnlock()
	var out []*capstanv1.ContainerPort
	for _, p := range c.GetPorts() {
		out = append(out, &capstanv1.ContainerPort{
			Name: p.GetName(), ContainerPort: p.GetContainerPort(),
			HostPort: pm.m[p.GetContainerPort()], Protocol: p.GetProtocol(),
		})
	}
	return out
}

// env is the port variables of container c: PORT for its first port,
// CAPSTAN_PORT_<declared> for every port of the pod.
func (pm *portMap) env(c *capstanv1.Container) [][2]string {
	var vars [][2]string
	if ps := c.GetPorts(); len(ps) > 0 {
		vars = append(vars, [2]string{EnvPort, strconv.Itoa(int(pm.nodePort(ps[0].GetContainerPort())))})
	}
	all := pm.snapshot()
	for _, declared := range slices.Sorted(maps.Keys(all)) {
		vars = append(vars, [2]string{EnvPortPrefix + strconv.Itoa(int(declared)), strconv.Itoa(int(all[declared]))})
	}
	return vars
}
