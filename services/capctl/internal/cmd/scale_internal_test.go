package cmd

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

// racingStore is the real client with another writer in front of Update:
// for the first races Updates, it changes the object first (through the
// real API), so the update scale sends carries a stale resource_version
// and the server answers ABORTED.
type racingStore struct {
	*client.Client
	t     *testing.T
	races int
	// race is the other writer's change.
	race  func(ctx context.Context, d *capstanv1.Deployment) error
	raced int
}

func (s *racingStore) Update(ctx context.Context, obj resource.Object) (resource.Object, error) {
	if s.raced < s.races {
		s.raced++
		m := obj.GetMetadata()
		current, err := s.Client.Get(ctx, deploymentKind, m.GetNamespace(), m.GetName())
		if err != nil {
			s.t.Fatalf("racing writer: %v", err)
		}
		if err := s.race(ctx, current.(*capstanv1.Deployment)); err != nil {
			s.t.Fatalf("racing writer: %v", err)
		}
	}
	return s.Client.Update(ctx, obj)
}

func TestScaleRetriesConflicts(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c, err := client.New(client.Config{Endpoints: cluster.Addrs()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Create(ctx, &capstanv1.Deployment{
		Metadata: &capstanv1.ObjectMeta{Name: "web"},
		Spec: &capstanv1.DeploymentSpec{Replicas: proto.Int32(1),
			Selector: &capstanv1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: &capstanv1.PodTemplateSpec{Metadata: &capstanv1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec: &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "web", Command: []string{"/bin/sleep", "3600"}}}}}},
	}); err != nil {
		t.Fatal(err)
	}
	// A controller reporting status: the spec stays as it is.
	statusWriter := func(ctx context.Context, d *capstanv1.Deployment) error {
		d.Status = &capstanv1.DeploymentStatus{ObservedGeneration: d.GetMetadata().GetGeneration(), Replicas: d.GetStatus().GetReplicas() + 1}
		_, err := c.UpdateStatus(ctx, d)
		return err
	}
	// Someone else scaling to 9.
	scaler := func(ctx context.Context, d *capstanv1.Deployment) error {
		d.Spec.Replicas = proto.Int32(9)
		_, err := c.Update(ctx, d)
		return err
	}
	replicas := func() int32 {
		obj, err := c.Get(ctx, deploymentKind, "default", "web")
		if err != nil {
			t.Fatal(err)
		}
		return obj.(*capstanv1.Deployment).GetSpec().GetReplicas()
	}

	tests := []struct {
		name      string
		races     int
		race      func(context.Context, *capstanv1.Deployment) error
		replicas  int32
		current   int32
		wantErr   string
		wantAfter int32
	}{
		{name: "read again after each conflict", races: 3, race: statusWriter, replicas: 7, current: -1, wantAfter: 7},
		{name: "give up after too many", races: scaleConflictRetries, race: statusWriter, replicas: 3, current: -1,
			wantErr: "deployment/web: gave up after 10 conflicting updates", wantAfter: 7},
		{name: "the precondition is checked again after a conflict", races: 1, race: scaler, replicas: 2, current: 7,
			wantErr: "precondition failed: expected replicas of deployment/web to be 7, was 9", wantAfter: 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := &racingStore{Client: c, t: t, races: tt.races, race: tt.race}
			err := scale(ctx, store, deploymentKind, "default", "web", tt.replicas, tt.current)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("scale: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("scale error = %v, want %q", err, tt.wantErr)
			}
			if store.raced != tt.races {
				t.Errorf("%d updates raced, want %d", store.raced, tt.races)
			}
			if got := replicas(); got != tt.wantAfter {
				t.Errorf("spec.replicas = %d, want %d", got, tt.wantAfter)
			}
		})
	}
}
