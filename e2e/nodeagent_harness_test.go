package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// This file is the part of the harness the node agent's tests
// (nodeagent_test.go) share: the cluster's real node agents and their
// nodes, the demo workload (deploy/workloads/echo), the processes of a pod
// as the kernel shows them (/proc, not the agent's own account), and a
// record of every version of the pods of a namespace.
//
// The pods of these tests are real processes. They outlive their node
// agents by design, and the cluster's Down does not stop them, so every test
// removes its pods through the API when it ends and then checks that no
// process of its namespace is left (cleanupPodsAfter); one that is left is
// SIGKILLed and the test fails.

const (
	// agentWorkerLabel marks the nodes of the cluster's real node agents
	// (they are started with it); the tests' pods select it, so they never
	// land on the hollow nodes of other tests.
	agentWorkerLabel = "e2e.capstan.dev/node-agent"
	// podStartTimeout bounds each wait for pods to run: far above the
	// second or so it takes, so reaching it means something is broken.
	podStartTimeout = 60 * time.Second
	// podStopTimeout bounds each wait for pods, and their processes, to be
	// gone after a deletion.
	podStopTimeout = 60 * time.Second
	// testGraceSeconds is the grace period of the tests' pods unless a test
	// says otherwise: short, so that a clean-up never waits long.
	testGraceSeconds = 2
)

// nodeAgents is the shared cluster seen from its workers: the node-agent
// processes and the nodes they run, in the same order.
type nodeAgents struct {
	c      *cluster
	cl     *client.Client
	agents []string // process names: node-agent-1...
	nodes  []string // node names: node-1...
}

// startNodeAgents returns the shared cluster's node agents once each of
// their nodes is registered and Ready.
func startNodeAgents(t *testing.T) *nodeAgents {
	t.Helper()
	c := sharedCluster(t)
	na := &nodeAgents{c: c, cl: clientOf(t, c.addrs...)}
	for _, a := range c.NodeAgents() {
		na.agents = append(na.agents, a.Process)
		na.nodes = append(na.nodes, a.Node)
	}
	if len(na.agents) == 0 {
		t.Fatal("the cluster has no node agents")
	}
	na.waitNodesReady(t)
	return na
}

// waitNodesReady waits until every agent's node reports Ready=True and
// carries agentWorkerLabel.
func (na *nodeAgents) waitNodesReady(t *testing.T) {
	t.Helper()
	poll.For(t, podStartTimeout, "every agent's node to be Ready", func(ctx context.Context) error {
		for _, node := range na.nodes {
			obj, err := na.cl.Get(ctx, nodeKind, "", node)
			if err != nil {
				return err
			}
			n := obj.(*capstanv1.Node)
			if st := conditionStatus(n.GetStatus().GetConditions(), wellknown.NodeReady); st != wellknown.ConditionTrue {
				return fmt.Errorf("node %s is Ready=%q", node, st)
			}
			if n.GetMetadata().GetLabels()[agentWorkerLabel] != "true" {
				return fmt.Errorf("node %s lacks %s=true: %v", node, agentWorkerLabel, n.GetMetadata().GetLabels())
			}
		}
		return nil
	})
}

// agentOf is the node agent process that runs node.
func (na *nodeAgents) agentOf(t *testing.T, node string) string {
	t.Helper()
	i := slices.Index(na.nodes, node)
	if i < 0 {
		t.Fatalf("no node agent runs node %q (agents run %v)", node, na.nodes)
	}
	return na.agents[i]
}

// agentPids are the node agents' pids, by process name.
func (na *nodeAgents) agentPids(t *testing.T) map[string]int {
	t.Helper()
	pids := map[string]int{}
	for _, name := range na.agents {
		pid, err := na.c.Pid(name)
		if err != nil {
			t.Fatalf("pid of %s: %v", name, err)
		}
		pids[name] = pid
	}
	return pids
}

func conditionStatus(conds []*capstanv1.Condition, typ string) string {
	for _, c := range conds {
		if c.GetType() == typ {
			return c.GetStatus()
		}
	}
	return ""
}

