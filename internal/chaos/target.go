package chaos

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Role is what a unit runs.
type Role string

// The roles of a cluster's units.
const (
	APIServer         Role = "apiserver"
	ControllerManager Role = "controller-manager"
	Scheduler         Role = "scheduler"
	Worker            Role = "worker"
)

// Unit is one process (local) or container (compose) a fault can hit.
type Unit struct {
	// Name is the process's or the compose service's name.
	Name string
	Role Role
	// Index is the master's or the worker's number, from 1.
	Index int
	// Node is a worker's node name.
	Node string
}

func (u Unit) String() string { return u.Name }

// ErrUnsupported is what a Target returns for a fault it cannot give.
var ErrUnsupported = errors.New("not supported by this target")

// Target is a running cluster the chaos run faults: the compose cluster or
// the same topology as local processes.
type Target interface {
	// Kind says which: "compose" or "local processes".
	Kind() string
	// APIAddrs are the API replicas' addresses, reachable from here.
	APIAddrs() []string
	// Units are every unit: 3 masters' API servers, controller managers and
	// schedulers, and the workers.
	Units() []Unit
	// Kill SIGKILLs; Stop is a clean stop (SIGTERM, then SIGKILL after a
	// grace); Start starts what Kill or Stop ended.
	Kill(ctx context.Context, units ...Unit) error
	Stop(ctx context.Context, units ...Unit) error
	Start(ctx context.Context, units ...Unit) error
	// Pause freezes (docker pause / SIGSTOP); Unpause thaws.
	Pause(ctx context.Context, units ...Unit) error
	Unpause(ctx context.Context, units ...Unit) error
	// Freeze sends SIGSTOP to the unit's main process; Thaw SIGCONT. For
	// local processes this is Pause.
	Freeze(ctx context.Context, units ...Unit) error
	Thaw(ctx context.Context, units ...Unit) error
	// KillWorker kills a worker with everything on it: its agent and its
	// pods. Start brings the agent back.
	KillWorker(ctx context.Context, u Unit) error
	// Cut takes the unit off the network; Heal puts it back.
	// ErrUnsupported where the target has no network of its own.
	Cut(ctx context.Context, u Unit) error
	Heal(ctx context.Context, u Unit) error
	// Restore makes everything whole (started, thawed, connected) and
	// waits until every unit is healthy, within timeout.
	Restore(ctx context.Context, timeout time.Duration) error
	// EchoCommand is the path of the echo workload where pods run.
	EchoCommand() string
	// Logs is what the units of a role logged (for counting fence
	// rejections).
	Logs(ctx context.Context, role Role) (string, error)
}

// unitsOf are the units of a role, or of master n (all roles but workers).
func unitsOf(t Target, match func(Unit) bool) []Unit {
	var out []Unit
	for _, u := range t.Units() {
		if match(u) {
			out = append(out, u)
		}
	}
	return out
}

// masterUnits are master n's API server, controller manager and scheduler.
func masterUnits(t Target, n int) []Unit {
	return unitsOf(t, func(u Unit) bool { return u.Role != Worker && u.Index == n })
}

// holderUnit is the unit a lease holder identity names
// ("controller-manager-2_1a2b3c4d" → master 2's controller manager,
// "node-1_..." or "worker-1_..." → that worker).
func holderUnit(t Target, holder string) (Unit, bool) {
	id, _, _ := strings.Cut(holder, "_")
	for _, role := range []Role{ControllerManager, Scheduler} {
		if n, ok := strings.CutPrefix(id, string(role)+"-"); ok {
			i, err := strconv.Atoi(n)
			if err != nil {
				return Unit{}, false
			}
			for _, u := range t.Units() {
				if u.Role == role && u.Index == i {
					return u, true
				}
			}
		}
	}
	for _, u := range t.Units() {
		if u.Role == Worker && u.Node == id {
			return u, true
		}
	}
	return Unit{}, false
}

// names are the units' names.
func names(units []Unit) []string {
	var out []string
	for _, u := range units {
		out = append(out, u.Name)
	}
	return out
}

func errUnsupported(what string) error { return fmt.Errorf("%s: %w", what, ErrUnsupported) }
