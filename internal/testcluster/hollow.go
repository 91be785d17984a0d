package testcluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// HollowPool describes hollow nodes run by one `node-agent --hollow-nodes`
// process: real node agents without processes. Each registers its Node
// (labelled capstan.dev/hollow=true and with Labels), holds and renews its
// node lease, completes graceful deletions, and reports every pod bound to
// it Running and Ready at once — there is no way to keep a pod of a hollow
// node from being Ready.
type HollowPool struct {
	// Name is the prefix of the nodes' names, <Name>-0 ... <Name>-<Nodes-1>,
	// and names the process hollow-<Name>. It must be unique in the
	// cluster.
	Name string
	// Nodes is how many nodes, at least 1.
	Nodes int
	// Labels are added to every Node: a test's pods select its pool by
	// them.
	Labels map[string]string
	// CPU and Memory are each node's capacity and allocatable (quantities
	// such as 900m, 16Gi); empty: the machine's.
	CPU, Memory string
	// MaxPods is each node's pod capacity; 0: the node agent's default.
	MaxPods int
	// LeaseDuration is the node leases' TTL; 0: the node agent's default.
	LeaseDuration time.Duration
}

func (p HollowPool) validate() error {
	switch {
	case p.Name == "" || strings.ContainsAny(p.Name, `/\ ,=`):
		return fmt.Errorf("testcluster: hollow pool name %q: must be a node name prefix", p.Name)
	case p.Nodes < 1:
		return fmt.Errorf("testcluster: hollow pool %s: Nodes is %d, at least 1 is needed", p.Name, p.Nodes)
	}
	return nil
}

// processName is the pool's process.
func (p HollowPool) processName() string { return "hollow-" + p.Name }

// args are the node agent's arguments for the pool, listening on listen.
func (p HollowPool) args(servers []string, listen, stateDir string) []string {
	args := []string{
		"--hollow-nodes=" + strconv.Itoa(p.Nodes),
		"--node-name=" + p.Name,
		"--server=" + strings.Join(servers, ","),
		"--address=127.0.0.1",
		"--listen=" + listen,
		"--state-dir=" + stateDir,
	}
	if len(p.Labels) > 0 {
		var labels []string
		for _, k := range slices.Sorted(maps.Keys(p.Labels)) {
			labels = append(labels, k+"="+p.Labels[k])
		}
		args = append(args, "--labels="+strings.Join(labels, ","))
	}
	if p.CPU != "" {
		args = append(args, "--cpu="+p.CPU)
	}
	if p.Memory != "" {
		args = append(args, "--memory="+p.Memory)
	}
	if p.MaxPods != 0 {
		args = append(args, "--max-pods="+strconv.Itoa(p.MaxPods))
	}
	if p.LeaseDuration != 0 {
		args = append(args, "--lease-duration="+p.LeaseDuration.String())
	}
	return args
}

// Pool is a running pool of hollow nodes.
type Pool struct {
	c       *Cluster
	spec    HollowPool
	process string
	nodes   []string
}

// Process is the name of the pool's node agent process: a fault can be
// injected into it like into any other.
func (p *Pool) Process() string { return p.process }

// Nodes are the names of the pool's nodes.
func (p *Pool) Nodes() []string { return slices.Clone(p.nodes) }

// Has reports whether node is one of the pool's.
func (p *Pool) Has(node string) bool { return slices.Contains(p.nodes, node) }

// Labels are the labels of the pool's nodes that HollowPool asked for.
func (p *Pool) Labels() map[string]string { return maps.Clone(p.spec.Labels) }

// HollowPool is the running pool of that name (started with the cluster
// or by StartHollowPool), nil if there is none.
func (c *Cluster) HollowPool(name string) *Pool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pools[name]
}

