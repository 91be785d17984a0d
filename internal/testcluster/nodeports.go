package testcluster

import (
	"fmt"
	"net"

	"github.com/capstan-dev/capstan/internal/localcluster"
)

// The node ports of test clusters. The node agents of one machine must
// hand out disjoint ports, and test clusters run next to each other (other
// test binaries, a `make local-up` cluster on 30000-32767): each cluster
// claims a block of its own in 20000-29999 — below local-up's range and
// the kernel's usual ephemeral range (32768-60999) — and its workers split
// it. A claim is an abstract unix socket named after the block, held while
// the cluster runs: a lock of the machine's (network namespace's) that the
// kernel drops when its holder dies, leaving no file behind.
const (
	nodePortBlocksFirst = 20000
	nodePortBlockSize   = 1000
	nodePortBlocks      = 10
)

// nodePortClaim is a claimed block of node ports.
type nodePortClaim struct {
	ports localcluster.PortRange
	lock  net.Listener
}

// claimNodePorts claims the first block no other test cluster of this
// machine holds.
func claimNodePorts() (*nodePortClaim, error) {
	for i := range nodePortBlocks {
		first := nodePortBlocksFirst + i*nodePortBlockSize
		r := localcluster.PortRange{First: first, Last: first + nodePortBlockSize - 1}
		lock, err := net.Listen("unix", "@capstan-testcluster-node-ports-"+r.String())
		if err == nil {
			return &nodePortClaim{ports: r, lock: lock}, nil
		}
	}
	return nil, fmt.Errorf("testcluster: all %d blocks of node ports in %d-%d are claimed by other test clusters on this machine",
		nodePortBlocks, nodePortBlocksFirst, nodePortBlocksFirst+nodePortBlocks*nodePortBlockSize-1)
}

// release gives the block back; nil does nothing.
func (c *nodePortClaim) release() {
	if c != nil {
		_ = c.lock.Close()
	}
}
