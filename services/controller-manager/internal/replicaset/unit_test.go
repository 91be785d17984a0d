package replicaset

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	k8svalidation "k8s.io/apimachinery/pkg/util/validation"
	clocktesting "k8s.io/utils/clock/testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

var epoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

type podShape struct {
	name       string
	node       string
	phase      string
	ready      bool
	readySince time.Duration // after epoch
	restarts   int32
	created    time.Duration // after epoch
}

func makePod(s podShape) *capstanv1.Pod {
	pod := &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Name: s.name, CreateTime: timestamppb.New(epoch.Add(s.created))},
		Spec:     &capstanv1.PodSpec{NodeName: s.node},
		Status: &capstanv1.PodStatus{
			Phase:             s.phase,
			ContainerStatuses: []*capstanv1.ContainerStatus{{Name: "main", RestartCount: s.restarts}},
		},
	}
	if s.ready {
		pod.Status.Conditions = []*capstanv1.Condition{{
			Type: wellknown.PodReady, Status: wellknown.ConditionTrue,
			LastTransitionTime: timestamppb.New(epoch.Add(s.readySince)),
		}}
	}
	return pod
}

func TestPodsToDeleteOrder(t *testing.T) {
	tests := []struct {
		name string
		pods []podShape // in the order they should be deleted
	}{
		{"unassigned before assigned", []podShape{
			{name: "a", phase: wellknown.PodPending},
			{name: "b", node: "n", phase: wellknown.PodPending},
		}},
		{"pending before unknown before running", []podShape{
			{name: "a", node: "n", phase: wellknown.PodPending},
			{name: "b", node: "n", phase: wellknown.PodUnknown},
			{name: "c", node: "n", phase: wellknown.PodRunning},
		}},
		{"not ready before ready", []podShape{
			{name: "a", node: "n", phase: wellknown.PodRunning},
			{name: "b", node: "n", phase: wellknown.PodRunning, ready: true},
		}},
		{"ready more recently first", []podShape{
			{name: "a", node: "n", phase: wellknown.PodRunning, ready: true, readySince: time.Hour},
			{name: "b", node: "n", phase: wellknown.PodRunning, ready: true, readySince: time.Minute},
		}},
		{"more restarts first", []podShape{
			{name: "a", node: "n", phase: wellknown.PodRunning, restarts: 3},
			{name: "b", node: "n", phase: wellknown.PodRunning, restarts: 1},
		}},
		{"newest first", []podShape{
			{name: "a", node: "n", phase: wellknown.PodRunning, created: time.Hour},
			{name: "b", node: "n", phase: wellknown.PodRunning, created: time.Minute},
			{name: "c", node: "n", phase: wellknown.PodRunning},
		}},
		{"placement outranks age and readiness", []podShape{
			{name: "a", phase: wellknown.PodPending},
			{name: "b", node: "n", phase: wellknown.PodRunning, ready: true, created: time.Hour},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pods []*capstanv1.Pod
			var want []string
			for _, s := range tt.pods {
				pods = append(pods, makePod(s))
				want = append(want, s.name)
			}
			for i := range 3 { // whatever the input order
				shuffled := slices.Clone(pods)
				slices.Reverse(shuffled)
				if i == 1 {
					shuffled = append(shuffled[1:], shuffled[0])
				}
				got := podNamesOf(podsToDelete(shuffled, len(shuffled)))
				if !slices.Equal(got, want) {
					t.Errorf("deletion order = %v, want %v", got, want)
				}
			}
		})
	}
}

func TestSlowStartBatch(t *testing.T) {
	tests := []struct {
		name        string
		count       int
		failAt      int // -1: never
		wantStarted int
		wantBatches []int
	}{
		{"none", 0, -1, 0, nil},
		{"all succeed", 10, -1, 10, []int{1, 2, 4, 3}},
		{"first fails", 10, 0, 1, []int{1}},
		{"stops after the failing batch", 10, 4, 7, []int{1, 2, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			calls := map[int]bool{}
			started, err := slowStartBatch(tt.count, func(i int) error {
				mu.Lock()
				calls[i] = true
				mu.Unlock()
				if i == tt.failAt {
					return errors.New("boom")
				}
				return nil
			})
			if started != tt.wantStarted || len(calls) != tt.wantStarted {
				t.Errorf("started %d (%d calls), want %d", started, len(calls), tt.wantStarted)
			}
			if (err != nil) != (tt.failAt >= 0) {
				t.Errorf("err = %v", err)
			}
			for i := range started {
				if !calls[i] {
					t.Errorf("call %d missing", i)
				}
			}
		})
	}
}

