package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
)

// TestCompactionEndsWatchesAndInformersRelist proves the "410 Gone"
// contract across the real binaries:
//
//   - a watch from a resource_version that etcd has compacted (clientv3
//     Compact at the current revision, through a member's client URL) ends
//     with OUT_OF_RANGE, reason RESOURCE_VERSION_EXPIRED, and delivers
//     nothing;
//   - an informer whose watch has to resume from a compacted version
//     lists again and ends up with exactly the objects that exist, at
//     their current versions, and its handlers are told about the
//     difference (the deleted object included).
//
// To make the informer's resume meet the compaction, its client is dialled
// to one replica alone, which is SIGKILLed while the objects change and the
// revision is compacted, then started again: the watcher resumes there from
// the last version it saw, which no longer exists. Only a relist can tell
// it that an object was deleted meanwhile.
func TestCompactionEndsWatchesAndInformersRelist(t *testing.T) {
	c := sharedCluster(t)
	c.restoreAfter(t)
	const ns = "e2e-compaction"
	informed := 2 // the replica the informer's client is dialled to
	writer := clientOf(t, c.addrs...)
	cms := writer.ConfigMaps()

	ctx, cancel := callCtx(t)
	defer cancel()
	for _, name := range []string{"doomed", "changed", "kept"} {
		if _, err := cms.CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: configMap(ns, name, map[string]string{"v": "1"})}); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
	}

	inf, err := informer.New(clientOf(t, c.addrs[informed]), configMapKind, informer.Options{Namespace: ns})
	if err != nil {
		t.Fatalf("informer.New: %v", err)
	}
	// handled is the set of objects as the handlers were told about them.
	var (
		handledMu sync.Mutex
		handled   = map[string]int64{}
		deletes   []string
	)
	inf.AddEventHandler(informer.Handler{
		OnAdd: func(obj resource.Object) {
			handledMu.Lock()
			defer handledMu.Unlock()
			handled[obj.GetMetadata().GetName()] = obj.GetMetadata().GetResourceVersion()
		},
		OnUpdate: func(_, obj resource.Object) {
			handledMu.Lock()
			defer handledMu.Unlock()
			handled[obj.GetMetadata().GetName()] = obj.GetMetadata().GetResourceVersion()
		},
		OnDelete: func(obj resource.Object) {
			handledMu.Lock()
			defer handledMu.Unlock()
			delete(handled, obj.GetMetadata().GetName())
			deletes = append(deletes, obj.GetMetadata().GetName())
		},
	})
	runCtx, stopInformer := context.WithCancel(t.Context())
	runDone := make(chan error, 1)
	go func() { runDone <- inf.Run(runCtx) }()
	defer func() {
		stopInformer()
		if err := <-runDone; err != nil {
			t.Errorf("informer Run: %v", err)
		}
	}()
	syncCtx, cancelSync := context.WithTimeout(t.Context(), 30*time.Second)
	synced := inf.WaitForSync(syncCtx)
	cancelSync()
	if !synced {
		t.Fatal("the informer did not sync")
	}
	oldVersion := inf.ResourceVersion()
	if got := cachedVersions(inf); len(got) != 3 {
		t.Fatalf("the informer caches %v, want doomed, changed and kept", got)
	}

	c.kill(t, c.names[informed])

	// Change every kind of thing while the informer cannot see it.
	if _, err := writer.Delete(ctx, configMapKind, ns, "doomed", nil); err != nil {
		t.Fatalf("delete doomed: %v", err)
	}
	changed, err := cms.GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Namespace: ns, Name: "changed"})
	if err != nil {
		t.Fatalf("get changed: %v", err)
	}
	update := proto.CloneOf(changed.GetConfigMap())
	update.Data = map[string]string{"v": "2"}
	if _, err := cms.UpdateConfigMap(ctx, &capstanv1.UpdateConfigMapRequest{ConfigMap: update}); err != nil {
		t.Fatalf("update changed: %v", err)
	}
	if _, err := cms.CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: configMap(ns, "born", map[string]string{"v": "1"})}); err != nil {
		t.Fatalf("create born: %v", err)
	}
	want := currentVersions(t, writer, ns)

	// Compact etcd at its current revision through a live member.
	etcd := etcdClient(t, c.etcdURLs[0])
	head, err := etcd.Get(ctx, "compaction-probe")
	if err != nil {
		t.Fatalf("etcd get: %v", err)
	}
	revision := head.Header.Revision
	if _, err := etcd.Compact(ctx, revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("etcd compact at %d: %v", revision, err)
	}
	t.Logf("compacted etcd at revision %d; the informer last saw %d", revision, oldVersion)

	// A watch from the old version ends with RESOURCE_VERSION_EXPIRED.
	w := writer.Watch(t.Context(), configMapKind, client.WatchOptions{Namespace: ns, ResourceVersion: oldVersion})
	expiry, cancelExpiry := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancelExpiry()
	var delivered []client.WatchEvent
	func() {
		for {
			select {
			case ev, ok := <-w.Events():
				if !ok {
					return
				}
				delivered = append(delivered, ev)
			case <-expiry.Done():
				w.Stop()
				t.Fatalf("the watch from compacted version %d is still open after 30 s", oldVersion)
			}
		}
	}()
	w.Stop()
	werr := w.Err()
	if apierrors.Code(werr) != codes.OutOfRange || apierrors.Reason(werr) != apierrors.ReasonResourceVersionExpired || !apierrors.IsExpired(werr) {
		t.Errorf("the watch from compacted version %d ended with %v (reason %q), want OUT_OF_RANGE with reason %s",
			oldVersion, werr, apierrors.Reason(werr), apierrors.ReasonResourceVersionExpired)
	}
	if len(delivered) > 0 {
		t.Errorf("the expired watch delivered %d events before it ended: %v", len(delivered), delivered)
	}

	// The informer's replica comes back; its watch resumes from a
	// compacted version and the informer has to list again.
	c.restore(t)
	poll.For(t, 60*time.Second, "the informer's cache to match the store", func(context.Context) error {
		if got := cachedVersions(inf); !maps.Equal(got, want) {
			return fmt.Errorf("the cache holds %v, want %v", got, want)
		}
		return nil
	})
	poll.For(t, 10*time.Second, "the handlers to be told", func(context.Context) error {
		handledMu.Lock()
		defer handledMu.Unlock()
		if !maps.Equal(handled, want) {
			return fmt.Errorf("the handlers were told of %v, want %v", handled, want)
		}
		return nil
	})
	handledMu.Lock()
	defer handledMu.Unlock()
	if !slices.Equal(deletes, []string{"doomed"}) {
		t.Errorf("OnDelete was called for %v, want exactly [doomed]", deletes)
	}
}

// cachedVersions maps each object in the informer's cache to its version.
func cachedVersions(inf *informer.Informer) map[string]int64 {
	got := map[string]int64{}
	for _, obj := range inf.List() {
		got[obj.GetMetadata().GetName()] = obj.GetMetadata().GetResourceVersion()
	}
	return got
}

// currentVersions maps each ConfigMap of ns in the store to its version.
func currentVersions(t *testing.T, cl *client.Client, ns string) map[string]int64 {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	list, err := cl.ListAll(ctx, configMapKind, client.ListOptions{Namespace: ns})
	if err != nil {
		t.Fatalf("list %s: %v", ns, err)
	}
	got := map[string]int64{}
	for _, obj := range list.Items {
		got[obj.GetMetadata().GetName()] = obj.GetMetadata().GetResourceVersion()
	}
	return got
}
