package agent_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/leaderelection"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
	"github.com/capstan-dev/capstan/services/node-agent/internal/agent"
	"github.com/capstan-dev/capstan/services/node-agent/internal/hollow"
)

func TestMain(m *testing.M) {
	if os.Getenv(shoutEnv) == "1" {
		serveShout()
		return
	}
	goleak.VerifyTestMain(m,
		// etcd's embedded server and client keep a few process-wide goroutines.
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/client/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

// testDeadline bounds every wait for a state, far above what it takes, so
// that a busy shared machine does not fail a test.
const testDeadline = 90 * time.Second

var podKind = resource.MustLookup("Pod")

// testLeaseDuration is the agents' node lease TTL: the shortest there is.
const testLeaseDuration = 2 * time.Second

// env is an API cluster and a client of it.
type env struct {
	t   *testing.T
	api *apiservertest.Cluster
	c   *client.Client
}

func newEnv(t *testing.T, replicas int) *env {
	t.Helper()
	api := apiservertest.Start(t, replicas)
	c, err := client.New(client.Config{Endpoints: api.Addrs(), UserAgent: "node-agent-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &env{t: t, api: api, c: c}
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	e.t.Cleanup(cancel)
	return ctx
}

// testLogger writes to the test's output (shown with -v or on failure).
func testLogger(t *testing.T, node string) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).
		With("component", "node-agent", "node", node)
}

// runningAgent is an agent whose Run goes on in the background.
type runningAgent struct {
	*agent.Agent
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// config is an agent config for tests: fast periods, a small machine.
func (e *env) config(node string) agent.Config {
	return agent.Config{
		NodeName:              node,
		Client:                e.c,
		RuntimeName:           hollow.RuntimeName,
		Address:               "127.0.0.1",
		CPU:                   "2",
		Memory:                "4Gi",
		LeaseDuration:         testLeaseDuration,
		PodResyncPeriod:       500 * time.Millisecond,
		NodeStatusCheckPeriod: 200 * time.Millisecond,
		Logger:                testLogger(e.t, node),
	}
}

func (e *env) start(cfg agent.Config) *runningAgent {
	e.t.Helper()
	a, err := agent.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningAgent{Agent: a, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	e.t.Cleanup(func() { r.stop(e.t) })
	return r
}

// stop cancels Run and waits for it to return.
func (r *runningAgent) stop(t *testing.T) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(testDeadline):
			t.Errorf("Run did not return after its context ended")
		}
	})
}

func (r *runningAgent) waitRegistered(t *testing.T) {
	t.Helper()
	select {
	case <-r.Registered():
	case <-time.After(testDeadline):
		t.Fatal("the agent never registered its node")
	}
}

func (e *env) node(name string) (*capstanv1.Node, error) {
	resp, err := e.c.Nodes().GetNode(e.ctx(), &capstanv1.GetNodeRequest{Name: name})
	return resp.GetNode(), err
}

func (e *env) lease(node string) (*capstanv1.Lease, error) {
	resp, err := e.c.Leases().GetLease(e.ctx(), &capstanv1.GetLeaseRequest{Namespace: wellknown.NodeLeaseNamespace, Name: node})
	return resp.GetLease(), err
}

func (e *env) pod(name string) (*capstanv1.Pod, error) {
	obj, err := e.c.Get(e.ctx(), podKind, "default", name)
	if err != nil {
		return nil, err
	}
	return obj.(*capstanv1.Pod), nil
}

// createPod creates a pod bound to node (no scheduler runs in these
// tests) with one container per command.
func (e *env) createPod(name, node, restartPolicy string, commands ...[]string) *capstanv1.Pod {
	e.t.Helper()
	spec := &capstanv1.PodSpec{NodeName: node, RestartPolicy: restartPolicy, TerminationGracePeriodSeconds: proto.Int64(5)}
	for i, cmd := range commands {
		spec.Containers = append(spec.Containers, &capstanv1.Container{Name: fmt.Sprintf("c%d", i), Command: cmd})
	}
	obj, err := e.c.Create(e.ctx(), &capstanv1.Pod{Metadata: &capstanv1.ObjectMeta{Name: name, Namespace: "default"}, Spec: spec})
	if err != nil {
		e.t.Fatal(err)
	}
	return obj.(*capstanv1.Pod)
}

// waitPodRunningReady waits for the API to show the pod Running and Ready.
func (e *env) waitPodRunningReady(name string) *capstanv1.Pod {
	e.t.Helper()
	var pod *capstanv1.Pod
	poll.For(e.t, testDeadline, "pod "+name+" Running and Ready in the API", func(context.Context) error {
		var err error
		if pod, err = e.pod(name); err != nil {
			return err
		}
		if ph := pod.GetStatus().GetPhase(); ph != wellknown.PodRunning {
			return fmt.Errorf("phase %q", ph)
		}
		if r := condition(pod.GetStatus().GetConditions(), wellknown.PodReady); r.GetStatus() != wellknown.ConditionTrue {
			return fmt.Errorf("Ready %v", r)
		}
		return nil
	})
	return pod
}