// addPool adds the pool's process to the topology, listening on port,
// without starting it.
func (c *Cluster) addPool(spec HollowPool, port int) (*Pool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.pools[spec.Name]; ok {
		return nil, fmt.Errorf("testcluster: a hollow pool %s runs already", spec.Name)
	}
	name := spec.processName()
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	err := c.lc.Add(localcluster.Process{
		Name:       name,
		Binary:     filepath.Join(c.binDir, localcluster.NodeAgentBinary),
		Args:       spec.args(c.addrs, listen, c.lc.Topology().DataDir(name)),
		HealthAddr: listen, // SERVING once every node is registered
	})
	if err != nil {
		return nil, fmt.Errorf("testcluster: hollow pool %s: %w", spec.Name, err)
	}
	pool := &Pool{c: c, spec: spec, process: name}
	for i := range spec.Nodes {
		pool.nodes = append(pool.nodes, fmt.Sprintf("%s-%d", spec.Name, i))
	}
	c.pools[spec.Name] = pool
	c.ports[port] = true
	return pool, nil
}

// forgetPool drops the pool and its process from the cluster, stopping the
// process if it runs.
func (c *Cluster) forgetPool(ctx context.Context, pool *Pool) error {
	err := c.lc.Remove(ctx, pool.process, c.cfg.StopGrace)
	c.mu.Lock()
	delete(c.pools, pool.spec.Name)
	c.mu.Unlock()
	return err
}

// freePort picks a free loopback port that no process of the cluster was
// given: one that is down now must find its own when it starts again.
func (c *Cluster) freePort() (int, error) {
	for range 100 {
		ports, err := localcluster.FreeLoopbackPorts(1)
		if err != nil {
			return 0, err
		}
		c.mu.Lock()
		taken := c.ports[ports[0]]
		c.mu.Unlock()
		if !taken {
			return ports[0], nil
		}
	}
	return 0, errors.New("testcluster: no free port that the cluster has not used")
}

// StartHollowPool starts a pool of hollow nodes while the cluster runs and
// waits until every node is registered. Like Start, it tries once more on
// a fresh port if the first start fails. Stop the pool when done with it;
// Close stops it with the rest.
func (c *Cluster) StartHollowPool(ctx context.Context, spec HollowPool) (*Pool, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	var errs []error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		port, err := c.freePort()
		if err != nil {
			return nil, err
		}
		pool, err := c.addPool(spec, port)
		if err != nil {
			return nil, err
		}
		if err = c.Start(ctx, pool.process); err == nil {
			return pool, nil
		}
		errs = append(errs, fmt.Errorf("attempt %d: %w", attempt, err))
		if err := c.forgetPool(context.WithoutCancel(ctx), pool); err != nil {
			return nil, errors.Join(append(errs, err)...)
		}
	}
	return nil, fmt.Errorf("testcluster: start hollow pool %s: %w", spec.Name, errors.Join(errs...))
}

var (
	nodeKind  = resource.MustLookup("Node")
	leaseKind = resource.MustLookup("Lease")
)

// Stop stops the pool's process (its agents release their node leases as
// they go) and deletes its Nodes and whatever node leases are left, so
// that nothing of the pool stays in the cluster. Pods still bound to its
// nodes are the caller's to delete, before. ctx bounds the deletions.
func (p *Pool) Stop(ctx context.Context) error {
	err := p.c.forgetPool(ctx, p)
	for _, node := range p.nodes {
		if _, delErr := p.c.client.Delete(ctx, leaseKind, wellknown.NodeLeaseNamespace, node, nil); delErr != nil && !apierrors.IsNotFound(delErr) {
			err = errors.Join(err, fmt.Errorf("delete the node lease of %s: %w", node, delErr))
		}
		if _, delErr := p.c.client.Delete(ctx, nodeKind, "", node, nil); delErr != nil && !apierrors.IsNotFound(delErr) {
			err = errors.Join(err, fmt.Errorf("delete node %s: %w", node, delErr))
		}
	}
	if err != nil {
		return fmt.Errorf("testcluster: stop hollow pool %s: %w", p.spec.Name, err)
	}
	return nil
}
