package scheduler

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

// BenchmarkScheduleAndBind measures pods bound per second through one
// in-process API replica: b.N pods (at least 500) created before the
// scheduler starts, 100 nodes, from Run until the watch shows every pod
// bound. It reports pods/s; the API server and etcd share the machine with
// the scheduler, so this is a floor for the scheduler itself.
func BenchmarkScheduleAndBind(b *testing.B) {
	api := apiservertest.Start(b, 1)
	c, err := client.New(client.Config{Endpoints: api.Addrs(), UserAgent: "scheduler-bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for i := range 100 {
		created, err := c.Nodes().CreateNode(ctx, &capstanv1.CreateNodeRequest{Node: &capstanv1.Node{
			Metadata: &capstanv1.ObjectMeta{Name: fmt.Sprintf("node-%03d", i)},
		}})
		if err != nil {
			b.Fatal(err)
		}
		node := created.GetNode()
		node.Status = &capstanv1.NodeStatus{
			Allocatable: map[string]string{"cpu": "64", "memory": "256Gi", "pods": "1000"},
			Conditions:  []*capstanv1.Condition{{Type: wellknown.NodeReady, Status: wellknown.ConditionTrue}},
		}
		if _, err := c.Nodes().UpdateNodeStatus(ctx, &capstanv1.UpdateNodeStatusRequest{Node: node}); err != nil {
			b.Fatal(err)
		}
	}
	pods := max(b.N, 500)
	var wg sync.WaitGroup
	work := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range work {
				_, err := c.Pods().CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: &capstanv1.Pod{
					Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("p-%06d", i),
						OwnerReferences: []*capstanv1.OwnerReference{{Kind: "ReplicaSet", Name: "rs", Uid: fmt.Sprintf("rs-%d", i%10), Controller: true}}},
					Spec: &capstanv1.PodSpec{Containers: []*capstanv1.Container{{
						Name: "main", Command: []string{"/bin/true"},
						Resources: &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": "10m", "memory": "16Mi"}},
					}}},
				}})
				if err != nil {
					b.Error(err)
				}
			}
		})
	}
	for i := range pods {
		work <- i
	}
	close(work)
	wg.Wait()

	s, err := New(c, Options{Identity: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	b.ResetTimer()
	start := time.Now()
	go func() { done <- s.Run(runCtx) }()
	// Asked every 5 ms, so the figure carries at most that much delay.
	err = poll.UntilEvery(ctx, 5*time.Millisecond, 10*time.Minute, fmt.Sprintf("the watch to show all %d pods bound", pods), func(context.Context) error {
		n := 0
		for _, p := range s.pods.List() {
			if p.GetSpec().GetNodeName() != "" {
				n++
			}
		}
		if n != pods {
			return fmt.Errorf("%d bound", n)
		}
		return nil
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if err != nil {
		stop()
		<-done
		b.Fatal(err)
	}
	b.ReportMetric(float64(pods)/elapsed.Seconds(), "pods/s")
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	s.recorder.Flush(ctx)
}
