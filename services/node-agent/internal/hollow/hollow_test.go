package hollow_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
	"github.com/capstan-dev/capstan/services/node-agent/internal/agent"
	"github.com/capstan-dev/capstan/services/node-agent/internal/hollow"
	"github.com/capstan-dev/capstan/services/node-agent/internal/runtime"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// etcd's embedded server and client keep a few process-wide goroutines.
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/client/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

const testDeadline = 90 * time.Second

func TestRuntime(t *testing.T) {
	rt := hollow.NewRuntime(nil)
	pod := &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Name: "p", Namespace: "default", Uid: "u1"},
		Spec:     &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "a"}, {Name: "b"}}},
	}
	ctx := context.Background()
	if err := rt.SyncPod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if uid := <-rt.Changes(); uid != "u1" {
		t.Fatalf("change %q", uid)
	}
	st := rt.PodStatus("u1")
	if st == nil || len(st.Containers) != 2 || st.StartTime.IsZero() {
		t.Fatalf("status %+v", st)
	}
	for _, c := range st.Containers {
		if !c.GetReady() || !c.GetStarted() || c.GetState().GetRunning() == nil {
			t.Fatalf("container %v", c)
		}
	}
	st.Containers[0].Ready = false // a copy: the runtime's own is untouched
	if err := rt.SyncPod(ctx, pod); err != nil || !rt.PodStatus("u1").Containers[0].GetReady() {
		t.Fatalf("SyncPod again: %v, status %+v", err, rt.PodStatus("u1"))
	}
	if got := rt.Pods(); len(got) != 1 || got[0] != "u1" {
		t.Fatalf("Pods %v", got)
	}
	if err := rt.Logs(ctx, "u1", "a", runtime.LogOptions{TailLines: -1}, io.Discard); err != nil {
		t.Fatalf("Logs: %v", err)
	}
	if err := rt.Logs(ctx, "u1", "nope", runtime.LogOptions{}, io.Discard); err == nil {
		t.Fatal("Logs of an unknown container succeeded")
	}
	if err := rt.KillPod(ctx, "u1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if rt.PodStatus("u1") != nil || len(rt.Pods()) != 0 {
		t.Fatal("a killed pod is still known")
	}
}

// 20 hollow nodes in one process register through the real agent code,
// hold and renew their node leases, report their pods Running and Ready,
// complete a graceful deletion, and release their leases when stopped.
func TestHollowNodes(t *testing.T) {
	api := apiservertest.Start(t, 1)
	c, err := client.New(client.Config{Endpoints: api.Addrs()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancelCalls := context.WithTimeout(context.Background(), testDeadline)
	defer cancelCalls()
	lease := func(ctx context.Context, name string) (*capstanv1.Lease, error) {
		resp, err := c.Leases().GetLease(ctx, &capstanv1.GetLeaseRequest{Namespace: wellknown.NodeLeaseNamespace, Name: name})
		return resp.GetLease(), err
	}

	const count = 20
	nodes, err := hollow.New(hollow.Config{
		Client:        c,
		NamePrefix:    "hollow",
		Count:         count,
		Address:       "127.0.0.1",
		AgentEndpoint: "127.0.0.1:10250",
		Labels:        map[string]string{"pool": "sim"},
		CPU:           "4",
		Memory:        "8Gi",
		LeaseDuration: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- nodes.Run(runCtx) }()
	stopped := false
	stopNodes := func() {
		if stopped {
			return
		}
		stopped = true
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	defer stopNodes()

	for _, a := range nodes.Agents() {
		select {
		case <-a.Registered():
		case <-time.After(testDeadline):
			t.Fatalf("%s never registered", a.NodeName())
		}
	}
	res, err := c.ListAll(ctx, resource.MustLookup("Node"), client.ListOptions{LabelSelector: agent.LabelHollow + "=true,pool=sim"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Items) != count {
		t.Fatalf("%d hollow nodes registered, want %d", len(res.Items), count)
	}
	for _, obj := range res.Items {
		st := obj.(*capstanv1.Node).GetStatus()
		if st.GetNodeInfo().GetRuntime() != hollow.RuntimeName || st.GetAllocatable()["cpu"] != "4" || st.GetAgentEndpoint() != "127.0.0.1:10250" {
			t.Errorf("node %s: status %v", obj.GetMetadata().GetName(), st)
		}
	}

	first := map[string]*capstanv1.Lease{}
	poll.For(t, testDeadline, "every hollow node lease held", func(ctx context.Context) error {
		for i := range count {
			name := fmt.Sprintf("hollow-%d", i)
			l, err := lease(ctx, name)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			first[name] = l
		}
		return nil
	})
	poll.For(t, testDeadline, "every hollow node lease renewed", func(ctx context.Context) error {
		for name, l0 := range first {
			l, err := lease(ctx, name)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if l.GetStatus().GetEpoch() != l0.GetStatus().GetEpoch() || !l.GetStatus().GetRenewTime().AsTime().After(l0.GetStatus().GetRenewTime().AsTime()) {
				return fmt.Errorf("%s: not renewed yet: epoch %d, renewed at %v; first seen at epoch %d, renewed at %v", name,
					l.GetStatus().GetEpoch(), l.GetStatus().GetRenewTime().AsTime(), l0.GetStatus().GetEpoch(), l0.GetStatus().GetRenewTime().AsTime())
			}
		}
		return nil
	})

	podKind := resource.MustLookup("Pod")
	for i := range count {
		if _, err := c.Create(ctx, &capstanv1.Pod{
			Metadata: &capstanv1.ObjectMeta{Name: fmt.Sprintf("pod-%d", i), Namespace: "default"},
			Spec: &capstanv1.PodSpec{NodeName: fmt.Sprintf("hollow-%d", i),
				Containers: []*capstanv1.Container{{Name: "main", Command: []string{"/bin/sleep", "3600"}}}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	poll.For(t, testDeadline, "every pod Running and Ready", func(ctx context.Context) error {
		var notYet []string
		for i := range count {
			obj, err := c.Get(ctx, podKind, "default", fmt.Sprintf("pod-%d", i))
			if err != nil {
				return err
			}
			st := obj.(*capstanv1.Pod).GetStatus()
			ready := false
			for _, cond := range st.GetConditions() {
				ready = ready || (cond.GetType() == wellknown.PodReady && cond.GetStatus() == wellknown.ConditionTrue)
			}
			if st.GetPhase() != wellknown.PodRunning || !ready {
				notYet = append(notYet, obj.GetMetadata().GetName())
			}
		}
		if len(notYet) > 0 {
			return fmt.Errorf("not yet: %s", strings.Join(notYet, " "))
		}
		return nil
	})
	if _, err := c.Delete(ctx, podKind, "default", "pod-3", nil); err != nil {
		t.Fatal(err)
	}
	poll.For(t, testDeadline, "the deleted pod removed by its hollow node", func(ctx context.Context) error {
		if _, err := c.Get(ctx, podKind, "default", "pod-3"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
	if nodes.LogSource().PodStatus("nope") != nil {
		t.Fatal("the log source knows a pod no node runs")
	}

	stopNodes()
	for i := range count {
		if _, err := lease(ctx, fmt.Sprintf("hollow-%d", i)); !apierrors.IsNotFound(err) {
			t.Errorf("hollow-%d lease after stop: %v, want released", i, err)
		}
	}
}
