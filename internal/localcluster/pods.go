package localcluster

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// podUIDEnv is the environment variable the node agent's process runtime
// gives every container process: the uid of its pod.
const podUIDEnv = "CAPSTAN_POD_UID"

// KillPods SIGKILLs the processes of the pods the topology's node agents
// ran: the workloads, which outlive their agents by design (Down leaves
// them running, and the next agent on the same state adopts them). Call it
// after Down, before deleting the state: a pod is recognised by its uid, a
// directory the runtime keeps under <node agent's data dir>/runtime/pods,
// and a process by that uid in its environment (CAPSTAN_POD_UID), so no
// other cluster's pods are touched. It returns how many processes it
// killed.
func (c *Cluster) KillPods() (int, error) {
	uids := map[string]bool{}
	for _, p := range c.topo.Processes {
		if filepath.Base(p.Binary) != NodeAgentBinary {
			continue
		}
		entries, err := os.ReadDir(filepath.Join(c.topo.DataDir(p.Name), "runtime", "pods"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("localcluster: pods of %s: %w", p.Name, err)
		}
		for _, e := range entries {
			if e.IsDir() {
				uids[e.Name()] = true
			}
		}
	}
	if len(uids) == 0 {
		return 0, nil
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("localcluster: list processes: %w", err)
	}
	killed := 0
	prefix := []byte(podUIDEnv + "=")
	for _, proc := range procs {
		pid, err := strconv.Atoi(proc.Name())
		if err != nil {
			continue
		}
		environ, err := os.ReadFile(filepath.Join("/proc", proc.Name(), "environ"))
		if err != nil {
			continue // gone, or not ours to read
		}
		for _, kv := range bytes.Split(environ, []byte{0}) {
			if uid, ok := bytes.CutPrefix(kv, prefix); ok && uids[string(uid)] {
				if syscall.Kill(pid, syscall.SIGKILL) == nil {
					killed++
					c.logger.Info("killed pod process", "pid", pid, "pod-uid", string(uid))
				}
				break
			}
		}
	}
	return killed, nil
}
