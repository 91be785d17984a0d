package testcluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"syscall"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/poll"
)

// Fault is a way a process fails, as fault runs deliver it.
type Fault string

// The faults.
const (
	// FaultKill is SIGKILL: the process dies at once and the kernel
	// closes its connections.
	FaultKill Fault = "kill"
	// FaultStop is SIGTERM: the process stops cleanly (SIGKILL after the
	// stop grace if it does not).
	FaultStop Fault = "stop"
	// FaultPause is SIGSTOP: the process freezes with its connections
	// open, like a hung machine or a paused container.
	FaultPause Fault = "pause"
)

// statusTimeout bounds one read of the cluster status.
const statusTimeout = 10 * time.Second

// Faults are the faults in the order a fault run cycles through them.
var Faults = []Fault{FaultKill, FaultStop, FaultPause}

// Inject delivers the fault to the named process and returns once it has
// taken effect: the process is gone (kill, stop), or every thread of it is
// stopped (pause). Restore undoes it.
func (c *Cluster) Inject(ctx context.Context, name string, f Fault) error {
	switch f {
	case FaultKill:
		return c.Kill(ctx, name)
	case FaultStop:
		return c.Stop(ctx, name)
	case FaultPause:
		return c.Pause(ctx, name)
	}
	return fmt.Errorf("testcluster: no fault %q", f)
}

// WorkerKill is what KillWorker did.
type WorkerKill struct {
	// At is when the node agent was sent SIGKILL.
	At time.Time
	// Pods are the processes of its pods that were killed with it, and
	// Groups how many process groups they were in.
	Pods   []localcluster.PodProcess
	Groups int
}

// KillWorker SIGKILLs a node agent and, at once after it, the process
// groups of its pods — a worker machine that dies with everything on it —
// and waits until all of them are gone.
func (c *Cluster) KillWorker(ctx context.Context, agent string) (WorkerKill, error) {
	pods, err := c.lc.PodsOf(agent)
	if err != nil {
		return WorkerKill{}, err
	}
	// The runtime starts each container in a session and process group of
	// its own: a group is a container with whatever it started.
	var groups []int
	for _, p := range pods {
		if !slices.Contains(groups, p.Pgid) {
			groups = append(groups, p.Pgid)
		}
	}
	k := WorkerKill{At: time.Now(), Pods: pods, Groups: len(groups)}
	if err := c.lc.Signal(agent, syscall.SIGKILL); err != nil {
		return k, fmt.Errorf("testcluster: SIGKILL %s: %w", agent, err)
	}
	for _, pgid := range groups {
		if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return k, fmt.Errorf("testcluster: SIGKILL the process group %d of %s's pods: %w", pgid, agent, err)
		}
	}
	if err := c.waitGone(ctx, agent, "after SIGKILL"); err != nil {
		return k, err
	}
	err = poll.Until(ctx, SignalTimeout, "the processes of "+agent+"'s pods to be gone", func(context.Context) error {
		for _, p := range pods {
			if p.Alive() {
				return fmt.Errorf("%v still runs", p)
			}
		}
		return nil
	})
	if err != nil {
		return k, fmt.Errorf("testcluster: %w", err)
	}
	return k, nil
}

// APIFault is one fault of an API server in a fault run.
type APIFault struct {
	// N numbers the faults of a run from 1.
	N     int
	Fault Fault
	// Replica is the API server's process name; EtcdLeader says whether
	// its etcd member led the etcd cluster when the fault came.
	Replica    string
	EtcdLeader bool
	// Restored is how long it took, after the fault had lasted its hold,
	// until the cluster was whole again.
	Restored time.Duration
	// Moved are the leases of APIFaultRun.Holdings whose holding changed
	// from the fault until the cluster was whole again, each with the
	// holdings it went through: the one before the fault first.
	Moved map[string][]Holding
}

func (f APIFault) String() string {
	leader := ""
	if f.EtcdLeader {
		leader = " (the etcd leader)"
	}
	moved := ""
	for _, lease := range slices.Sorted(maps.Keys(f.Moved)) {
		moved += fmt.Sprintf("; %s moved: %v", lease, f.Moved[lease])
	}
	return fmt.Sprintf("fault %d: %s %s%s%s", f.N, f.Fault, f.Replica, leader, moved)
}