// cleanupPodsAfter removes, when t ends, the ReplicaSets and pods of
// namespace through the API — ReplicaSets first, so nothing creates pods
// again; pods gracefully, so their agents stop them and remove them, and
// by force if that does not happen in time (a node whose agent is dead) —
// and then checks that no process of namespace runs any more: one that
// still does is SIGKILLed and the test fails. Register it before
// restoreAfter: cleanups run last-registered first, and the agents must be
// back to stop the pods.
func (na *nodeAgents) cleanupPodsAfter(t *testing.T, namespace string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout+podStopTimeout)
		defer cancel()
		rss, err := na.cl.ListAll(ctx, replicaSetKind, client.ListOptions{Namespace: namespace})
		if err != nil {
			t.Errorf("clean up: list ReplicaSets in %s: %v", namespace, err)
		}
		for _, rs := range rss.Items {
			if _, err := na.cl.Delete(ctx, replicaSetKind, namespace, rs.GetMetadata().GetName(), nil); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("clean up: delete ReplicaSet %s/%s: %v", namespace, rs.GetMetadata().GetName(), err)
			}
		}
		deletePods := func(opts ...client.DeleteOption) []string {
			pods, err := na.cl.ListAll(ctx, podKind, client.ListOptions{Namespace: namespace})
			if err != nil {
				t.Errorf("clean up: list pods in %s: %v", namespace, err)
				return nil
			}
			var names []string
			for _, p := range pods.Items {
				name := p.GetMetadata().GetName()
				names = append(names, name)
				if _, err := na.cl.Delete(ctx, podKind, namespace, name, nil, opts...); err != nil && !apierrors.IsNotFound(err) {
					t.Errorf("clean up: delete pod %s/%s: %v", namespace, name, err)
				}
			}
			return names
		}
		began := time.Now()
		deletePods()
		err = poll.Until(ctx, podStopTimeout, "the pods of "+namespace+" to be removed", func(ctx context.Context) error {
			pods, err := na.cl.ListAll(ctx, podKind, client.ListOptions{Namespace: namespace})
			if err == nil && len(pods.Items) > 0 {
				err = fmt.Errorf("%d pods left", len(pods.Items))
			}
			return err
		})
		if err != nil {
			t.Errorf("clean up: %v: removing %v by force", err, deletePods(client.GracePeriod(0)))
		}
		removed := time.Now()
		// Removed from the API, a pod's processes are the agent's to stop
		// (at once for a graceful deletion, within the grace period for
		// a forced one).
		defer func() {
			t.Logf("clean up: pods of %s removed from the API in %v, their processes gone %v later",
				namespace, removed.Sub(began).Round(time.Millisecond), time.Since(removed).Round(time.Millisecond))
		}()
		if poll.Until(ctx, podStopTimeout, "no process of "+namespace, poll.True(func() bool { return len(namespaceProcesses(namespace)) == 0 })) != nil {
			left := namespaceProcesses(namespace)
			for _, p := range left {
				_ = syscall.Kill(p.Pid, syscall.SIGKILL)
			}
			t.Errorf("clean up: %d process(es) of namespace %s still ran %v after their pods were removed (killed now): %v",
				len(left), namespace, podStopTimeout, left)
		}
	})
}

