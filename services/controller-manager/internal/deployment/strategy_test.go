package deployment

import (
	"fmt"
	"strconv"
	"testing"

	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

func rollingDeployment(replicas int32, surge, unavailable string) *capstanv1.Deployment {
	d := newDeployment("d", new(replicas), &capstanv1.DeploymentStrategy{
		RollingUpdate: &capstanv1.RollingUpdateDeployment{MaxSurge: surge, MaxUnavailable: unavailable},
	}, "/bin/true")
	return d
}

func TestFenceposts(t *testing.T) {
	for _, tc := range []struct {
		replicas           int32
		surge, unavailable string
		wantSurge, wantUn  int32
	}{
		{10, "", "", 3, 2},        // 25% of 10: 2.5 up and down
		{4, "", "", 1, 1},         // exact
		{1, "", "", 1, 0},         // 0.25 up and down
		{1, "0%", "25%", 0, 1},    // both round to 0: unavailable becomes 1
		{3, "1", "0", 1, 0},       // counts
		{3, "0", "5", 0, 3},       // unavailable capped at replicas
		{0, "25%", "25%", 0, 0},   // nothing to roll
		{7, "100%", "100%", 7, 7}, // whole
	} {
		t.Run(fmt.Sprintf("%d,%q,%q", tc.replicas, tc.surge, tc.unavailable), func(t *testing.T) {
			d := rollingDeployment(tc.replicas, tc.surge, tc.unavailable)
			if got := maxSurge(d); got != tc.wantSurge {
				t.Errorf("maxSurge = %d, want %d", got, tc.wantSurge)
			}
			if got := maxUnavailable(d); got != tc.wantUn {
				t.Errorf("maxUnavailable = %d, want %d", got, tc.wantUn)
			}
		})
	}
	recreate := newDeployment("d", new(int32(5)), &capstanv1.DeploymentStrategy{Type: wellknown.StrategyRecreate}, "/bin/true")
	if s, u := maxSurge(recreate), maxUnavailable(recreate); s != 0 || u != 0 {
		t.Errorf("Recreate: surge %d, unavailable %d; want 0, 0", s, u)
	}
}

func TestTemplateHash(t *testing.T) {
	base := newDeployment("d", nil, nil, "/bin/sleep", "1").GetSpec().GetTemplate()
	withLabel := proto.Clone(base).(*capstanv1.PodTemplateSpec)
	withLabel.Metadata.Labels[wellknown.LabelPodTemplateHash] = "anything"
	other := proto.Clone(base).(*capstanv1.PodTemplateSpec)
	other.Spec.Containers[0].Command = []string{"/bin/sleep", "2"}

	h := templateHash(base)
	if templateHash(withLabel) != h {
		t.Errorf("the pod-template-hash label changes the hash")
	}
	if !equalIgnoringHash(base, withLabel) {
		t.Errorf("templates differing only in pod-template-hash are not equal")
	}
	if templateHash(other) == h || equalIgnoringHash(base, other) {
		t.Errorf("another command gives the same hash or compares equal")
	}
	for _, r := range h {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9') {
			t.Errorf("hash %q is not a valid label value and name suffix", h)
		}
	}
}

func replicaSetOf(size int32, maxReplicasAnnotation int32) *capstanv1.ReplicaSet {
	rs := &capstanv1.ReplicaSet{Metadata: &capstanv1.ObjectMeta{Annotations: map[string]string{}}, Spec: &capstanv1.ReplicaSetSpec{Replicas: new(size)}}
	if maxReplicasAnnotation > 0 {
		rs.Metadata.Annotations[annotationMaxReplicas] = strconv.Itoa(int(maxReplicasAnnotation))
	}
	return rs
}

func TestNewReplicaSetSize(t *testing.T) {
	for _, tc := range []struct {
		name      string
		d         *capstanv1.Deployment
		old, next int32
		want      int32
	}{
		{"room for the surge", rollingDeployment(4, "1", "1"), 4, 0, 1},
		{"at the cap", rollingDeployment(4, "1", "1"), 4, 1, 1},
		{"old shrunk", rollingDeployment(4, "1", "1"), 2, 2, 3},
		{"never above replicas", rollingDeployment(4, "3", "1"), 0, 2, 4},
		{"bigger surge", rollingDeployment(10, "", ""), 10, 0, 3},
		{"recreate takes all", newDeployment("d", new(int32(3)), &capstanv1.DeploymentStrategy{Type: wellknown.StrategyRecreate}, "/bin/true"), 0, 0, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			newRS := replicaSetOf(tc.next, 0)
			all := []*capstanv1.ReplicaSet{replicaSetOf(tc.old, 0), newRS}
			if got := newReplicaSetSize(tc.d, all, newRS); got != tc.want {
				t.Errorf("newReplicaSetSize = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestProportion(t *testing.T) {
	grow := rollingDeployment(8, "1", "1")   // 4 -> 8 replicas: the maximum goes from 5 to 9
	shrink := rollingDeployment(4, "1", "1") // 9 -> 4 replicas: from 10 to 5
	for _, tc := range []struct {
		name                          string
		d                             *capstanv1.Deployment
		size, maxBefore, toAdd, added int32
		want                          int32
	}{
		{"grow rounds down", grow, 3, 5, 4, 0, 2},         // 3*9/5 = 5.4 -> 5
		{"grow rounds up", grow, 2, 5, 4, 2, 2},           // 2*9/5 = 3.6 -> 4
		{"grow within what is left", grow, 2, 5, 4, 3, 1}, // only 1 left to hand out
		{"empty never grows", grow, 0, 5, 4, 0, 0},        // proportional scaling never starts from 0
		{"shrink", shrink, 6, 10, -5, 0, -3},              // 6*5/10 = 3
		{"shrink within what is left", shrink, 6, 10, -5, -4, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := proportion(replicaSetOf(tc.size, tc.maxBefore), tc.d, tc.toAdd, tc.added); got != tc.want {
				t.Errorf("proportion = %d, want %d", got, tc.want)
			}
		})
	}
	if got := proportion(replicaSetOf(3, 5), rollingDeployment(0, "1", "1"), -3, 0); got != -3 {
		t.Errorf("scaling to 0: proportion %d, want -3", got)
	}
}