func TestCalculateStatus(t *testing.T) {
	now := epoch.Add(time.Hour)
	replicas := int32(3)
	rs := &capstanv1.ReplicaSet{
		Metadata: &capstanv1.ObjectMeta{Name: "web", Generation: 4},
		Spec: &capstanv1.ReplicaSetSpec{
			Replicas:        &replicas,
			MinReadySeconds: 60,
			Template:        &capstanv1.PodTemplateSpec{Metadata: &capstanv1.ObjectMeta{Labels: map[string]string{"app": "web", "tier": "fe"}}},
		},
	}
	labeled := func(p *capstanv1.Pod, labels map[string]string) *capstanv1.Pod { p.Metadata.Labels = labels; return p }
	full := map[string]string{"app": "web", "tier": "fe", "extra": "x"}
	pods := []*capstanv1.Pod{
		labeled(makePod(podShape{name: "old-ready", ready: true}), full),                                         // available
		labeled(makePod(podShape{name: "new-ready", ready: true, readySince: time.Hour - 10*time.Second}), full), // ready, available in 50 s
		labeled(makePod(podShape{name: "not-ready"}), map[string]string{"app": "web"}),                           // partly labeled
	}
	status, next := calculateStatus(rs, pods, nil, now)
	if status.GetReplicas() != 3 || status.GetFullyLabeledReplicas() != 2 || status.GetReadyReplicas() != 2 ||
		status.GetAvailableReplicas() != 1 || status.GetObservedGeneration() != 4 || len(status.GetConditions()) != 0 {
		t.Errorf("status = %v", status)
	}
	if want := now.Add(50 * time.Second); !next.Equal(want) {
		t.Errorf("next available at %v, want %v", next, want)
	}

	failed := &manageError{reason: ReasonFailedCreate, err: errors.New("quota exceeded")}
	status, _ = calculateStatus(rs, pods, failed, now)
	if len(status.GetConditions()) != 1 {
		t.Fatalf("conditions = %v, want ReplicaFailure", status.GetConditions())
	}
	cond := status.GetConditions()[0]
	if cond.GetType() != wellknown.ReplicaSetReplicaFailure || cond.GetStatus() != wellknown.ConditionTrue ||
		cond.GetReason() != ReasonFailedCreate || !strings.Contains(cond.GetMessage(), "quota") {
		t.Errorf("condition = %v", cond)
	}

	// A second failure keeps the first condition; success removes it.
	rs.Status = status
	again, _ := calculateStatus(rs, pods, &manageError{reason: ReasonFailedDelete, err: errors.New("other")}, now.Add(time.Minute))
	if len(again.GetConditions()) != 1 || again.GetConditions()[0].GetReason() != ReasonFailedCreate {
		t.Errorf("conditions after a second failure = %v", again.GetConditions())
	}
	cleared, _ := calculateStatus(rs, pods, nil, now)
	if len(cleared.GetConditions()) != 0 {
		t.Errorf("conditions after success = %v", cleared.GetConditions())
	}
	if len(rs.GetStatus().GetConditions()) != 1 {
		t.Error("calculateStatus changed the ReplicaSet it was given")
	}
}

func TestExpectations(t *testing.T) {
	clk := clocktesting.NewFakeClock(epoch)
	e := newExpectations(clk, time.Minute)
	if ok, expired, _ := e.satisfied("ns/rs"); !ok || expired {
		t.Fatal("nothing expected, yet not satisfied")
	}
	e.expectCreations("ns/rs", []string{"a", "b"})
	e.expectDeletions("ns/rs", []string{"c"})
	e.creationObserved("ns/rs", "a")
	e.creationObserved("ns/rs", "someone-elses") // not one of ours: no effect
	e.deletionObserved("ns/rs", "c")
	clk.Step(10 * time.Second)
	if ok, _, wait := e.satisfied("ns/rs"); ok || wait != 50*time.Second {
		t.Fatalf("b is still expected, yet satisfied = %v (expiring in %v, want 50s)", ok, wait)
	}
	if c, d := e.pending("ns/rs"); c != 1 || d != 0 {
		t.Fatalf("pending = %d creates, %d deletes; want 1, 0", c, d)
	}
	e.creationObserved("ns/rs", "b")
	if ok, expired, _ := e.satisfied("ns/rs"); !ok || expired {
		t.Fatal("everything observed, yet not satisfied")
	}

	e.expectCreations("ns/rs", []string{"x"})
	clk.Step(time.Minute + time.Second)
	if ok, expired, _ := e.satisfied("ns/rs"); !ok || !expired {
		t.Fatalf("satisfied = %v, expired = %v after the timeout; want true, true", ok, expired)
	}
	if ok, expired, _ := e.satisfied("ns/rs"); !ok || expired {
		t.Fatal("an expiry is reported once, then forgotten")
	}
}

func TestNewPodNameIsValid(t *testing.T) {
	for _, rsName := range []string{"web", strings.Repeat("a", 246) + ".b", strings.Repeat("a", 253)} {
		name := newPodName(rsName)
		if errs := k8svalidation.IsDNS1123Subdomain(name); len(errs) > 0 {
			t.Errorf("pod name %q is invalid: %v", name, errs)
		}
		if len(rsName) < 100 && (!strings.HasPrefix(name, rsName+"-") || len(name) != len(rsName)+6) {
			t.Errorf("pod name %q is not %s-<5 characters>", name, rsName)
		}
	}
}

func TestUnsettledNamesAreReusedOnce(t *testing.T) {
	c := &Controller{unsettled: map[string]map[string]bool{}}
	c.unsettle("ns/web", "web-abcde")
	c.unsettle("ns/web", "web-fghjk")
	c.settle("ns/web", "web-fghjk")
	if got := c.takeUnsettled("ns/web", 3); !slices.Equal(got, []string{"web-abcde"}) {
		t.Fatalf("takeUnsettled = %v, want [web-abcde]", got)
	}
	if got := c.takeUnsettled("ns/web", 3); len(got) != 0 {
		t.Fatalf("takeUnsettled again = %v, want none", got)
	}
}
