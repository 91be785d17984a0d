package nodelifecycle

import (
	"sync"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// state is what the controller has learnt about the nodes. Safe for
// concurrent use.
type state struct {
	mu         sync.Mutex
	start      time.Time // when the controller began judging nodes (begin)
	nodes      map[string]*nodeRecord
	suppressed bool // mass-eviction protection, as of the last census
}

type nodeRecord struct {
	// firstSeen is when the controller first knew the node.
	firstSeen time.Time
	// leaseSeen: the controller has seen the node's lease, so its absence now
	// means etcd expired it (or someone deleted it).
	leaseSeen bool
	// nextEvictionPass is when the node's pods are next examined for
	// eviction; zero means at once.
	nextEvictionPass time.Time
}

func newState() *state {
	return &state{nodes: make(map[string]*nodeRecord)}
}

// begin records that judging starts at now: the startup grace counts from
// it.
func (s *state) begin(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.start = now
}

// record returns the node's record, creating it first seen now. s.mu held.
func (s *state) record(name string, now time.Time) *nodeRecord {
	r, ok := s.nodes[name]
	if !ok {
		r = &nodeRecord{firstSeen: now}
		s.nodes[name] = r
	}
	return r
}

func (s *state) sawLease(name string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.record(name, now).leaseSeen = true
}

func (s *state) forget(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.nodes, name)
}

// verdict is what the controller concludes about a node.
type verdict int

const (
	alive   verdict = iota // its lease exists
	waiting                // no lease, but still within a grace period
	dead                   // no lease and no grace left
)

// judge decides about node name given whether its lease is in the cache.
// grace is Options.StartupGrace.
func (s *state) judge(name string, leasePresent bool, now time.Time, grace time.Duration) verdict {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.record(name, now)
	if leasePresent {
		r.leaseSeen = true
		r.nextEvictionPass = time.Time{}
		return alive
	}
	if now.Before(s.start.Add(grace)) {
		return waiting
	}
	if !r.leaseSeen && now.Before(r.firstSeen.Add(grace)) {
		return waiting
	}
	return dead
}

// evictionDue reports whether the node's pods should be examined now.
func (s *state) evictionDue(name string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !now.Before(s.record(name, now).nextEvictionPass)
}

func (s *state) setNextEvictionPass(name string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.nodes[name]; ok {
		r.nextEvictionPass = at
	}
}

// setSuppressed records the mass-eviction protection; it reports whether
// that changed.
func (s *state) setSuppressed(suppressed bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := s.suppressed != suppressed
	s.suppressed = suppressed
	return changed
}

func (s *state) isSuppressed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.suppressed
}

// census judges every cached node now: the dead ones and how many there
// are in all.
func (c *Controller) census(s *state, now time.Time) (deadNodes []*capstanv1.Node, total int) {
	nodes := c.nodes.List()
	for _, n := range nodes {
		name := n.GetMetadata().GetName()
		_, leasePresent := c.leases.Get(wellknown.NodeLeaseNamespace, name)
		if s.judge(name, leasePresent, now, c.opts.StartupGrace) == dead {
			deadNodes = append(deadNodes, n)
		}
	}
	return deadNodes, len(nodes)
}

// evictionSuppressed: more than half of the nodes are dead at once (so a
// single node that is dead counts too: there is nowhere to move its pods).
func evictionSuppressed(deadNodes []*capstanv1.Node, total int) bool {
	return total > 0 && 2*len(deadNodes) > total
}