// APIFaultRun is what RunAPIFaults does.
type APIFaultRun struct {
	// Faults is how many faults, one after the other.
	Faults int
	// Hold is how long each fault lasts — the replica stays dead or
	// frozen — before the cluster is restored.
	Hold time.Duration
	// Holdings, if set, is brought up to date after each fault, once the
	// cluster is whole again, and the leases whose holding changed are the
	// fault's Moved.
	Holdings *HoldingLog
	// Done, if set, is called after each fault once the cluster is whole
	// again; an error it returns ends the run.
	Done func(APIFault) error
}

// RunAPIFaults breaks API servers, one at a time: the faults cycle through
// Faults (kill, SIGTERM stop, SIGSTOP pause); every other fault hits the
// replica whose etcd member leads at that moment, and the others take the
// remaining replicas in turn, so that each kind of fault also meets the
// etcd leader. Each fault lasts run.Hold; then the cluster is restored
// (Restore: the replica thawed or started again, every process ready) and
// the next fault waits until every etcd member is healthy again, so that
// two faults never add up to a loss of quorum. It returns the faults it
// delivered; on an error, the cluster may be left broken (Restore mends
// it).
func (c *Cluster) RunAPIFaults(ctx context.Context, run APIFaultRun) ([]APIFault, error) {
	if run.Faults < 1 || run.Hold < 0 {
		return nil, fmt.Errorf("testcluster: an API fault run of %d faults held %v each", run.Faults, run.Hold)
	}
	var done []APIFault
	turn := 0 // the next replica that is not the etcd leader to break
	changes := map[string]int{}
	if run.Holdings != nil {
		for _, lease := range run.Holdings.leases {
			changes[lease] = run.Holdings.Changes(lease)
		}
	}
	for i := range run.Faults {
		if err := c.WaitEtcdHealthy(ctx, c.cfg.ReadyTimeout); err != nil {
			return done, err
		}
		statusCtx, cancel := context.WithTimeout(ctx, statusTimeout)
		leader, err := c.EtcdLeader(statusCtx)
		cancel()
		if err != nil {
			return done, err
		}
		f := APIFault{N: i + 1, Fault: Faults[i%len(Faults)]}
		victim := leader
		if i%2 == 1 && len(c.apiServers) > 1 {
			if turn%len(c.apiServers) == leader {
				turn++
			}
			victim = turn % len(c.apiServers)
			turn++
		}
		f.Replica, f.EtcdLeader = c.apiServers[victim], victim == leader
		if err := c.Inject(ctx, f.Replica, f.Fault); err != nil {
			return done, fmt.Errorf("%v: %w", f, err)
		}
		select {
		case <-ctx.Done():
			return done, fmt.Errorf("testcluster: %v: %w", f, ctx.Err())
		case <-time.After(run.Hold):
		}
		began := time.Now()
		if err := c.Restore(ctx); err != nil {
			return done, fmt.Errorf("testcluster: %v: restore: %w", f, err)
		}
		f.Restored = time.Since(began)
		if run.Holdings != nil {
			// Every change so far is in the log: a change is laid at the
			// door of the fault it came with.
			if err := run.Holdings.Sync(ctx, c); err != nil {
				return done, fmt.Errorf("%v: %w", f, err)
			}
			for lease, before := range changes {
				if holdings := run.Holdings.Holdings(lease); len(holdings)-1 != before {
					if f.Moved == nil {
						f.Moved = map[string][]Holding{}
					}
					f.Moved[lease] = holdings[before:]
					changes[lease] = len(holdings) - 1
				}
			}
		}
		done = append(done, f)
		if run.Done != nil {
			if err := run.Done(f); err != nil {
				return done, err
			}
		}
	}
	return done, nil
}

// WaitEtcdHealthy waits until the cluster status reports every etcd member
// of the cluster healthy, with one leader among them.
func (c *Cluster) WaitEtcdHealthy(ctx context.Context, timeout time.Duration) error {
	err := poll.Until(ctx, timeout, "every etcd member to be healthy", func(ctx context.Context) error {
		st, err := c.client.Cluster().GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
		if err != nil {
			return err
		}
		leaders, healthy := 0, 0
		for _, m := range st.GetEtcdMembers() {
			if !m.GetHealthy() {
				return fmt.Errorf("member %s %v is not healthy: %s", m.GetName(), m.GetClientUrls(), m.GetError())
			}
			healthy++
			if m.GetLeader() {
				leaders++
			}
		}
		if healthy != len(c.etcdURLs) || leaders != 1 {
			return fmt.Errorf("%d healthy members of %d, %d leaders", healthy, len(c.etcdURLs), leaders)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("testcluster: %w", err)
	}
	return nil
}
