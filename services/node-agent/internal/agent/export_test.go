package agent

import capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"

// CachedPod and CachedNode let the tests wait until the caches hold a
// state before they freeze them (see the tests of conditional writes).
func (c *Caches) CachedPod(node, uid string) (*capstanv1.Pod, bool) { return c.pod(node, uid) }

func (c *Caches) CachedNode(name string) (*capstanv1.Node, bool) { return c.nodeObject(name) }
