package localcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/capstan-dev/capstan/internal/poll"
)

// The node agent's process runtime puts these in every container's
// environment: the uid and the namespace of its pod. They tell which
// processes are a pod's, and whose.
const (
	PodUIDEnv       = "CAPSTAN_POD_UID"
	PodNamespaceEnv = "CAPSTAN_POD_NAMESPACE"
)

// PodProcess is a live process of a pod, as the kernel shows it (/proc),
// not as a node agent accounts for it. Pid and StartTicks together
// identify it: a process started later with the same pid has other start
// ticks, so two PodProcess values are equal only for the same process.
type PodProcess struct {
	Pid  int
	Pgid int
	// StartTicks is its start time in clock ticks after boot.
	StartTicks uint64
	// PodUID and Namespace are its pod's, from its initial environment.
	PodUID    string
	Namespace string
	// Comm is its command name.
	Comm string
}

func (p PodProcess) String() string {
	return fmt.Sprintf("%s[pid %d pgid %d start %d pod %s]", p.Comm, p.Pid, p.Pgid, p.StartTicks, p.PodUID)
}

// Alive reports whether that very process (not a later one with its pid)
// still runs and is not a zombie.
func (p PodProcess) Alive() bool {
	st, err := readProcStat(fmt.Sprintf("/proc/%d/stat", p.Pid))
	return err == nil && st.startTicks == p.StartTicks && !st.dead()
}

// PodProcesses lists the live processes of pods — those whose initial
// environment names a pod (PodUIDEnv) — that keep accepts (every one if
// keep is nil). A process whose environment cannot be read (gone, or not
// ours) is left out; the pods' own code is trusted not to change the
// variables.
func PodProcesses(keep func(PodProcess) bool) []PodProcess {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	uidPrefix, nsPrefix := []byte(PodUIDEnv+"="), []byte(PodNamespaceEnv+"=")
	var out []PodProcess
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		environ, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || len(environ) == 0 {
			continue // gone, a kernel thread, or not ours to read
		}
		p := PodProcess{Pid: pid}
		for _, kv := range bytes.Split(environ, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, uidPrefix); ok {
				p.PodUID = string(v)
			} else if v, ok := bytes.CutPrefix(kv, nsPrefix); ok {
				p.Namespace = string(v)
			}
		}
		if p.PodUID == "" {
			continue
		}
		st, err := readProcStat(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil || st.dead() {
			continue
		}
		p.Pgid, p.StartTicks, p.Comm = st.pgid, st.startTicks, st.comm
		if keep == nil || keep(p) {
			out = append(out, p)
		}
	}
	return out
}

// PodsOf are the live processes of the pods the named node agent ran: those
// whose uid has a directory in its runtime's state (see KillPods).
func (c *Cluster) PodsOf(agent string) ([]PodProcess, error) {
	p, err := c.process(agent)
	if err != nil {
		return nil, err
	}
	uids, err := c.podUIDs(p)
	if err != nil || len(uids) == 0 {
		return nil, err
	}
	return PodProcesses(func(p PodProcess) bool { return uids[p.PodUID] }), nil
}

// podUIDs are the uids of the pods the node agent p has state of; none for
// a process of another binary.
func (c *Cluster) podUIDs(p *Process) (map[string]bool, error) {
	uids := map[string]bool{}
	if filepath.Base(p.Binary) != NodeAgentBinary {
		return uids, nil
	}
	entries, err := os.ReadDir(filepath.Join(c.paths.DataDir(p.Name), "runtime", "pods"))
	if errors.Is(err, fs.ErrNotExist) {
		return uids, nil
	}
	if err != nil {
		return nil, fmt.Errorf("localcluster: pods of %s: %w", p.Name, err)
	}
	for _, e := range entries {
		if e.IsDir() {
			uids[e.Name()] = true
		}
	}
	return uids, nil
}

// KillPods SIGKILLs the processes of the pods the topology's node agents
// ran: the workloads, which outlive their agents by design (Down leaves
// them running, and the next agent on the same state adopts them). Call it
// after Down, before deleting the state: a pod is recognised by its uid, a
// directory the runtime keeps under <node agent's data dir>/runtime/pods,
// and a process by that uid in its environment (PodUIDEnv), so no other
// cluster's pods are touched. It waits until the killed processes are
// gone, and returns how many it killed; one that survives is an error.
func (c *Cluster) KillPods() (int, error) {
	uids := map[string]bool{}
	procs := c.processes()
	for i := range procs {
		agentUIDs, err := c.podUIDs(&procs[i])
		if err != nil {
			return 0, err
		}
		maps.Copy(uids, agentUIDs)
	}
	if len(uids) == 0 {
		return 0, nil
	}
	var killed []PodProcess
	for _, p := range PodProcesses(func(p PodProcess) bool { return uids[p.PodUID] }) {
		if syscall.Kill(p.Pid, syscall.SIGKILL) == nil {
			killed = append(killed, p)
			c.logger.Info("killed pod process", "pid", p.Pid, "pod-uid", p.PodUID)
		}
	}
	err := poll.Until(context.Background(), killWait, "the killed pod processes to be gone", func(context.Context) error {
		for _, p := range killed {
			if p.Alive() {
				return fmt.Errorf("%v survived SIGKILL", p)
			}
		}
		return nil
	})
	if err != nil {
		return len(killed), fmt.Errorf("localcluster: %w", err)
	}
	return len(killed), nil
}
