package cmd

import (
	"context"
	"strings"
	"testing"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

var configMapKind = resource.MustLookup("ConfigMap")

// recreatingDeleter is the real client with another writer in front of
// Delete: it deletes the object and creates it again under the same name
// (through the real API) just before capctl's delete goes out, as if that
// happened after capctl resolved the object, or before a delete that sat
// in a frozen API replica arrived.
type recreatingDeleter struct {
	*client.Client
	t         *testing.T
	recreated resource.Object
}

func (d *recreatingDeleter) Delete(ctx context.Context, kind *resource.Kind, namespace, name string, pre *capstanv1.Preconditions, opts ...client.DeleteOption) (resource.Object, error) {
	if _, err := d.Client.Delete(ctx, kind, namespace, name, nil); err != nil {
		d.t.Fatalf("the other writer's delete: %v", err)
	}
	obj, err := d.Client.Create(ctx, settings("second"))
	if err != nil {
		d.t.Fatalf("the other writer's create: %v", err)
	}
	d.recreated = obj
	return d.Client.Delete(ctx, kind, namespace, name, pre, opts...)
}

func settings(incarnation string) *capstanv1.ConfigMap {
	return &capstanv1.ConfigMap{
		Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: "settings", Labels: map[string]string{"group": "g"}},
		Data:     map[string]string{"incarnation": incarnation},
	}
}

// capctl delete deletes the object it resolved, by name or by selector,
// and never one deleted and created again under that name since: the
// delete carries the uid it resolved.
func TestDeleteSparesAnObjectCreatedAgainUnderItsName(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c, err := client.New(client.Config{Endpoints: cluster.Addrs()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	byName := func() deleteTarget {
		return deleteTarget{kind: configMapKind, namespace: "default", name: "settings"}
	}
	bySelector := func() deleteTarget {
		objs, err := selectObjects(ctx, c, configMapKind, "default", "group=g")
		if err != nil || len(objs) != 1 {
			t.Fatalf("select: %v %v", objs, err)
		}
		return deleteTarget{kind: configMapKind, namespace: "default", name: "settings", uid: objs[0].GetMetadata().GetUid()}
	}
	tests := []struct {
		name   string
		target func() deleteTarget
		race   bool
	}{
		{"by name, no race", byName, false},
		{"by selector, no race", bySelector, false},
		{"by name, created again after the read", byName, true},
		{"by selector, created again after the list", bySelector, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.Create(ctx, settings("first")); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _, _ = c.Delete(context.Background(), configMapKind, "default", "settings", nil) })
			target := tt.target()
			if !tt.race {
				if err := deleteObject(ctx, c, target, nil); err != nil {
					t.Fatalf("delete: %v", err)
				}
				if _, err := c.Get(ctx, configMapKind, "default", "settings"); !apierrors.IsNotFound(err) {
					t.Fatalf("after the delete: %v, want NOT_FOUND", err)
				}
				return
			}
			racer := &recreatingDeleter{Client: c, t: t}
			err := deleteObject(ctx, racer, target, nil)
			if !apierrors.IsConflict(err) {
				t.Fatalf("delete: %v, want ABORTED", err)
			}
			want := `Error from server (Conflict): configmaps "settings" was deleted and created again since capctl read it`
			if got := FormatError(objectError(configMapKind, "settings", err)); !strings.HasPrefix(got, want) {
				t.Errorf("capctl prints %q, want it to start with %q", got, want)
			}
			stored, err := c.Get(ctx, configMapKind, "default", "settings")
			if err != nil {
				t.Fatalf("the object created again was deleted: %v", err)
			}
			if stored.GetMetadata().GetUid() != racer.recreated.GetMetadata().GetUid() {
				t.Errorf("stored uid %s, want the one created again, %s", stored.GetMetadata().GetUid(), racer.recreated.GetMetadata().GetUid())
			}
		})
	}
}
