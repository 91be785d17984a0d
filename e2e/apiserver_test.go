package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
)

// TestWriteOnOneReplicaIsReadOnEveryOther proves that the replicas share one
// store: an object created through any replica is read, by Get and by
// List, on each other replica with the same resource_version and the same
// content. Each replica is dialled alone, so no balancing hides which
// replica answered.
func TestWriteOnOneReplicaIsReadOnEveryOther(t *testing.T) {
	c := sharedCluster(t)
	const ns = "e2e-replicas"
	clients := make([]*client.Client, len(c.addrs))
	for i, addr := range c.addrs {
		clients[i] = clientOf(t, addr)
	}
	for writer := range clients {
		name := fmt.Sprintf("written-on-%d", writer+1)
		ctx, cancel := callCtx(t)
		created, err := clients[writer].ConfigMaps().CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{
			ConfigMap: configMap(ns, name, map[string]string{"writer": c.names[writer]}),
		})
		cancel()
		if err != nil {
			t.Fatalf("create %s through %s: %v", name, c.names[writer], err)
		}
		want := created.GetConfigMap()
		if want.GetMetadata().GetResourceVersion() == 0 || want.GetMetadata().GetUid() == "" {
			t.Fatalf("create through %s returned no resource_version or uid: %v", c.names[writer], want)
		}
		for reader := range clients {
			if reader == writer {
				continue
			}
			ctx, cancel := callCtx(t)
			got, err := clients[reader].ConfigMaps().GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Namespace: ns, Name: name})
			if err != nil {
				cancel()
				t.Fatalf("get %s (written on %s) on %s: %v", name, c.names[writer], c.names[reader], err)
			}
			if !proto.Equal(got.GetConfigMap(), want) {
				t.Errorf("%s written on %s reads differently on %s:\n got  %v\n want %v", name, c.names[writer], c.names[reader], got.GetConfigMap(), want)
			}
			list, err := clients[reader].ConfigMaps().ListConfigMaps(ctx, &capstanv1.ListConfigMapsRequest{Namespace: ns, FieldSelector: "metadata.name=" + name})
			cancel()
			if err != nil {
				t.Fatalf("list %s on %s: %v", name, c.names[reader], err)
			}
			if len(list.GetConfigMaps()) != 1 || !proto.Equal(list.GetConfigMaps()[0], want) {
				t.Errorf("list on %s: got %v, want exactly %v", c.names[reader], list.GetConfigMaps(), want)
			}
			if list.GetResourceVersion() < want.GetMetadata().GetResourceVersion() {
				t.Errorf("list on %s read at revision %d, before the write at %d", c.names[reader], list.GetResourceVersion(), want.GetMetadata().GetResourceVersion())
			}
		}
	}
}

// TestConcurrentUpdatesWithOneVersionThroughDifferentReplicas proves the
// optimistic concurrency of Update across replicas: several writers, two
// per replica, each dialled to its replica alone, update one object from
// the same resource_version at the same moment; exactly one succeeds, every
// other gets ABORTED (reason CONFLICT), and the stored object is the
// winner's. Several rounds, each from the version the last one left.
func TestConcurrentUpdatesWithOneVersionThroughDifferentReplicas(t *testing.T) {
	c := sharedCluster(t)
	const (
		ns                = "e2e-conflict"
		name              = "contended"
		writersPerReplica = 2
		rounds            = 5
	)
	clients := make([]*client.Client, len(c.addrs))
	for i, addr := range c.addrs {
		clients[i] = clientOf(t, addr)
	}
	ctx, cancel := callCtx(t)
	created, err := clients[0].ConfigMaps().CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: configMap(ns, name, map[string]string{"writer": "none"})})
	cancel()
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	current := created.GetConfigMap()

	for round := 1; round <= rounds; round++ {
		type outcome struct {
			writer string
			obj    *capstanv1.ConfigMap
			err    error
		}
		var (
			wg       sync.WaitGroup
			start    = make(chan struct{})
			outcomes = make(chan outcome, len(clients)*writersPerReplica)
		)
		for i, cl := range clients {
			for j := range writersPerReplica {
				writer := fmt.Sprintf("%s/%d/round-%d", c.names[i], j, round)
				update := proto.CloneOf(current)
				update.Data = map[string]string{"writer": strings.ReplaceAll(writer, "/", ".")}
				wg.Go(func() {
					ctx, cancel := callCtx(t)
					defer cancel()
					<-start
					resp, err := cl.ConfigMaps().UpdateConfigMap(ctx, &capstanv1.UpdateConfigMapRequest{ConfigMap: update})
					outcomes <- outcome{writer: writer, obj: resp.GetConfigMap(), err: err}
				})
			}
		}
		close(start)
		wg.Wait()
		close(outcomes)

		var winners []outcome
		for o := range outcomes {
			switch {
			case o.err == nil:
				winners = append(winners, o)
			case apierrors.Code(o.err) != codes.Aborted || !apierrors.IsConflict(o.err):
				t.Errorf("round %d: %s: got %v (reason %q), want success or ABORTED with reason %s", round, o.writer, o.err, apierrors.Reason(o.err), apierrors.ReasonConflict)
			}
		}
		if len(winners) != 1 {
			t.Fatalf("round %d: %d updates from version %d succeeded, want exactly 1: %v", round, len(winners), current.GetMetadata().GetResourceVersion(), winners)
		}
		won := winners[0].obj
		if won.GetMetadata().GetResourceVersion() <= current.GetMetadata().GetResourceVersion() {
			t.Fatalf("round %d: the winner's version %d is not after %d", round, won.GetMetadata().GetResourceVersion(), current.GetMetadata().GetResourceVersion())
		}
		for i, cl := range clients {
			ctx, cancel := callCtx(t)
			got, err := cl.ConfigMaps().GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Namespace: ns, Name: name})
			cancel()
			if err != nil {
				t.Fatalf("round %d: get on %s: %v", round, c.names[i], err)
			}
			if !proto.Equal(got.GetConfigMap(), won) {
				t.Fatalf("round %d: %s stores %v, want the winner's (%s) %v", round, c.names[i], got.GetConfigMap(), winners[0].writer, won)
			}
		}
		current = won
	}
}