// binary is the path of a binary the cluster does not run (the echo
// workload, capctl): from $CAPSTAN_BIN_DIR when `make build` put it there,
// else built once into the cluster's directory.
func (na *nodeAgents) binary(t *testing.T, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	path, err := na.c.Binary(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// podProcesses are the live processes of the pod with uid.
func podProcesses(uid string) []localcluster.PodProcess {
	return localcluster.PodProcesses(func(p localcluster.PodProcess) bool { return p.PodUID == uid })
}

// namespaceProcesses are the live processes of every pod of namespace.
func namespaceProcesses(namespace string) []localcluster.PodProcess {
	return localcluster.PodProcesses(func(p localcluster.PodProcess) bool { return p.Namespace == namespace })
}

// environOf is the initial environment of the process, by name (empty if
// it cannot be read).
func environOf(pid int) map[string]string {
	env := map[string]string{}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return env
	}
	for _, kv := range strings.Split(string(data), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

// onlyProcess is the one live process of the pod with uid, or an error if
// there is none or more than one.
func onlyProcess(uid string) (localcluster.PodProcess, error) {
	procs := podProcesses(uid)
	if len(procs) != 1 {
		return localcluster.PodProcess{}, fmt.Errorf("pod %s has %d live processes, want 1: %v", uid, len(procs), procs)
	}
	return procs[0], nil
}

// listeningPort is the TCP port the process listens on (IPv4 or IPv6), from
// its socket file descriptors and /proc/net/tcp{,6}.
func listeningPort(pid int) (int, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // the header
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			const listen = "0A"
			if len(fields) < 10 || fields[3] != listen || !inodes[fields[9]] {
				continue
			}
			_, portHex, ok := strings.Cut(fields[1], ":")
			if !ok {
				continue
			}
			port, err := strconv.ParseInt(portHex, 16, 32)
			if err == nil {
				f.Close()
				return int(port), nil
			}
		}
		f.Close()
	}
	return 0, fmt.Errorf("pid %d listens on no TCP port", pid)
}

// getBody is the body of GET url, or an error for a failure or a status
// other than 200.
func getBody(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := noKeepAlive.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(body), nil
}

// noKeepAlive keeps no idle connections, so nothing lingers for goleak and
// every request opens a new connection to whichever process listens now.
var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}

// podIsUp: the pod is not terminating, is bound, Running, and Ready.
func podIsUp(p *capstanv1.Pod) bool {
	return p.GetMetadata().GetDeleteTime() == nil && p.GetSpec().GetNodeName() != "" &&
		p.GetStatus().GetPhase() == wellknown.PodRunning &&
		conditionStatus(p.GetStatus().GetConditions(), wellknown.PodReady) == wellknown.ConditionTrue
}

// podSummary is a one-line account of pods for a failure message.
func podSummary(pods []*capstanv1.Pod) string {
	var parts []string
	for _, p := range pods {
		var containers []string
		for _, cs := range p.GetStatus().GetContainerStatuses() {
			state := "?"
			switch s := cs.GetState(); {
			case s.GetRunning() != nil:
				state = "running"
			case s.GetWaiting() != nil:
				state = "waiting:" + s.GetWaiting().GetReason()
			case s.GetTerminated() != nil:
				state = "terminated:" + s.GetTerminated().GetReason()
			}
			containers = append(containers, fmt.Sprintf("%s=%s/restarts=%d", cs.GetName(), state, cs.GetRestartCount()))
		}
		terminating := ""
		if p.GetMetadata().GetDeleteTime() != nil {
			terminating = " terminating"
		}
		parts = append(parts, fmt.Sprintf("%s(node=%q phase=%s ready=%s%s %s)", p.GetMetadata().GetName(), p.GetSpec().GetNodeName(),
			p.GetStatus().GetPhase(), conditionStatus(p.GetStatus().GetConditions(), wellknown.PodReady), terminating, strings.Join(containers, ",")))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// listPods reads the pods of namespace.
func (na *nodeAgents) listPods(ctx context.Context, namespace string) ([]*capstanv1.Pod, error) {
	list, err := na.cl.ListAll(ctx, podKind, client.ListOptions{Namespace: namespace})
	if err != nil {
		return nil, err
	}
	pods := make([]*capstanv1.Pod, 0, len(list.Items))
	for _, obj := range list.Items {
		pods = append(pods, obj.(*capstanv1.Pod))
	}
	return pods, nil
}

// createPod creates a pod and returns it as stored.
func (na *nodeAgents) createPod(t *testing.T, pod *capstanv1.Pod) *capstanv1.Pod {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	created, err := na.cl.Create(ctx, pod)
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", pod.GetMetadata().GetNamespace(), pod.GetMetadata().GetName(), err)
	}
	return created.(*capstanv1.Pod)
}

// podOn is a pod of one container bound to node at creation (the
// scheduler is not involved), with testGraceSeconds unless changed.
func podOn(namespace, name, node string, c *capstanv1.Container) *capstanv1.Pod {
	grace := int64(testGraceSeconds)
	if c.Name == "" {
		c.Name = "main"
	}
	return &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"e2e": name}},
		Spec: &capstanv1.PodSpec{
			Containers:                    []*capstanv1.Container{c},
			NodeName:                      node,
			TerminationGracePeriodSeconds: &grace,
		},
	}
}