func (e *env) waitPodGone(name string) {
	e.t.Helper()
	poll.For(e.t, testDeadline, "pod "+name+" removed from the API", func(context.Context) error {
		_, err := e.pod(name)
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
}

// The agent registers its Node with everything the scheduler and people
// need, keeps labels and taints others set, holds and renews the node
// lease, and releases it when stopped.
func TestRegistersNodeAndHoldsLease(t *testing.T) {
	e := newEnv(t, 1)
	// The node exists already, with a label and a taint of an operator.
	if _, err := e.c.Create(e.ctx(), &capstanv1.Node{
		Metadata: &capstanv1.ObjectMeta{Name: "node-a", Labels: map[string]string{"zone": "z1"}},
		Spec:     &capstanv1.NodeSpec{Taints: []*capstanv1.Taint{{Key: "dedicated", Value: "db", Effect: wellknown.TaintNoSchedule}}},
	}); err != nil {
		t.Fatal(err)
	}
	cfg := e.config("node-a")
	cfg.Runtime = hollow.NewRuntime(nil)
	cfg.Labels = map[string]string{"disk": "ssd"}
	cfg.AgentEndpoint = "127.0.0.1:10250"
	r := e.start(cfg)
	r.waitRegistered(t)

	node, err := e.node("node-a")
	if err != nil {
		t.Fatal(err)
	}
	labels := node.GetMetadata().GetLabels()
	if labels["zone"] != "z1" || labels["disk"] != "ssd" || labels[wellknown.LabelHostname] != "node-a" {
		t.Errorf("labels %v", labels)
	}
	if len(node.GetSpec().GetTaints()) != 1 {
		t.Errorf("taints %v: the operator's taint is gone", node.GetSpec().GetTaints())
	}
	st := node.GetStatus()
	for _, res := range []map[string]string{st.GetCapacity(), st.GetAllocatable()} {
		if res["cpu"] != "2" || res["memory"] != "4Gi" || res["pods"] != "110" {
			t.Errorf("resources %v", res)
		}
	}
	if len(st.GetAddresses()) != 1 || st.GetAddresses()[0].GetType() != "InternalIP" || st.GetAddresses()[0].GetAddress() != "127.0.0.1" {
		t.Errorf("addresses %v", st.GetAddresses())
	}
	if st.GetAgentEndpoint() != "127.0.0.1:10250" {
		t.Errorf("agent_endpoint %q", st.GetAgentEndpoint())
	}
	if info := st.GetNodeInfo(); info.GetRuntime() != "hollow" || info.GetOperatingSystem() == "" || info.GetArchitecture() == "" || info.GetAgentVersion() == "" {
		t.Errorf("node_info %v", info)
	}
	ready := condition(st.GetConditions(), wellknown.NodeReady)
	if ready.GetStatus() != wellknown.ConditionTrue || ready.GetReason() != "AgentReady" || ready.GetLastHeartbeatTime() == nil {
		t.Errorf("Ready %v", ready)
	}

	var first *capstanv1.Lease
	poll.For(t, testDeadline, "node lease held", func(context.Context) error {
		first, err = e.lease("node-a")
		return err
	})
	if first.GetSpec().GetHolderIdentity() != leaderelection.HolderIdentity("node-a") || first.GetSpec().GetLeaseDurationSeconds() != 2 {
		t.Fatalf("lease %v", first)
	}
	poll.For(t, testDeadline, "node lease renewed", func(context.Context) error {
		l, err := e.lease("node-a")
		if err != nil {
			return err
		}
		if l.GetStatus().GetEpoch() != first.GetStatus().GetEpoch() {
			return fmt.Errorf("epoch changed from %d to %d: not a renewal", first.GetStatus().GetEpoch(), l.GetStatus().GetEpoch())
		}
		if !l.GetStatus().GetRenewTime().AsTime().After(first.GetStatus().GetRenewTime().AsTime()) {
			return errors.New("renew_time has not moved")
		}
		return nil
	})

	r.stop(t)
	if _, err := e.lease("node-a"); !apierrors.IsNotFound(err) {
		t.Fatalf("lease after stop: %v, want it released (NOT_FOUND)", err)
	}
}

// A lease taken away (as etcd does when it expires) is acquired again with
// a new epoch, and a Ready=Unknown written by the node lifecycle controller
// meanwhile is set back to True.
func TestLostLeaseAndUnknownReadyAreRepaired(t *testing.T) {
	e := newEnv(t, 1)
	cfg := e.config("node-b")
	cfg.Runtime = hollow.NewRuntime(nil)
	r := e.start(cfg)
	r.waitRegistered(t)
	var held *capstanv1.Lease
	poll.For(t, testDeadline, "node lease held", func(context.Context) error {
		var err error
		held, err = e.lease("node-b")
		return err
	})
	if _, err := e.c.Leases().ReleaseLease(e.ctx(), &capstanv1.ReleaseLeaseRequest{
		Namespace: wellknown.NodeLeaseNamespace, Name: "node-b", HolderIdentity: held.GetSpec().GetHolderIdentity(), Epoch: held.GetStatus().GetEpoch(),
	}); err != nil {
		t.Fatal(err)
	}
	poll.For(t, testDeadline, "node lease acquired again", func(context.Context) error {
		l, err := e.lease("node-b")
		if err != nil {
			return err
		}
		if l.GetStatus().GetEpoch() <= held.GetStatus().GetEpoch() {
			return fmt.Errorf("epoch %d", l.GetStatus().GetEpoch())
		}
		return nil
	})

	// As the controller does it: conditional on the version it read (the
	// agent's own writes may come between: read again then).
	poll.For(t, testDeadline, "Ready=Unknown written", func(context.Context) error {
		node, err := e.node("node-b")
		if err != nil {
			return err
		}
		ready := condition(node.GetStatus().GetConditions(), wellknown.NodeReady)
		ready.Status, ready.Reason, ready.LastTransitionTime = wellknown.ConditionUnknown, "NodeStatusUnknown", timestamppb.Now()
		_, err = e.c.UpdateStatus(e.ctx(), node)
		if err != nil && !apierrors.IsConflict(err) {
			t.Fatal(err)
		}
		return err
	})
	poll.For(t, testDeadline, "Ready=True again", func(context.Context) error {
		node, err := e.node("node-b")
		if err != nil {
			return err
		}
		if r := condition(node.GetStatus().GetConditions(), wellknown.NodeReady); r.GetStatus() != wellknown.ConditionTrue {
			return fmt.Errorf("Ready %v", r)
		}
		return nil
	})
}

// With the hollow runtime: a bound pod is reported Running and Ready; a
// graceful delete stops it and removes it from the API; a forced delete
// stops it.
func TestPodLifecycleHollow(t *testing.T) {
	e := newEnv(t, 1)
	rt := hollow.NewRuntime(nil)
	cfg := e.config("node-c")
	cfg.Runtime = rt
	e.start(cfg)

	graceful := e.createPod("graceful", "node-c", "", []string{"/bin/sleep", "3600"})
	forced := e.createPod("forced", "node-c", "", []string{"/bin/sleep", "3600"}, []string{"/bin/sleep", "3600"})
	running := e.waitPodRunningReady("graceful")
	if running.GetStatus().GetHostIp() != "127.0.0.1" || running.GetStatus().GetStartTime() == nil || len(running.GetStatus().GetContainerStatuses()) != 1 {
		t.Fatalf("status %v", running.GetStatus())
	}
	e.waitPodRunningReady("forced")

	if _, err := e.c.Delete(e.ctx(), podKind, "default", "graceful", nil); err != nil {
		t.Fatal(err)
	}
	e.waitPodGone("graceful")
	if rt.PodStatus(graceful.GetMetadata().GetUid()) != nil {
		t.Fatal("the runtime still runs the pod that was removed")
	}

	if _, err := e.c.Delete(e.ctx(), podKind, "default", "forced", nil, client.GracePeriod(0)); err != nil {
		t.Fatal(err)
	}
	poll.For(t, testDeadline, "the forcibly deleted pod stopped", func(context.Context) error {
		if rt.PodStatus(forced.GetMetadata().GetUid()) != nil {
			return errors.New("still runs")
		}
		return nil
	})
}

// Before its pod cache has synced the agent never stops a pod, whatever
// its runtime runs; it runs the pods of its checkpoint. Once the API
// answers, a pod the API does not have is stopped and the others stay.
func TestNothingStoppedBeforeTheCacheSyncs(t *testing.T) {
	e := newEnv(t, 1)
	checkpoints := t.TempDir()
	cfg := e.config("node-d")
	cfg.Runtime = hollow.NewRuntime(nil)
	cfg.CheckpointDir = checkpoints
	first := e.start(cfg)
	kept := e.createPod("kept", "node-d", "", []string{"/bin/sleep", "3600"})
	e.waitPodRunningReady("kept")
	first.stop(t)

	e.api.StopReplica(0)
	rt := hollow.NewRuntime(nil)
	orphan := &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Name: "orphan", Namespace: "default", Uid: "orphan-uid"},
		Spec:     &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "c", Command: []string{"/bin/true"}}}},
	}
	if err := rt.SyncPod(context.Background(), orphan); err != nil {
		t.Fatal(err)
	}
	cfg = e.config("node-d")
	cfg.Runtime = rt
	cfg.CheckpointDir = checkpoints
	cfg.PodWorkers = 1 // FIFO: the orphan is looked at before the checkpointed pod
	e.start(cfg)
	poll.For(t, testDeadline, "the checkpointed pod runs while the API is away", func(context.Context) error {
		if rt.PodStatus(kept.GetMetadata().GetUid()) == nil {
			return errors.New("not running")
		}
		return nil
	})
	if rt.PodStatus("orphan-uid") == nil {
		t.Fatal("the agent stopped a pod before its cache synced")
	}

	e.api.StartReplica(0)
	poll.For(t, testDeadline, "the pod the API does not have stopped", func(context.Context) error {
		if rt.PodStatus("orphan-uid") != nil {
			return errors.New("still runs")
		}
		return nil
	})
	if rt.PodStatus(kept.GetMetadata().GetUid()) == nil {
		t.Fatal("the pod the API has was stopped")
	}
}
