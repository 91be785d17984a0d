package app_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
	"github.com/capstan-dev/capstan/services/scheduler/app"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseFlags(t *testing.T) {
	opts, err := app.ParseFlags([]string{"--identity=s-1", "--max-binds-in-flight=4", "--leader-lease=elsewhere/sched"})
	if err != nil {
		t.Fatal(err)
	}
	if opts.Identity != "s-1" || opts.MaxBindsInFlight != 4 || opts.LeaderLease != "elsewhere/sched" || opts.MetricsListen != app.DefaultMetricsListen {
		t.Fatalf("options %+v", opts)
	}
	if err := opts.Validate(); err != nil {
		t.Fatal(err)
	}
	opts.MaxBindsInFlight = 0
	if err := opts.Validate(); err == nil || !strings.Contains(err.Error(), "--max-binds-in-flight must be between 1 and 10000, not 0") {
		t.Fatalf("Validate: %v", err)
	}
	if d := app.DefaultOptions(); d.LeaderLease != "capstan-system/scheduler" {
		t.Fatalf("default lease %q", d.LeaderLease)
	}
}

// The scheduler, run in-process against real API servers, leads and binds
// a pending pod to the one Ready node.
func TestRunLeadsAndBinds(t *testing.T) {
	api := apiservertest.Start(t, 2)
	c, err := client.New(client.Config{Endpoints: api.Addrs()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	callCtx, cancelCalls := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancelCalls()
	obj, err := c.Create(callCtx, &capstanv1.Node{Metadata: &capstanv1.ObjectMeta{Name: "node-1"}})
	if err != nil {
		t.Fatal(err)
	}
	node := resource.Clone(obj.(*capstanv1.Node))
	room := map[string]string{"cpu": "4", "memory": "8Gi"}
	node.Status = &capstanv1.NodeStatus{Capacity: room, Allocatable: room, Conditions: []*capstanv1.Condition{{
		Type: wellknown.NodeReady, Status: wellknown.ConditionTrue, LastTransitionTime: timestamppb.Now(),
	}}}
	if _, err := c.UpdateStatus(callCtx, node); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(callCtx, &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Name: "pending", Namespace: "default"},
		Spec:     &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "main", Command: []string{"/bin/sleep", "3600"}}}},
	}); err != nil {
		t.Fatal(err)
	}

	opts := app.DefaultOptions()
	opts.Identity = "scheduler-test"
	opts.Server = strings.Join(api.Addrs(), ",")
	opts.MetricsListen = ""
	opts.LogOutput = io.Discard
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- app.Run(ctx, opts) }()

	poll.For(t, 60*time.Second, "the pod to be bound to node-1", func(waitCtx context.Context) error {
		obj, err := c.Get(waitCtx, resource.MustLookup("Pod"), "default", "pending")
		if err != nil {
			if waitCtx.Err() != nil {
				return err // the wait is over
			}
			t.Fatal(err)
		}
		if node := obj.(*capstanv1.Pod).GetSpec().GetNodeName(); node != "node-1" {
			select {
			case err := <-runDone:
				t.Fatalf("Run returned: %v", err)
			default:
			}
			return fmt.Errorf("the pod's node is %q", node)
		}
		return nil
	})
	cancel()
	select {
	case err := <-runDone:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}
