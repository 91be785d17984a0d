package agent_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/node-agent/internal/agent"
	"github.com/capstan-dev/capstan/services/node-agent/internal/runtime"
)

// Container states for the table below.
func running(ready bool) *capstanv1.ContainerStatus {
	return &capstanv1.ContainerStatus{Ready: ready, Started: true, State: &capstanv1.ContainerState{Running: &capstanv1.ContainerStateRunning{}}}
}

func exited(code int32) *capstanv1.ContainerStatus {
	return &capstanv1.ContainerStatus{State: &capstanv1.ContainerState{Terminated: &capstanv1.ContainerStateTerminated{ExitCode: code}}}
}

func waiting() *capstanv1.ContainerStatus {
	return &capstanv1.ContainerStatus{State: &capstanv1.ContainerState{Waiting: &capstanv1.ContainerStateWaiting{Reason: "ContainerCreating"}}}
}

func backingOff(lastExit int32) *capstanv1.ContainerStatus {
	return &capstanv1.ContainerStatus{
		RestartCount: 1,
		State:        &capstanv1.ContainerState{Waiting: &capstanv1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}},
		LastState:    &capstanv1.ContainerState{Terminated: &capstanv1.ContainerStateTerminated{ExitCode: lastExit}},
	}
}

func TestComposePodStatusPhaseAndReadiness(t *testing.T) {
	for _, tc := range []struct {
		name       string
		policy     string
		containers []*capstanv1.ContainerStatus // nil entry: the runtime reports nothing yet
		phase      string
		ready      string
	}{
		{"one starting", "", []*capstanv1.ContainerStatus{running(true), waiting()}, wellknown.PodPending, wellknown.ConditionFalse},
		{"not reported yet", "", []*capstanv1.ContainerStatus{running(true), nil}, wellknown.PodPending, wellknown.ConditionFalse},
		{"all running and ready", "", []*capstanv1.ContainerStatus{running(true), running(true)}, wellknown.PodRunning, wellknown.ConditionTrue},
		{"running, one unready", "", []*capstanv1.ContainerStatus{running(true), running(false)}, wellknown.PodRunning, wellknown.ConditionFalse},
		{"one done, one running", wellknown.RestartNever, []*capstanv1.ContainerStatus{exited(0), running(true)}, wellknown.PodRunning, wellknown.ConditionFalse},
		{"crash loop, Always", wellknown.RestartAlways, []*capstanv1.ContainerStatus{backingOff(1)}, wellknown.PodRunning, wellknown.ConditionFalse},
		{"all exited 0, Always", wellknown.RestartAlways, []*capstanv1.ContainerStatus{exited(0)}, wellknown.PodRunning, wellknown.ConditionFalse},
		{"all exited 0, OnFailure", wellknown.RestartOnFailure, []*capstanv1.ContainerStatus{exited(0), exited(0)}, wellknown.PodSucceeded, wellknown.ConditionFalse},
		{"all exited 0, Never", wellknown.RestartNever, []*capstanv1.ContainerStatus{exited(0)}, wellknown.PodSucceeded, wellknown.ConditionFalse},
		{"one failed, Never", wellknown.RestartNever, []*capstanv1.ContainerStatus{exited(0), exited(2)}, wellknown.PodFailed, wellknown.ConditionFalse},
		{"one failed, OnFailure", wellknown.RestartOnFailure, []*capstanv1.ContainerStatus{exited(0), backingOff(2)}, wellknown.PodRunning, wellknown.ConditionFalse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &capstanv1.Pod{
				Metadata: &capstanv1.ObjectMeta{Name: "p", Namespace: "default", Uid: "u", Generation: 3},
				Spec:     &capstanv1.PodSpec{RestartPolicy: tc.policy},
			}
			observed := &runtime.PodStatus{StartTime: time.Unix(100, 0)}
			for i, c := range tc.containers {
				name := string(rune('a' + i))
				pod.Spec.Containers = append(pod.Spec.Containers, &capstanv1.Container{Name: name})
				if c != nil {
					c.Name = name
					observed.Containers = append(observed.Containers, c)
				}
			}
			got := agent.ComposePodStatus(pod, observed, nil, "10.0.0.7", time.Unix(200, 0))
			if got.GetPhase() != tc.phase {
				t.Errorf("phase %s, want %s", got.GetPhase(), tc.phase)
			}
			if r := condition(got.GetConditions(), wellknown.PodReady); r.GetStatus() != tc.ready {
				t.Errorf("Ready %s, want %s", r.GetStatus(), tc.ready)
			}
			if got.GetHostIp() != "10.0.0.7" || got.GetPodIp() != "10.0.0.7" || got.GetObservedGeneration() != 3 {
				t.Errorf("host_ip %q pod_ip %q observed_generation %d", got.GetHostIp(), got.GetPodIp(), got.GetObservedGeneration())
			}
			if got.GetStartTime().AsTime() != time.Unix(100, 0).UTC() {
				t.Errorf("start_time %v", got.GetStartTime().AsTime())
			}
			if len(got.GetContainerStatuses()) != len(tc.containers) {
				t.Errorf("%d container statuses, want %d", len(got.GetContainerStatuses()), len(tc.containers))
			}
			if s := condition(got.GetConditions(), wellknown.PodScheduled); s.GetStatus() != wellknown.ConditionTrue {
				t.Errorf("PodScheduled %v", s)
			}
		})
	}
}

// Unchanged conditions keep their transition times and the start time
// stays, so a status composed again later is equal (nothing to write).
func TestComposePodStatusIsStable(t *testing.T) {
	pod := &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Name: "p", Uid: "u", Generation: 1},
		Spec:     &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "a"}}},
	}
	observed := &runtime.PodStatus{Containers: []*capstanv1.ContainerStatus{running(true)}, StartTime: time.Unix(100, 0)}
	observed.Containers[0].Name = "a"
	first := agent.ComposePodStatus(pod, observed, &capstanv1.PodStatus{Phase: "Pending", Conditions: []*capstanv1.Condition{{
		Type: wellknown.PodScheduled, Status: wellknown.ConditionTrue, Reason: "Scheduled", LastTransitionTime: timestamppb.New(time.Unix(50, 0)),
	}}}, "10.0.0.7", time.Unix(200, 0))
	if s := condition(first.GetConditions(), wellknown.PodScheduled); s.GetReason() != "Scheduled" || s.GetLastTransitionTime().AsTime() != time.Unix(50, 0).UTC() {
		t.Fatalf("PodScheduled %v: want the scheduler's reason and time kept", s)
	}
	second := agent.ComposePodStatus(pod, observed, first, "10.0.0.7", time.Unix(300, 0))
	if !agent.PodStatusEqual(first, second) {
		t.Fatalf("composed again:\n%v\nfirst:\n%v", second, first)
	}
	if r := condition(second.GetConditions(), wellknown.PodReady); r.GetLastTransitionTime().AsTime() != time.Unix(200, 0).UTC() {
		t.Fatalf("Ready moved its transition time: %v", r)
	}
	observed.Containers[0].Ready = false
	third := agent.ComposePodStatus(pod, observed, second, "10.0.0.7", time.Unix(400, 0))
	if agent.PodStatusEqual(second, third) {
		t.Fatal("a container turning unready made no difference")
	}
}

func condition(conds []*capstanv1.Condition, typ string) *capstanv1.Condition {
	for _, c := range conds {
		if c.GetType() == typ {
			return c
		}
	}
	return nil
}
