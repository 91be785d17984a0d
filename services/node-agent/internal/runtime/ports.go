package runtime

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// EnvPortPrefix + a declared container port names the variable that holds
// the node port it was given (CAPSTAN_PORT_8080=41234).
const EnvPortPrefix = "CAPSTAN_PORT_"

// portMap gives each port a pod declares a port of its own on the node.
// Processes of all pods share the node's network, so two pods declaring
// container port 8080 must not both get 8080: a declared host_port is taken
// as is (the scheduler keeps those unique per node), any other port gets a
// free port of the node, allocated once and kept in the pod's checkpoint so
// an adopted pod keeps its ports. Probes and $PORT use the allocated port.
// It is safe for concurrent use.
type portMap struct {
	mu sync.RWMutex
	m  map[int32]int32 // declared container port → node port
}

func newPortMap(saved map[int32]int32) *portMap {
	m := map[int32]int32{}
	for k, v := range saved {
		m[k] = v
	}
	return &portMap{m: m}
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

// ensure allocates a node port for every port spec declares that has none.
func (pm *portMap) ensure(spec *capstanv1.PodSpec) error {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	for _, c := range spec.GetContainers() {
		for _, p := range c.GetPorts() {
			declared := p.GetContainerPort()
			if _, ok := pm.m[declared]; ok || declared <= 0 {
				continue
			}
			if p.GetHostPort() > 0 {
				pm.m[declared] = p.GetHostPort()
				continue
			}
			free, err := freeNodePort()
			if err != nil {
				return fmt.Errorf("allocate a node port for container port %d: %w", declared, err)
			}
			pm.m[declared] = free
		}
	}
	return nil
}

func (pm *portMap) snapshot() map[int32]int32 {
	pm.mu.RLock()
	defer pm.mu.RUnlock()
	out := make(map[int32]int32, len(pm.m))
	for k, v := range pm.m {
		out[k] = v
	}
	return out
}

// statuses reports container c's ports with their node ports.
func (pm *portMap) statuses(c *capstanv1.Container) []*capstanv1.ContainerPort {
	var out []*capstanv1.ContainerPort
	for _, p := range c.GetPorts() {
		out = append(out, &capstanv1.ContainerPort{
			Name: p.GetName(), ContainerPort: p.GetContainerPort(),
			HostPort: pm.nodePort(p.GetContainerPort()), Protocol: p.GetProtocol(),
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

// freeNodePort asks the kernel for a free TCP port on the node.
func freeNodePort() (int32, error) {
	lis, err := net.Listen("tcp", ":0")
	if err != nil {
		return 0, err
	}
	defer lis.Close()
	return int32(lis.Addr().(*net.TCPAddr).Port), nil
}
