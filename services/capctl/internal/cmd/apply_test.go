package cmd

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/resource"
)

func TestForUpdate(t *testing.T) {
	created := timestamppb.Now()
	serverMeta := func(m *capstanv1.ObjectMeta) *capstanv1.ObjectMeta {
		m.Uid, m.ResourceVersion, m.Generation, m.CreateTime = "u1", 42, 3, created
		return m
	}
	tests := []struct {
		name             string
		desired, current resource.Object
		want             resource.Object
		unchanged        bool
	}{
		{
			name:    "server-owned metadata and status come from the stored object",
			desired: &capstanv1.Pod{Metadata: &capstanv1.ObjectMeta{Name: "p", Namespace: "default", ResourceVersion: 7, Uid: "stale"}},
			current: &capstanv1.Pod{Metadata: serverMeta(&capstanv1.ObjectMeta{Name: "p", Namespace: "default"}),
				Status: &capstanv1.PodStatus{Phase: "Running"}},
			want: &capstanv1.Pod{Metadata: serverMeta(&capstanv1.ObjectMeta{Name: "p", Namespace: "default"}),
				Status: &capstanv1.PodStatus{Phase: "Running"}},
			unchanged: true,
		},
		{
			name:    "a bound pod stays on its node",
			desired: &capstanv1.Pod{Metadata: &capstanv1.ObjectMeta{Name: "p"}, Spec: &capstanv1.PodSpec{RestartPolicy: "Never"}},
			current: &capstanv1.Pod{Metadata: serverMeta(&capstanv1.ObjectMeta{Name: "p"}), Spec: &capstanv1.PodSpec{NodeName: "n1", RestartPolicy: "Always"}},
			want:    &capstanv1.Pod{Metadata: serverMeta(&capstanv1.ObjectMeta{Name: "p"}), Spec: &capstanv1.PodSpec{NodeName: "n1", RestartPolicy: "Never"}},
		},
		{
			name: "annotations merge, labels replace, owner references are kept",
			desired: &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "c",
				Labels: map[string]string{"new": "1"}, Annotations: map[string]string{"mine": "2", "shared": "mine"}}},
			current: &capstanv1.ConfigMap{Metadata: serverMeta(&capstanv1.ObjectMeta{Name: "c",
				Labels: map[string]string{"old": "1"}, Annotations: map[string]string{"controller": "x", "shared": "theirs"},
				OwnerReferences: []*capstanv1.OwnerReference{{Kind: "Deployment", Name: "d", Uid: "u0"}}})},
			want: &capstanv1.ConfigMap{Metadata: serverMeta(&capstanv1.ObjectMeta{Name: "c",
				Labels: map[string]string{"new": "1"}, Annotations: map[string]string{"controller": "x", "mine": "2", "shared": "mine"},
				OwnerReferences: []*capstanv1.OwnerReference{{Kind: "Deployment", Name: "d", Uid: "u0"}}})},
		},
		{
			name:    "data is the manifest's",
			desired: &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "c"}, Data: map[string]string{"a": "1"}},
			current: &capstanv1.ConfigMap{Metadata: serverMeta(&capstanv1.ObjectMeta{Name: "c"}), Data: map[string]string{"a": "1", "b": "2"}},
			want:    &capstanv1.ConfigMap{Metadata: serverMeta(&capstanv1.ObjectMeta{Name: "c"}), Data: map[string]string{"a": "1"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := forUpdate(tt.desired, tt.current)
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("forUpdate (-want +got):\n%s", diff)
			}
			if same := cmp.Equal(got, tt.current, protocmp.Transform()); same != tt.unchanged {
				t.Errorf("forUpdate result equal to the stored object: %v, want %v", same, tt.unchanged)
			}
		})
	}
}