// TestBadInputThroughTheRealBinary proves that the binary rejects bad
// requests with the documented codes, on every replica, and keeps serving
// afterwards: an oversize request is RESOURCE_EXHAUSTED, an invalid name is
// INVALID_ARGUMENT naming metadata.name, an unknown field selector is
// INVALID_ARGUMENT naming field_selector, and an update from a stale version
// is ABORTED (reason CONFLICT).
func TestBadInputThroughTheRealBinary(t *testing.T) {
	c := sharedCluster(t)
	const ns = "e2e-bad-input"
	for i, addr := range c.addrs {
		t.Run(c.names[i], func(t *testing.T) {
			cl := clientOf(t, addr)
			cms := cl.ConfigMaps()

			// The stale version: an update moves the object past v1.
			ctx, cancel := callCtx(t)
			defer cancel()
			v1, err := cms.CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: configMap(ns, "stale-"+c.names[i], map[string]string{"v": "1"})})
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			v2 := proto.CloneOf(v1.GetConfigMap())
			v2.Data = map[string]string{"v": "2"}
			if _, err := cms.UpdateConfigMap(ctx, &capstanv1.UpdateConfigMapRequest{ConfigMap: v2}); err != nil {
				t.Fatalf("update: %v", err)
			}

			tests := []struct {
				name       string
				call       func(ctx context.Context) error
				wantCode   codes.Code
				wantReason string
				wantField  string
			}{
				{
					name: "request over the size limit",
					call: func(ctx context.Context) error {
						_, err := cms.CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: &capstanv1.ConfigMap{
							Metadata: &capstanv1.ObjectMeta{
								Namespace:   ns,
								Name:        "oversize",
								Annotations: map[string]string{"blob": strings.Repeat("x", 2<<20)},
							},
						}})
						return err
					},
					wantCode: codes.ResourceExhausted,
				},
				{
					name: "invalid name",
					call: func(ctx context.Context) error {
						_, err := cms.CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: configMap(ns, "Not_A_Valid/Name", nil)})
						return err
					},
					wantCode:   codes.InvalidArgument,
					wantReason: apierrors.ReasonFieldInvalid,
					wantField:  "metadata.name",
				},
				{
					name: "unknown field in the field selector",
					call: func(ctx context.Context) error {
						_, err := cms.ListConfigMaps(ctx, &capstanv1.ListConfigMapsRequest{Namespace: ns, FieldSelector: "spec.no_such_field=x"})
						return err
					},
					wantCode:   codes.InvalidArgument,
					wantReason: apierrors.ReasonFieldInvalid,
					wantField:  "field_selector",
				},
				{
					name: "update from a stale version",
					call: func(ctx context.Context) error {
						stale := proto.CloneOf(v1.GetConfigMap())
						stale.Data = map[string]string{"v": "from-the-past"}
						_, err := cms.UpdateConfigMap(ctx, &capstanv1.UpdateConfigMapRequest{ConfigMap: stale})
						return err
					},
					wantCode:   codes.Aborted,
					wantReason: apierrors.ReasonConflict,
				},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					ctx, cancel := callCtx(t)
					defer cancel()
					err := tt.call(ctx)
					if got := apierrors.Code(err); got != tt.wantCode {
						t.Fatalf("got %v, want code %v", err, tt.wantCode)
					}
					if tt.wantReason != "" && apierrors.Reason(err) != tt.wantReason {
						t.Errorf("reason %q, want %q (error: %v)", apierrors.Reason(err), tt.wantReason, err)
					}
					if tt.wantField != "" && !strings.Contains(apierrors.Field(err), tt.wantField) {
						t.Errorf("the error names field %q, want one containing %q (error: %v)", apierrors.Field(err), tt.wantField, err)
					}
				})
			}

			// Still serving: healthy, and a good write and read succeed.
			if st, err := healthOf(t.Context(), rawConn(t, addr)); err != nil || st != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("health after the bad requests: %v %v, want SERVING", st, err)
			}
			created, err := cms.CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: configMap(ns, "after-"+c.names[i], map[string]string{"ok": "yes"})})
			if err != nil {
				t.Fatalf("create after the bad requests: %v", err)
			}
			got, err := cms.GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Namespace: ns, Name: "after-" + c.names[i]})
			if err != nil || !proto.Equal(got.GetConfigMap(), created.GetConfigMap()) {
				t.Fatalf("get after the bad requests: %v %v, want %v", got.GetConfigMap(), err, created.GetConfigMap())
			}
		})
	}
}

