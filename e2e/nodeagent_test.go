package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// The tests of the node agent run real pods — processes — on the shared
// cluster's three real node agents (node-1..3), and check them from
// outside: the API for what the agents report, /proc for which processes
// run (pid and start time, so a restarted process is never taken for the
// old one), and HTTP for what the echo workload answers.

const (
	// masterlessWindow is how long the seed scenario watches the pods
	// with every master dead: longer than a node lease (6 s), so the
	// agents have certainly noticed that no API server answers.
	masterlessWindow = 8 * time.Second
	// replaceTimeout bounds the wait for a dead node's pods to be replaced:
	// the node lease's TTL, plus the controller-manager's node startup
	// grace after it became leader (20 s) or its pod-eviction-timeout
	// (10 s), plus scheduling and starting — with a wide margin, as it is
	// not a timing claim.
	replaceTimeout = 2 * time.Minute
)

// echoPod is a running echo pod as the test found it.
type echoPod struct {
	name, uid, node string
	proc            localcluster.PodProcess
	port            int
}

// TestNodeAgentSeedScenario is Capstan's first promise, end to end with
// the real binaries: a ReplicaSet of six echo pods comes up Running and
// Ready, spread over the three nodes (two each: the scheduler scores
// spreading one owner's pods above everything else), and each answers
// HTTP with its name and node on the node port the runtime gave it (in
// $PORT, and in its status). Then:
//
//   - SIGKILL of every API server, controller-manager and scheduler: every
//     echo pod keeps answering, from the same process (pid and start
//     time), for longer than a node lease;
//   - the masters start again: still the same processes, and the API shows
//     all six Running and Ready with no restart, and the nodes Ready;
//   - SIGKILL of one node agent and of its pods' process groups: the node's
//     pods are evicted and replaced, and six pods run and answer again, on
//     the other two nodes; the four that ran there were never restarted.
func TestNodeAgentSeedScenario(t *testing.T) {
	began := time.Now()
	na := startNodeAgents(t)
	c := na.c
	t.Logf("cluster ready with %d node agents: %v", len(na.agents), time.Since(began).Round(time.Millisecond))
	if len(na.nodes) != 3 {
		t.Fatalf("the seed scenario needs 3 nodes, the cluster has %v", na.nodes)
	}
	const ns = "e2e-agent-seed"
	const replicas = 6
	na.cleanupPodsAfter(t, ns)
	var stepsDone time.Time
	t.Cleanup(func() { t.Logf("restoring the cluster took %v", time.Since(stepsDone).Round(time.Millisecond)) })
	c.restoreAfter(t)
	t.Cleanup(func() {
		stepsDone = time.Now()
		t.Logf("the test's own steps took %v", stepsDone.Sub(began).Round(time.Millisecond))
	})
	echo := na.binary(t, "echo")
	start := time.Now()
	lap := func(what string) {
		t.Logf("%s: %v", what, time.Since(start).Round(time.Millisecond))
		start = time.Now()
	}

	grace := int64(testGraceSeconds)
	createReplicaSet(t, na.cl, ns, "echo", replicas, &capstanv1.PodSpec{
		Containers: []*capstanv1.Container{{
			Name:    "echo",
			Command: []string{echo},
			// Every replica declares 8080; the runtime gives each a node
			// port of its own in $PORT (pods share the node's network, and
			// here every node shares 127.0.0.1).
			Env:       []*capstanv1.EnvVar{{Name: "HOST", Value: "127.0.0.1"}},
			Ports:     []*capstanv1.ContainerPort{{Name: "http", ContainerPort: echoContainerPort}},
			Resources: &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": "10m", "memory": "16Mi"}},
		}},
		NodeSelector:                  map[string]string{agentWorkerLabel: "true"},
		TerminationGracePeriodSeconds: &grace,
	})

	pods := na.waitEchoPods(t, ns, replicas, "", podStartTimeout)
	lap("six echo pods Running, Ready and answering")
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.node]++
	}
	for _, node := range na.nodes {
		if perNode[node] != replicas/len(na.nodes) {
			t.Errorf("pods per node %v, want %d on each of %v", perNode, replicas/len(na.nodes), na.nodes)
			break
		}
	}
	agentPids := na.agentPids(t)

	// Every master dies at once.
	c.kill(t, c.Processes(localcluster.APIServerBinary, localcluster.ControllerManagerBinary, localcluster.SchedulerBinary)...)
	lap("every master killed")
	// No state to wait for: the pods must keep answering for the whole
	// window, so the test looks again and again until it has passed.
	until := time.Now().Add(masterlessWindow)
	for rounds := 0; rounds < 3 || time.Now().Before(until); rounds++ {
		if err := checkEchoPods(t.Context(), pods); err != nil {
			t.Fatalf("with every master dead (round %d): %v", rounds, err)
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
	if got := na.agentPids(t); !maps.Equal(got, agentPids) {
		t.Fatalf("node agents' pids changed with the masters dead: %v, were %v", got, agentPids)
	}
	lap("pods answered from the same processes without masters")

	c.restore(t)
	lap("masters restarted")
	poll.For(t, podStartTimeout, "the API to show the six pods Running and Ready, unrestarted", func(ctx context.Context) error {
		list, err := na.listPods(ctx, ns)
		if err != nil {
			return err
		}
		if len(list) != replicas {
			return fmt.Errorf("%d pods: %s", len(list), podSummary(list))
		}
		for _, p := range list {
			was, ok := pods[p.GetMetadata().GetName()]
			if !ok || was.uid != p.GetMetadata().GetUid() {
				return fmt.Errorf("pod %s (uid %s) is not one of the six: %s", p.GetMetadata().GetName(), p.GetMetadata().GetUid(), podSummary(list))
			}
			if !podIsUp(p) || containerStatus(p).GetRestartCount() != 0 {
				return fmt.Errorf("not all up and unrestarted: %s", podSummary(list))
			}
		}
		return nil
	})
	if err := checkEchoPods(t.Context(), pods); err != nil {
		t.Fatalf("after the masters came back: %v", err)
	}
	na.waitNodesReady(t)
	if got := na.agentPids(t); !maps.Equal(got, agentPids) {
		t.Fatalf("node agents' pids changed: %v, were %v", got, agentPids)
	}
	lap("API shows the six pods Running, same processes")

	// One worker dies with its pods.
	victim := slices.Sorted(maps.Keys(perNode))[0]
	agent := na.agentOf(t, victim)
	survivors := map[string]echoPod{}
	var doomed []localcluster.PodProcess
	for name, p := range pods {
		if p.node == victim {
			doomed = append(doomed, p.proc)
		} else {
			survivors[name] = p
		}
	}
	if err := c.Signal(agent, syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL %s: %v", agent, err)
	}
	for _, p := range doomed {
		if err := syscall.Kill(-p.Pgid, syscall.SIGKILL); err != nil {
			t.Fatalf("SIGKILL the process group of %v: %v", p, err)
		}
	}
	killedAt := time.Now()
	poll.For(t, signalTimeout, agent+" and its pods to be gone", func(ctx context.Context) error {
		if _, err := c.Pid(agent); !errors.Is(err, localcluster.ErrNotRunning) {
			return fmt.Errorf("%s still runs (%v)", agent, err)
		}
		for _, p := range doomed {
			if p.Alive() {
				return fmt.Errorf("%v still runs", p)
			}
		}
		return nil
	})
	lap(fmt.Sprintf("%s and its %d pods killed", agent, len(doomed)))
	replaced := na.waitEchoPods(t, ns, replicas, victim, replaceTimeout)
	t.Logf("six pods Running and answering again %v after the node died", time.Since(killedAt).Round(time.Millisecond))
	lap("replacements up")
	for name, p := range survivors {
		now, ok := replaced[name]
		if !ok || now.uid != p.uid || now.proc != p.proc {
			t.Errorf("pod %s on a healthy node was replaced or restarted: was %+v, now %+v", name, p, now)
		}
	}
	if err := checkEchoPods(t.Context(), survivors); err != nil {
		t.Errorf("the survivors: %v", err)
	}
}

// waitEchoPods waits until namespace holds exactly want pods, all of them
// up (Running and Ready), none of them on node avoid (nor any pod there
// at all, terminating or not: the node's pods were evicted), and each runs
// one process that listens on a port and answers "<pod> on <node>". It
// returns them by name.
func (na *nodeAgents) waitEchoPods(t *testing.T, namespace string, want int, avoid string, timeout time.Duration) map[string]echoPod {
	t.Helper()
	var found map[string]echoPod
	what := fmt.Sprintf("%d echo pods up and answering", want)
	if avoid != "" {
		what += ", none on " + avoid
	}
	poll.For(t, timeout, what, func(ctx context.Context) error {
		list, err := na.listPods(ctx, namespace)
		if err != nil {
			return err
		}
		got := map[string]echoPod{}
		for _, p := range list {
			node := p.GetSpec().GetNodeName()
			if avoid != "" && node == avoid {
				return fmt.Errorf("a pod is still on %s: %s", avoid, podSummary(list))
			}
			if p.GetMetadata().GetDeleteTime() != nil {
				continue
			}
			if !podIsUp(p) {
				return fmt.Errorf("not every pod is up: %s", podSummary(list))
			}
			if !slices.Contains(na.nodes, node) {
				return fmt.Errorf("pod %s is on %q, not on an agent's node", p.GetMetadata().GetName(), node)
			}
			ep := echoPod{name: p.GetMetadata().GetName(), uid: p.GetMetadata().GetUid(), node: node}
			if ep.proc, err = onlyProcess(ep.uid); err != nil {
				return err
			}
			if ep.port, err = servingPort(p, ep.proc); err != nil {
				return fmt.Errorf("pod %s: %w", ep.name, err)
			}
			got[ep.name] = ep
		}
		if len(got) != want {
			return fmt.Errorf("%d pods up, want %d: %s", len(got), want, podSummary(list))
		}
		if err := checkEchoPods(ctx, got); err != nil {
			return err
		}
		found = got
		return nil
	})
	return found
}

// echoContainerPort is the port the echo pods declare; the runtime maps
// it to a node port of each pod's own.
const echoContainerPort = 8080

// servingPort is the node port the runtime gave the pod's declared
// echoContainerPort, as the pod's status reports it, after checking that
// the process got it in $PORT and listens there.
func servingPort(p *capstanv1.Pod, proc localcluster.PodProcess) (int, error) {
	var reported int
	for _, port := range containerStatus(p).GetPorts() {
		if port.GetContainerPort() == echoContainerPort {
			reported = int(port.GetHostPort())
		}
	}
	if reported <= 0 {
		return 0, fmt.Errorf("its status reports no node port for container port %d: %v", echoContainerPort, containerStatus(p).GetPorts())
	}
	if env := environOf(proc.Pid)["PORT"]; env != strconv.Itoa(reported) {
		return 0, fmt.Errorf("its process has PORT=%q, its status reports node port %d", env, reported)
	}
	listening, err := listeningPort(proc.Pid)
	if err != nil {
		return 0, err
	}
	if listening != reported {
		return 0, fmt.Errorf("its process listens on %d, its status reports node port %d", listening, reported)
	}
	return reported, nil
}

// checkEchoPods checks that each pod still runs the very process found
// before (and no other) and answers with its name and node.
func checkEchoPods(ctx context.Context, pods map[string]echoPod) error {
	for _, name := range slices.Sorted(maps.Keys(pods)) {
		p := pods[name]
		now, err := onlyProcess(p.uid)
		if err != nil {
			return err
		}
		if now != p.proc {
			return fmt.Errorf("pod %s runs %v, not %v: it was restarted", name, now, p.proc)
		}
		body, err := getBody(ctx, fmt.Sprintf("http://127.0.0.1:%d/", p.port))
		if err != nil {
			return fmt.Errorf("pod %s: %w", name, err)
		}
		if want := p.name + " on " + p.node + "\n"; body != want {
			return fmt.Errorf("pod %s answered %q, want %q", name, body, want)
		}
	}
	return nil
}

// backOffIn finds the back-off in a CrashLoopBackOff message ("back-off
// 2s restarting failed container=...").
var backOffIn = regexp.MustCompile(`back-off (\S+)`)

// TestNodeAgentRestartsAndProbes runs three pods at once:
//
//   - one whose container exits 1 at once (restart policy Always): it is
//     restarted again and again, its restart_count grows, and between
//     runs it shows Waiting CrashLoopBackOff with a back-off that grows;
//   - one whose exec liveness probe checks a file: when the test deletes
//     the file, the container is killed and started again (a new process,
//     restart_count 1, the last state saying why);
//   - one whose exec readiness probe checks a file: Ready is False until
//     the test creates it, True then, False again once it is deleted —
//     and the process is never restarted for it.
func TestNodeAgentRestartsAndProbes(t *testing.T) {
	na := startNodeAgents(t)
	const ns = "e2e-agent-probes"
	dir := t.TempDir() // before cleanupPodsAfter: removed after the pods
	na.cleanupPodsAfter(t, ns)
	rec := recordPods(t, na.cl, ns)
	liveFile, readyFile := filepath.Join(dir, "alive"), filepath.Join(dir, "ready")
	if err := os.WriteFile(liveFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	probe := func(file string) *capstanv1.Probe {
		return &capstanv1.Probe{
			Exec:             &capstanv1.ExecAction{Command: []string{"/bin/sh", "-c", "test -f " + shellQuote(file)}},
			PeriodSeconds:    1,
			FailureThreshold: 1,
		}
	}
	crash := podOn(ns, "crash", na.nodes[0], &capstanv1.Container{Command: []string{"/bin/sh", "-c", "exit 1"}})
	crash.Spec.RestartPolicy = wellknown.RestartAlways
	na.createPod(t, crash)
	live := na.createPod(t, podOn(ns, "liveness", na.nodes[1%len(na.nodes)], &capstanv1.Container{
		Command: []string{"/bin/sleep", "3600"}, LivenessProbe: probe(liveFile),
	}))
	ready := na.createPod(t, podOn(ns, "readiness", na.nodes[2%len(na.nodes)], &capstanv1.Container{
		Command: []string{"/bin/sleep", "3600"}, ReadinessProbe: probe(readyFile),
	}))

	t.Run("readiness gates Ready", func(t *testing.T) {
		notReady := func(p *capstanv1.Pod) error {
			if err := containerRunning(p); err != nil {
				return err
			}
			if containerStatus(p).GetReady() || conditionStatus(p.GetStatus().GetConditions(), wellknown.PodReady) != wellknown.ConditionFalse {
				return errors.New("it is ready")
			}
			return nil
		}
		rec.waitPod(t, ready.Metadata.Name, "running, not Ready (no file)", podStartTimeout, notReady)
		proc, err := onlyProcess(ready.GetMetadata().GetUid())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(readyFile, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		rec.waitPod(t, ready.Metadata.Name, "Ready (file created)", podStartTimeout, func(p *capstanv1.Pod) error {
			if !podIsUp(p) || !containerStatus(p).GetReady() {
				return errors.New("not Ready")
			}
			return nil
		})
		if err := os.Remove(readyFile); err != nil {
			t.Fatal(err)
		}
		p := rec.waitPod(t, ready.Metadata.Name, "not Ready again (file deleted)", podStartTimeout, notReady)
		if n := containerStatus(p).GetRestartCount(); n != 0 {
			t.Errorf("restart_count %d: readiness restarted the container", n)
		}
		if now, err := onlyProcess(ready.GetMetadata().GetUid()); err != nil || now != proc {
			t.Errorf("the process is %v (%v), was %v: readiness must not restart it", now, err, proc)
		}
	})

	t.Run("liveness restarts", func(t *testing.T) {
		rec.waitPod(t, live.Metadata.Name, "running and ready", podStartTimeout, func(p *capstanv1.Pod) error {
			if !podIsUp(p) || containerStatus(p).GetRestartCount() != 0 {
				return errors.New("not up, or restarted already")
			}
			return nil
		})
		uid := live.GetMetadata().GetUid()
		before, err := onlyProcess(uid)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(liveFile); err != nil {
			t.Fatal(err)
		}
		p := rec.waitPod(t, live.Metadata.Name, "restarted by its liveness probe", podStartTimeout, func(p *capstanv1.Pod) error {
			if containerStatus(p).GetRestartCount() < 1 {
				return errors.New("not restarted yet")
			}
			return nil
		})
		last := containerStatus(p).GetLastState().GetTerminated()
		if !strings.Contains(last.GetMessage(), "liveness") {
			t.Errorf("last state %v: the message does not say that the liveness probe failed", last)
		}
		if before.Alive() {
			t.Errorf("the process before the restart, %v, still runs", before)
		}
		// With the file back the next run stays up.
		if err := os.WriteFile(liveFile, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		rec.waitPod(t, live.Metadata.Name, "running again", podStartTimeout, func(p *capstanv1.Pod) error {
			if !podIsUp(p) {
				return errors.New("not up")
			}
			return nil
		})
		poll.For(t, podStartTimeout, "a new process of the liveness pod", func(context.Context) error {
			after, err := onlyProcess(uid)
			if err != nil {
				return err
			}
			if after == before {
				return fmt.Errorf("still the process %v", before)
			}
			return nil
		})
	})

	t.Run("crash loop backs off", func(t *testing.T) {
		const restarts = 3
		rec.waitPod(t, crash.Metadata.Name, fmt.Sprintf("restarted %d times", restarts), podStartTimeout, func(p *capstanv1.Pod) error {
			if n := containerStatus(p).GetRestartCount(); n < restarts {
				return fmt.Errorf("restart_count %d", n)
			}
			return nil
		})
		var (
			lastCount int32
			backOffs  []time.Duration
			waits     int
		)
		for _, p := range rec.history(crash.Metadata.Name) {
			cs := containerStatus(p)
			if cs == nil {
				continue
			}
			if cs.GetRestartCount() < lastCount {
				t.Errorf("restart_count went down from %d to %d", lastCount, cs.GetRestartCount())
			}
			lastCount = cs.GetRestartCount()
			if term := cs.GetLastState().GetTerminated(); term != nil && term.GetExitCode() != 1 {
				t.Errorf("last state %v, want exit code 1", term)
			}
			w := cs.GetState().GetWaiting()
			if w.GetReason() != "CrashLoopBackOff" {
				continue
			}
			waits++
			m := backOffIn.FindStringSubmatch(w.GetMessage())
			if m == nil {
				t.Errorf("CrashLoopBackOff message %q names no back-off", w.GetMessage())
				continue
			}
			d, err := time.ParseDuration(m[1])
			if err != nil {
				t.Errorf("CrashLoopBackOff message %q: %v", w.GetMessage(), err)
				continue
			}
			if len(backOffs) == 0 || backOffs[len(backOffs)-1] != d {
				backOffs = append(backOffs, d)
			}
		}
		t.Logf("back-offs seen: %v (%d CrashLoopBackOff versions, restart_count %d)", backOffs, waits, lastCount)
		if waits == 0 {
			t.Fatal("no version of the pod showed CrashLoopBackOff")
		}
		if len(backOffs) < 2 {
			t.Errorf("back-offs %v: want at least two, growing", backOffs)
		}
		for i := 1; i < len(backOffs); i++ {
			if backOffs[i] <= backOffs[i-1] {
				t.Errorf("back-offs %v do not grow", backOffs)
				break
			}
		}
	})
}

// TestNodeAgentGracefulDeletion deletes two pods bound to real nodes:
//
//   - one that traps SIGTERM, writes a marker, and exits a second later
//     (grace period 5 s): the pod first shows delete_time with the grace
//     period, the process gets SIGTERM and finishes its trap (it is not
//     killed before), and the pod leaves the API only once the process
//     has exited;
//   - one that ignores SIGTERM (grace period 2 s): it can only die by the
//     SIGKILL after the grace period, which it does — not earlier than the
//     grace period after delete_time — and then the pod leaves the API.
func TestNodeAgentGracefulDeletion(t *testing.T) {
	na := startNodeAgents(t)
	const ns = "e2e-agent-deletion"
	dir := t.TempDir()
	na.cleanupPodsAfter(t, ns)
	rec := recordPods(t, na.cl, ns)

	tests := []struct {
		name   string
		grace  int64
		script string
		// marker is what the pod's trap wrote when its process is gone.
		marker string
	}{
		{
			name:   "traps-sigterm",
			grace:  5,
			script: `trap 'echo term >> "$MARKER"; sleep 1; echo exiting >> "$MARKER"; exit 0' TERM; while :; do sleep 0.2; done`,
			marker: "term\nexiting\n",
		},
		{
			name:   "ignores-sigterm",
			grace:  2,
			script: `trap '' TERM; while :; do sleep 0.2; done`,
			marker: "",
		},
	}
	type started struct {
		uid    string
		marker string
	}
	pods := map[string]started{}
	for i, tt := range tests {
		marker := filepath.Join(dir, tt.name)
		pod := podOn(ns, tt.name, na.nodes[i%len(na.nodes)], &capstanv1.Container{
			Command: []string{"/bin/sh", "-c", tt.script},
			Env:     []*capstanv1.EnvVar{{Name: "MARKER", Value: marker}},
		})
		pod.Spec.TerminationGracePeriodSeconds = proto.Int64(tt.grace)
		pods[tt.name] = started{uid: na.createPod(t, pod).GetMetadata().GetUid(), marker: marker}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pods[tt.name]
			rec.waitPod(t, tt.name, "up", podStartTimeout, func(p *capstanv1.Pod) error {
				if !podIsUp(p) {
					return errors.New("not up")
				}
				return nil
			})
			if procs := podProcesses(p.uid); len(procs) == 0 {
				t.Fatal("the pod runs no process")
			}
			ctx, cancel := callCtx(t)
			defer cancel()
			if _, err := na.cl.Delete(ctx, podKind, ns, tt.name, nil); err != nil {
				t.Fatalf("delete pod %s: %v", tt.name, err)
			}
			// Poll the API and /proc together: the pod must not leave the
			// API while a process of it runs.
			var goneAt time.Time
			poll.For(t, podStopTimeout, "the pod to leave the API", func(ctx context.Context) error {
				_, err := na.cl.Get(ctx, podKind, ns, tt.name)
				if err == nil {
					if goneAt.IsZero() && len(podProcesses(p.uid)) == 0 {
						goneAt = time.Now()
					}
					return errors.New("still there")
				}
				if !apierrors.IsNotFound(err) {
					return err
				}
				if procs := podProcesses(p.uid); len(procs) > 0 {
					t.Fatalf("the pod left the API while its processes still ran: %v", procs)
				}
				if goneAt.IsZero() {
					goneAt = time.Now()
				}
				return nil
			})

			var deleteTime time.Time
			for _, v := range rec.history(tt.name) {
				if dt := v.GetMetadata().GetDeleteTime(); dt != nil {
					deleteTime = dt.AsTime()
					if got := v.GetMetadata().GetDeleteGracePeriodSeconds(); got != tt.grace {
						t.Errorf("delete_grace_period_seconds %d, want the pod's %d", got, tt.grace)
					}
					break
				}
			}
			if deleteTime.IsZero() {
				t.Fatal("no version of the pod showed delete_time: it was not deleted gracefully")
			}
			if got := readFileOrEmpty(t, p.marker); got != tt.marker {
				t.Errorf("marker %q, want %q", got, tt.marker)
			}
			took := goneAt.Sub(deleteTime)
			t.Logf("processes gone %v after delete_time", took.Round(time.Millisecond))
			if tt.marker == "" {
				// Only SIGKILL ends it; the agent must wait out the grace
				// period first. (A bound from below is no timing claim: a
				// slow machine only makes it longer.)
				if grace := time.Duration(tt.grace) * time.Second; took < grace-100*time.Millisecond {
					t.Errorf("the process ignoring SIGTERM was gone %v after delete_time, before its grace period of %v", took, grace)
				}
			}
		})
	}
}

// TestNodeAgentBadCommand runs pods whose command does not exist, with
// restart policies Never and Always: each ends with a status that names
// the missing command (the container's state, and the pod's reason and
// message), the Never one Failed, the Always one retried with back-off —
// while the node agent keeps running (same pid, still SERVING) and starts
// a good pod on the same node.
func TestNodeAgentBadCommand(t *testing.T) {
	na := startNodeAgents(t)
	const ns = "e2e-agent-bad-command"
	na.cleanupPodsAfter(t, ns)
	rec := recordPods(t, na.cl, ns)
	node := na.nodes[0]
	agent := na.agentOf(t, node)
	agentPid := na.agentPids(t)[agent]
	const missing = "/nonexistent/capstan-e2e-no-such-command"

	never := podOn(ns, "missing-never", node, &capstanv1.Container{Command: []string{missing, "--flag"}})
	never.Spec.RestartPolicy = wellknown.RestartNever
	always := podOn(ns, "missing-always", node, &capstanv1.Container{Command: []string{missing}})
	always.Spec.RestartPolicy = wellknown.RestartAlways
	na.createPod(t, never)
	na.createPod(t, always)

	mentionsCommand := func(p *capstanv1.Pod) error {
		if !strings.Contains(p.GetStatus().GetMessage(), missing) || p.GetStatus().GetReason() == "" {
			return fmt.Errorf("pod reason %q, message %q: want a reason and the command named", p.GetStatus().GetReason(), p.GetStatus().GetMessage())
		}
		return nil
	}
	p := rec.waitPod(t, never.Metadata.Name, "Failed, naming the missing command", podStartTimeout, func(p *capstanv1.Pod) error {
		if err := podExists(p); err != nil {
			return err
		}
		term := containerStatus(p).GetState().GetTerminated()
		if p.GetStatus().GetPhase() != wellknown.PodFailed || term == nil {
			return errors.New("not Failed with a terminated container")
		}
		if !strings.Contains(term.GetMessage(), missing) {
			return fmt.Errorf("terminated %v does not name the command", term)
		}
		return mentionsCommand(p)
	})
	t.Logf("restart policy Never: phase %s, reason %q, message %q, container %v", p.GetStatus().GetPhase(), p.GetStatus().GetReason(),
		p.GetStatus().GetMessage(), containerStatus(p).GetState())
	p = rec.waitPod(t, always.Metadata.Name, "retried, naming the missing command", podStartTimeout, func(p *capstanv1.Pod) error {
		if err := podExists(p); err != nil {
			return err
		}
		cs := containerStatus(p)
		if cs.GetRestartCount() < 1 || cs.GetState().GetRunning() != nil {
			return errors.New("not retried yet")
		}
		if w := cs.GetState().GetWaiting(); w != nil && !strings.Contains(w.GetMessage(), missing) {
			return fmt.Errorf("waiting %v does not name the command", w)
		}
		return mentionsCommand(p)
	})
	t.Logf("restart policy Always: phase %s, reason %q, message %q, container %v", p.GetStatus().GetPhase(), p.GetStatus().GetReason(),
		p.GetStatus().GetMessage(), containerStatus(p).GetState())

	good := na.createPod(t, podOn(ns, "good", node, &capstanv1.Container{Command: []string{"/bin/sleep", "3600"}}))
	rec.waitPod(t, good.Metadata.Name, "up next to the bad ones", podStartTimeout, func(p *capstanv1.Pod) error {
		if !podIsUp(p) {
			return errors.New("not up")
		}
		return nil
	})
	if now := na.agentPids(t)[agent]; now != agentPid {
		t.Errorf("%s has pid %d, had %d: it restarted", agent, now, agentPid)
	}
	ctx, cancel := callCtx(t)
	defer cancel()
	if err := na.c.CheckReady(ctx, agent); err != nil {
		t.Errorf("%s is not ready: %v", agent, err)
	}
	if panics := na.agentLogLines(t, agent, "panic"); len(panics) > 0 {
		t.Errorf("%s logged panics:\n%s", agent, strings.Join(panics, "\n"))
	}
}

// TestNodeAgentPodLogs reads an echo pod's request log through the API,
// which proxies to the pod's node agent: whole, tailed and followed, through
// every API replica, and with capctl logs. The pod also shows that TCP
// probes of a declared port reach the node port the runtime gave it.
func TestNodeAgentPodLogs(t *testing.T) {
	na := startNodeAgents(t)
	const ns = "e2e-agent-logs"
	na.cleanupPodsAfter(t, ns)
	rec := recordPods(t, na.cl, ns)
	echo := na.binary(t, "echo")
	// The probes name the declared port; the runtime probes the node port
	// it mapped it to.
	tcp := &capstanv1.Probe{TcpSocket: &capstanv1.TcpSocketAction{Port: echoContainerPort}, PeriodSeconds: 1}
	node := na.nodes[len(na.nodes)-1]
	pod := na.createPod(t, podOn(ns, "echo", node, &capstanv1.Container{
		Name:           "echo",
		Command:        []string{echo},
		Env:            []*capstanv1.EnvVar{{Name: "HOST", Value: "127.0.0.1"}},
		Ports:          []*capstanv1.ContainerPort{{Name: "http", ContainerPort: echoContainerPort}},
		ReadinessProbe: tcp,
		LivenessProbe:  tcp,
	}))
	name := pod.GetMetadata().GetName()
	up := rec.waitPod(t, name, "up", podStartTimeout, func(p *capstanv1.Pod) error {
		if !podIsUp(p) {
			return errors.New("not up")
		}
		return nil
	})
	proc, err := onlyProcess(pod.GetMetadata().GetUid())
	if err != nil {
		t.Fatal(err)
	}
	port, err := servingPort(up, proc)
	if err != nil {
		t.Fatalf("pod %s: %v", name, err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	for _, path := range []string{"/e2e-logs-1", "/e2e-logs-2"} {
		ctx, cancel := callCtx(t)
		body, err := getBody(ctx, base+path)
		cancel()
		if want := name + " on " + node + "\n"; err != nil || body != want {
			t.Fatalf("GET %s: %q, %v; want %q", path, body, err, want)
		}
	}

	for i, addr := range na.c.addrs {
		pods := capstanv1.NewPodServiceClient(rawConn(t, addr))
		all := readLogs(t, pods, &capstanv1.StreamPodLogsRequest{Namespace: ns, Name: name})
		for _, want := range []string{"msg=listening", "path=/e2e-logs-1", "path=/e2e-logs-2"} {
			if !strings.Contains(all, want) {
				t.Errorf("log through %s lacks %q:\n%s", na.c.names[i], want, all)
			}
		}
		tail := readLogs(t, pods, &capstanv1.StreamPodLogsRequest{Namespace: ns, Name: name, Container: "echo", TailLines: proto.Int64(1)})
		if lines := strings.Split(strings.TrimSuffix(tail, "\n"), "\n"); len(lines) != 1 || !strings.Contains(tail, "path=/e2e-logs-2") {
			t.Errorf("tail_lines 1 through %s: %q, want the last request only", na.c.names[i], tail)
		}
	}
	ctx, cancel := callCtx(t)
	defer cancel()
	_, err = readLogsErr(ctx, capstanv1.NewPodServiceClient(rawConn(t, na.c.addrs[0])), &capstanv1.StreamPodLogsRequest{Namespace: ns, Name: "no-such-pod"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("logs of a pod that does not exist: %v, want NOT_FOUND", err)
	}

	t.Run("follow", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		stream, err := capstanv1.NewPodServiceClient(rawConn(t, na.c.addrs[len(na.c.addrs)-1])).StreamPodLogs(ctx,
			&capstanv1.StreamPodLogsRequest{Namespace: ns, Name: name, Follow: true, TailLines: proto.Int64(0)})
		if err != nil {
			t.Fatalf("StreamPodLogs follow: %v", err)
		}
		var mu sync.Mutex
		var got strings.Builder
		done := make(chan error, 1)
		go func() {
			for {
				resp, err := stream.Recv()
				if err != nil {
					done <- err
					return
				}
				mu.Lock()
				got.Write(resp.GetData())
				mu.Unlock()
			}
		}()
		poll.For(t, 20*time.Second, "a new request to show in the followed log", func(ctx context.Context) error {
			if _, err := getBody(ctx, base+"/e2e-logs-follow"); err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			if !strings.Contains(got.String(), "path=/e2e-logs-follow") {
				return fmt.Errorf("followed so far: %q", got.String())
			}
			return nil
		})
		mu.Lock()
		if strings.Contains(got.String(), "path=/e2e-logs-2") {
			t.Errorf("follow with tail_lines 0 sent old lines: %q", got.String())
		}
		mu.Unlock()
		cancel()
		if err := <-done; status.Code(err) != codes.Canceled && !errors.Is(err, context.Canceled) {
			t.Errorf("the followed stream ended with %v, want CANCELED", err)
		}
	})

	t.Run("capctl", func(t *testing.T) {
		capctl := na.binary(t, "capctl")
		ctx, cancel := callCtx(t)
		defer cancel()
		cmd := exec.CommandContext(ctx, capctl, "--server", strings.Join(na.c.addrs, ","), "-n", ns, "logs", "pod/"+name, "--tail", "-1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
		}
		for _, want := range []string{"path=/e2e-logs-1", "path=/e2e-logs-2"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("capctl logs lacks %q:\n%s", want, out)
			}
		}
	})

	// capctl port-forward reaches the pod's port through the API and the
	// node agent, as a user on a host that cannot reach the node would.
	t.Run("capctl port-forward", func(t *testing.T) {
		capctl := na.binary(t, "capctl")
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		cmd := exec.Command(capctl, "--server", strings.Join(na.c.addrs, ","), "-n", ns,
			"port-forward", "pod/"+name, fmt.Sprintf(":%d", echoContainerPort))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		t.Cleanup(func() {
			select {
			case <-exited:
			default:
				_ = cmd.Process.Kill() // by its pid; the reader goroutine reaps it
			}
		})
		lines := make(chan string, 4)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
			exited <- cmd.Wait()
		}()
		var local string
		select {
		case line, ok := <-lines:
			if _, err := fmt.Sscanf(line, "Forwarding from %s", &local); !ok || err != nil {
				t.Fatalf("capctl port-forward printed %q (stderr %q)", line, stderr.String())
			}
		case <-ctx.Done():
			t.Fatalf("capctl port-forward printed nothing: stderr %q", stderr.String())
		}
		for _, path := range []string{"/e2e-forwarded-1", "/e2e-forwarded-2"} {
			body, err := getBody(ctx, "http://"+local+path)
			if want := name + " on " + node + "\n"; err != nil || body != want {
				t.Fatalf("GET %s through port-forward at %s: %q, %v; want %q", path, local, body, err, want)
			}
		}
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		for range lines {
		}
		if err := <-exited; err != nil {
			t.Errorf("capctl port-forward, interrupted: %v (stderr %q)", err, stderr.String())
		}
	})
}

// readLogs is the whole answer of a StreamPodLogs call.
func readLogs(t *testing.T, pods capstanv1.PodServiceClient, req *capstanv1.StreamPodLogsRequest) string {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	out, err := readLogsErr(ctx, pods, req)
	if err != nil {
		t.Fatalf("StreamPodLogs %v: %v", req, err)
	}
	return out
}

func readLogsErr(ctx context.Context, pods capstanv1.PodServiceClient, req *capstanv1.StreamPodLogsRequest) (string, error) {
	stream, err := pods.StreamPodLogs(ctx, req)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return b.String(), nil
		}
		if err != nil {
			return b.String(), err
		}
		b.Write(resp.GetData())
	}
}