// podRecorder records every version of the pods of one namespace that a
// watch delivers, so that a test can check states that pass quickly (a
// back-off) as well as the current one.
type podRecorder struct {
	namespace string
	watcher   *client.Watcher
	done      chan struct{}

	mu       sync.Mutex
	versions map[string][]*capstanv1.Pod // by pod name, in order
	current  map[string]*capstanv1.Pod   // by pod name; deleted pods are absent
}

// recordPods starts recording the pods of namespace; it stops when t ends.
func recordPods(t *testing.T, cl *client.Client, namespace string) *podRecorder {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &podRecorder{
		namespace: namespace,
		watcher:   cl.Watch(ctx, podKind, client.WatchOptions{Namespace: namespace}),
		done:      make(chan struct{}),
		versions:  map[string][]*capstanv1.Pod{},
		current:   map[string]*capstanv1.Pod{},
	}
	go func() {
		defer close(r.done)
		for ev := range r.watcher.Events() {
			pod, ok := ev.Object.(*capstanv1.Pod)
			if !ok {
				continue
			}
			name := pod.GetMetadata().GetName()
			r.mu.Lock()
			r.versions[name] = append(r.versions[name], pod)
			if ev.Type == client.Deleted {
				delete(r.current, name)
			} else {
				r.current[name] = pod
			}
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		r.watcher.Stop()
		cancel()
		<-r.done
	})
	return r
}

// pod is the pod's current version, nil if it does not exist (or was not
// seen yet).
func (r *podRecorder) pod(name string) *capstanv1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current[name]
}

// history is every version of the named pod seen so far.
func (r *podRecorder) history(name string) []*capstanv1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.versions[name])
}

// waitPod waits until cond holds for the named pod's current version and
// returns that version; cond gets nil while the pod does not exist.
func (r *podRecorder) waitPod(t *testing.T, name, what string, timeout time.Duration, cond func(*capstanv1.Pod) error) *capstanv1.Pod {
	t.Helper()
	var got *capstanv1.Pod
	poll.For(t, timeout, fmt.Sprintf("pod %s/%s: %s", r.namespace, name, what), func(context.Context) error {
		select {
		case <-r.done:
			return fmt.Errorf("the watch of pods ended: %v", r.watcher.Err())
		default:
		}
		p := r.pod(name)
		if err := cond(p); err != nil {
			if p != nil {
				return fmt.Errorf("%w; pod: %s", err, podSummary([]*capstanv1.Pod{p}))
			}
			return err
		}
		got = p
		return nil
	})
	return got
}

// containerStatus is the status of the pod's only (first) container.
func containerStatus(p *capstanv1.Pod) *capstanv1.ContainerStatus {
	if cs := p.GetStatus().GetContainerStatuses(); len(cs) > 0 {
		return cs[0]
	}
	return nil
}

// podExists is a waitPod condition: the pod exists.
func podExists(p *capstanv1.Pod) error {
	if p == nil {
		return errors.New("no such pod")
	}
	return nil
}

// containerRunning is a waitPod condition: the pod's container runs.
func containerRunning(p *capstanv1.Pod) error {
	if err := podExists(p); err != nil {
		return err
	}
	if containerStatus(p).GetState().GetRunning() == nil {
		return errors.New("its container does not run")
	}
	return nil
}

// agentLogLines are the lines of the named node agent's log that contain
// every one of substrs.
func (na *nodeAgents) agentLogLines(t *testing.T, agent string, substrs ...string) []string {
	t.Helper()
	data, err := os.ReadFile(na.c.LogPath(agent))
	if err != nil {
		t.Fatalf("log of %s: %v", agent, err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		all := true
		for _, s := range substrs {
			all = all && strings.Contains(line, s)
		}
		if all {
			out = append(out, line)
		}
	}
	return out
}

// readFileOrEmpty is the content of path, "" if it does not exist.
func readFileOrEmpty(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read %s: %v", path, err)
	}
	return string(data)
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