// TestReflectionAndHealthOnEveryReplica proves that every replica can be
// explored with nothing but its address: `grpcurl -plaintext ADDR list`
// (the pinned tool from tools/go.mod) lists every capstan.v1 service, the
// reflection API lists them too, and grpc.health.v1 Check says SERVING.
func TestReflectionAndHealthOnEveryReplica(t *testing.T) {
	c := sharedCluster(t)
	want := []string{"capstan.v1.ClusterService", "grpc.health.v1.Health"}
	for _, k := range resource.All() {
		want = append(want, string(k.Service().FullName()))
	}
	slices.Sort(want)

	grpcurl := grpcurlCommand(t)
	for i, addr := range c.addrs {
		t.Run(c.names[i], func(t *testing.T) {
			conn := rawConn(t, addr)
			if st, err := healthOf(t.Context(), conn); err != nil || st != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("grpc.health.v1 Check: %v %v, want SERVING", st, err)
			}

			listed := reflectionServices(t, conn)
			for _, svc := range want {
				if !slices.Contains(listed, svc) {
					t.Errorf("reflection does not list %s; it lists %v", svc, listed)
				}
			}

			if grpcurl == nil {
				return
			}
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			args := append(slices.Clone(grpcurl.args), "-plaintext", addr, "list")
			cmd := exec.CommandContext(ctx, grpcurl.path, args...)
			cmd.Dir = grpcurl.dir
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("grpcurl -plaintext %s list: %v\n%s", addr, err, out)
			}
			lines := strings.Fields(string(out))
			for _, svc := range want {
				if !slices.Contains(lines, svc) {
					t.Errorf("grpcurl list does not show %s; it shows:\n%s", svc, out)
				}
			}
		})
	}
}

type command struct {
	path string
	args []string
	dir  string
}

// grpcurlCommand is how to run the pinned grpcurl from the module root, or
// nil when it cannot be run within a minute (for example a cold build
// cache without the tool's modules): the test then relies on the
// reflection client alone, which checks the same thing.
func grpcurlCommand(t *testing.T) *command {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Logf("no go command, so no grpcurl: checking with the reflection client only: %v", err)
		return nil
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	gomod, err := exec.CommandContext(ctx, goTool, "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" {
		t.Logf("cannot find the module root, so no grpcurl: checking with the reflection client only: %v", err)
		return nil
	}
	cmd := &command{path: goTool, args: []string{"tool", "-modfile=tools/go.mod", "grpcurl"}, dir: filepath.Dir(strings.TrimSpace(string(gomod)))}
	// The first run builds the tool; a version check tells whether it runs.
	check := exec.CommandContext(ctx, cmd.path, append(slices.Clone(cmd.args), "-version")...)
	check.Dir = cmd.dir
	if out, err := check.CombinedOutput(); err != nil {
		t.Logf("grpcurl cannot be run (%v), checking with the reflection client only:\n%s", err, out)
		return nil
	}
	return cmd
}

// reflectionServices lists the services a replica exposes through
// grpc.reflection.v1.
func reflectionServices(t *testing.T, conn grpc.ClientConnInterface) []string {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatalf("open the reflection stream: %v", err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"},
	}); err != nil {
		t.Fatalf("reflection ListServices: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection ListServices: %v", err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatalf("close the reflection stream: %v", err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	return names
}
