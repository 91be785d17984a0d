package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/poll"
)

// TestKillOneReplicaUnderLoad proves "a stopped replica costs the caller
// no error": four goroutines run creates, gets, lists and conditional
// updates through one client of all three replicas while the replica whose
// etcd member leads is SIGKILLed (the hardest case: the API replica and
// the etcd leader die together), keep going while it is dead and while it
// comes back; not one call fails. Then the restarted replica serves again
// and has every object at its last acknowledged version, and its own etcd
// member holds every key (it rejoined and caught up).
func TestKillOneReplicaUnderLoad(t *testing.T) {
	const ns = "e2e-kill-under-load"
	c, load, victim := loadTheEtcdLeader(t, ns, "the kill")
	c.kill(t, c.names[victim])
	load.waitProgress(t, "while "+c.names[victim]+" is dead")
	c.restore(t)
	load.waitProgress(t, "after "+c.names[victim]+" is back")
	all := load.finish(t)

	// The restarted replica, dialled alone, serves every object at its
	// last acknowledged version.
	back := clientOf(t, c.addrs[victim])
	ctx, cancel := callCtx(t)
	defer cancel()
	list, err := back.List(ctx, configMapKind, client.ListOptions{Namespace: ns})
	if err != nil {
		t.Fatalf("list on the restarted %s: %v", c.names[victim], err)
	}
	got := map[string]int64{}
	for _, obj := range list.Items {
		got[obj.GetMetadata().GetName()] = obj.GetMetadata().GetResourceVersion()
	}
	for name, rv := range all {
		if got[name] != rv {
			t.Errorf("%s on the restarted %s: version %d, want %d (0: missing)", name, c.names[victim], got[name], rv)
		}
	}
	if len(got) != len(all) {
		t.Errorf("the restarted %s lists %d objects, want %d", c.names[victim], len(got), len(all))
	}

	// Its own etcd member has caught up: a serializable read, answered by
	// that member alone from its local data, finds every key.
	member := etcdClient(t, c.etcdURLs[victim])
	prefix := configMapKind.Prefix(ns)
	poll.For(t, 30*time.Second, "the restarted member to hold every key", func(ctx context.Context) error {
		resp, err := member.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithSerializable(), clientv3.WithCountOnly())
		if err != nil {
			return err
		}
		if resp.Count != int64(len(all)) {
			return fmt.Errorf("the member holds %d keys under %s, want %d", resp.Count, prefix, len(all))
		}
		return nil
	})
}

// Shape of the load of startLoad.
const (
	loadWorkers = 4
	// loadRoundsPerPhase is how many rounds every worker must complete in
	// each phase of a test (before a fault, during it, after it).
	loadRoundsPerPhase = 5
	// loadMaxRounds bounds each worker's traffic whatever happens.
	loadMaxRounds = 2000
)

// load is a stream of client calls from loadWorkers goroutines; see
// loadWorker.
type load struct {
	rounds [loadWorkers]atomic.Int64
	// acked[w] maps each of worker w's objects to the version of its last
	// acknowledged write; read only after the workers have ended.
	acked [loadWorkers]map[string]int64
	stop  chan struct{}
	wg    sync.WaitGroup
	end   func()

	mu       sync.Mutex
	failures []error
}

// loadTheEtcdLeader sets up a test that disturbs an API replica under
// load: the shared cluster, restored when t ends, and the load in namespace
// ns through a client of every replica, once it makes progress. It returns
// them with the index of the replica whose embedded etcd member leads: the
// one to disturb, the hardest case, as the API replica and the etcd leader
// fail together. fault names the disturbance to come, for the messages.
func loadTheEtcdLeader(t *testing.T, ns, fault string) (*cluster, *load, int) {
	t.Helper()
	c := sharedCluster(t)
	c.restoreAfter(t)
	cl := clientOf(t, c.addrs...)
	victim := c.etcdLeader(t)
	t.Logf("%s of %s, whose etcd member leads", fault, c.names[victim])
	l := startLoad(t, cl, ns)
	l.waitProgress(t, "before "+fault)
	return c, l, victim
}

// startLoad starts the workers; they end at finish or, at the latest, when
// the test ends.
func startLoad(t *testing.T, cl *client.Client, ns string) *load {
	l := &load{stop: make(chan struct{})}
	for w := range loadWorkers {
		l.acked[w] = map[string]int64{}
		l.wg.Go(func() {
			if err := loadWorker(t.Context(), cl, ns, w, loadMaxRounds, l.stop, &l.rounds[w], l.acked[w]); err != nil {
				l.mu.Lock()
				l.failures = append(l.failures, err)
				l.mu.Unlock()
			}
		})
	}
	l.end = sync.OnceFunc(func() { close(l.stop); l.wg.Wait() })
	t.Cleanup(l.end)
	return l
}

// waitProgress waits until every worker has completed loadRoundsPerPhase
// more rounds, or one has failed.
func (l *load) waitProgress(t *testing.T, phase string) {
	t.Helper()
	var base [loadWorkers]int64
	for w := range loadWorkers {
		base[w] = l.rounds[w].Load()
	}
	poll.For(t, 90*time.Second, "every worker to make progress "+phase, func(context.Context) error {
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.failures) > 0 {
			return nil
		}
		for w := range loadWorkers {
			if got := l.rounds[w].Load() - base[w]; got < loadRoundsPerPhase {
				return fmt.Errorf("worker %d did %d rounds %s", w, got, phase)
			}
		}
		return nil
	})
}

// finish stops the workers, fails the test for every failed call, and
// returns every object written with the version of its last acknowledged
// write.
func (l *load) finish(t *testing.T) map[string]int64 {
	t.Helper()
	l.end()
	l.mu.Lock()
	for _, err := range l.failures {
		t.Errorf("a client call failed: %v", err)
	}
	l.mu.Unlock()
	if t.Failed() {
		t.FailNow()
	}
	all := map[string]int64{}
	var rounds int64
	for w := range loadWorkers {
		rounds += l.rounds[w].Load()
		maps.Copy(all, l.acked[w])
	}
	t.Logf("%d rounds of create, get, list and update, no call failed", rounds)
	return all
}

// TestFreezeOneReplicaUnderLoad is the SIGSTOP twin of
// TestKillOneReplicaUnderLoad: the replica whose etcd member leads is
// frozen, not killed, so its connections stay open and unanswered (a hung
// machine, a long GC pause, a paused container). Quorum is intact, so the
// client must see no failed call while it is frozen and after SIGCONT.
//
// Two mechanisms make that true: each apiserver's etcd client is kept to the
// members that answer /readyz (package etcdendpoints), so the healthy
// replicas stop sending to the frozen member within a second; and the
// client bounds each attempt (DefaultAttemptTimeout), so a call that lands on
// the frozen API replica moves on to another.
func TestFreezeOneReplicaUnderLoad(t *testing.T) {
	c, load, victim := loadTheEtcdLeader(t, "e2e-freeze-under-load", "the freeze")
	c.pause(t, c.names[victim])
	load.waitProgress(t, "while "+c.names[victim]+" is frozen")
	load.waitProgress(t, "while "+c.names[victim]+" is still frozen")
	c.resume(t, c.names[victim])
	load.waitProgress(t, "after "+c.names[victim]+" is thawed")
	load.finish(t)
}

// loadWorker runs rounds of client calls until stop is closed, maxRounds is
// reached or a call fails: each round creates an object, reads it back,
// lists the worker's objects (all must be there), and updates the object
// at the version it read. acked gets each object's last acknowledged
// version. The calls have the client's default timeout; none may fail.
func loadWorker(ctx context.Context, cl *client.Client, ns string, worker, maxRounds int, stop <-chan struct{}, rounds *atomic.Int64, acked map[string]int64) error {
	cms := cl.ConfigMaps()
	label := map[string]string{"worker": strconv.Itoa(worker)}
	for round := range maxRounds {
		select {
		case <-stop:
			return nil
		default:
		}
		name := fmt.Sprintf("w%d-%d", worker, round)
		step := func(what string, err error) error {
			if err == nil {
				return nil
			}
			return fmt.Errorf("worker %d round %d: %s %s: %w (code %v)", worker, round, what, name, err, status.Code(err))
		}
		obj := configMap(ns, name, map[string]string{"v": "0"})
		obj.Metadata.Labels = label
		created, err := cms.CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: obj})
		if err := step("create", err); err != nil {
			return err
		}
		acked[name] = created.GetConfigMap().GetMetadata().GetResourceVersion()

		read, err := cms.GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Namespace: ns, Name: name})
		if err := step("get", err); err != nil {
			return err
		}
		if !proto.Equal(read.GetConfigMap(), created.GetConfigMap()) {
			return fmt.Errorf("worker %d: get %s = %v, want what create returned: %v", worker, name, read.GetConfigMap(), created.GetConfigMap())
		}

		list, err := cms.ListConfigMaps(ctx, &capstanv1.ListConfigMapsRequest{Namespace: ns, LabelSelector: "worker=" + strconv.Itoa(worker)})
		if err := step("list", err); err != nil {
			return err
		}
		if n := len(list.GetConfigMaps()); n != round+1 {
			return fmt.Errorf("worker %d round %d: list finds %d of its objects, want %d", worker, round, n, round+1)
		}

		update := proto.CloneOf(read.GetConfigMap())
		update.Data = map[string]string{"v": "1"}
		updated, err := cms.UpdateConfigMap(ctx, &capstanv1.UpdateConfigMapRequest{ConfigMap: update})
		if err := step("update", err); err != nil {
			return err
		}
		if updated.GetConfigMap().GetMetadata().GetResourceVersion() <= read.GetConfigMap().GetMetadata().GetResourceVersion() {
			return fmt.Errorf("worker %d: update of %s returned version %d, not after %d", worker, name, updated.GetConfigMap().GetMetadata().GetResourceVersion(), read.GetConfigMap().GetMetadata().GetResourceVersion())
		}
		acked[name] = updated.GetConfigMap().GetMetadata().GetResourceVersion()
		rounds.Add(1)
	}
	return nil
}

// TestQuorumLossFailsFastAndRecovers proves the behaviour without quorum:
// with two of three replicas frozen by SIGSTOP (the processes, so their
// etcd members freeze too), a write through the remaining replica fails
// with UNAVAILABLE before the caller's 3 s deadline (not DEADLINE_EXCEEDED,
// not a hang), and that replica's health turns NOT_SERVING; after SIGCONT
// it is SERVING again and writes succeed. The replica is dialled with a
// plain gRPC connection so the client library's retries and health-checked
// balancing cannot hide what the server answers.
func TestQuorumLossFailsFastAndRecovers(t *testing.T) {
	c := sharedCluster(t)
	c.restoreAfter(t)
	const (
		ns            = "e2e-quorum"
		writeDeadline = 3 * time.Second
	)
	survivor, frozen := 0, []int{1, 2}
	conn := rawConn(t, c.addrs[survivor])
	cms := capstanv1.NewConfigMapServiceClient(conn)

	ctx, cancel := callCtx(t)
	_, err := cms.CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: configMap(ns, "before-the-freeze", nil)})
	cancel()
	if err != nil {
		t.Fatalf("write before the freeze: %v", err)
	}

	// SIGSTOP is delivered asynchronously: write only once every thread of
	// both processes has stopped.
	c.pause(t, c.names[frozen[0]], c.names[frozen[1]])
	t.Logf("froze %s and %s; writing through %s", c.names[frozen[0]], c.names[frozen[1]], c.names[survivor])

	// writeFailsFast checks the contract: UNAVAILABLE, before the deadline.
	writeFailsFast := func(name string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), writeDeadline)
		defer cancel()
		start := time.Now()
		_, err := cms.CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: configMap(ns, name, nil)})
		expiredFirst := ctx.Err() != nil
		elapsed := time.Since(start)
		switch {
		case err == nil:
			t.Fatalf("write %s without quorum succeeded", name)
		case status.Code(err) != codes.Unavailable:
			t.Fatalf("write %s without quorum: got %v, want UNAVAILABLE before the %v deadline", name, err, writeDeadline)
		case expiredFirst:
			t.Fatalf("write %s without quorum: UNAVAILABLE came only after the %v deadline had passed: %v", name, writeDeadline, err)
		}
		t.Logf("write %s without quorum, answered after %v: %v (reason %q)", name, elapsed.Round(time.Millisecond), err, apierrors.Reason(err))
	}

	// At once, before the replica may know that the others are gone.
	writeFailsFast("without-quorum")
	waitHealth := func(want healthpb.HealthCheckResponse_ServingStatus, timeout time.Duration) {
		t.Helper()
		poll.For(t, timeout, fmt.Sprintf("%s to report %v", c.names[survivor], want), func(ctx context.Context) error {
			st, err := healthOf(ctx, conn)
			if err == nil && st != want {
				err = fmt.Errorf("health is %v", st)
			}
			return err
		})
	}
	waitHealth(healthpb.HealthCheckResponse_NOT_SERVING, 20*time.Second)
	// Again once the replica itself reports that it has no quorum.
	writeFailsFast("while-not-serving")

	c.resume(t, c.names[frozen[0]], c.names[frozen[1]])
	waitHealth(healthpb.HealthCheckResponse_SERVING, 30*time.Second)
	// Each attempt writes a new name: an attempt that timed out may still
	// have been committed, and its retry must not meet it.
	attempt := 0
	poll.For(t, 30*time.Second, "a write through "+c.names[survivor]+" to succeed again", func(ctx context.Context) error {
		attempt++
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := cms.CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: configMap(ns, fmt.Sprintf("after-the-thaw-%d", attempt), nil)})
		return err
	})
	if err := c.WaitReady(t.Context()); err != nil {
		t.Fatalf("every replica SERVING after SIGCONT: %v", err)
	}

	// UNAVAILABLE promises only that the write may not have happened: a
	// proposal that reached the frozen leader can still commit once it
	// thaws. Reported for the record, not a failure.
	ctx, cancel = callCtx(t)
	defer cancel()
	for _, name := range []string{"without-quorum", "while-not-serving"} {
		if _, err := cms.GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Namespace: ns, Name: name}); err == nil {
			t.Logf("write %s, answered UNAVAILABLE, was committed after the thaw (allowed: UNAVAILABLE is ambiguous)", name)
		}
	}
}

// TestWatchSurvivesTheKillOfItsReplica proves that a client.Watch resumes
// on another replica with no event missed and none repeated.
//
// Which replica serves the watch stream is the balancer's choice and is
// not visible to the test, so every replica is killed in turn (and
// restarted before the next): the stream sits on some replica when the
// first kill comes; if no kill broke it, it stayed on that one replica
// through all three kills, and one of them killed it, a contradiction. So
// at least one kill broke the stream while updates were being written, and
// the watch had to resume on another replica from the last version it
// delivered. The test writes numbered updates of one ConfigMap before each
// kill, while the victim is dead, and after the last restart, and the
// watcher must deliver exactly that sequence, in order, with the versions
// the writes were acknowledged at. A final sentinel write, awaited after
// the last numbered one, catches a late duplicate too.
func TestWatchSurvivesTheKillOfItsReplica(t *testing.T) {
	c := sharedCluster(t)
	c.restoreAfter(t)
	const (
		ns            = "e2e-watch-kill"
		name          = "sequence"
		writesPerStep = 3
	)
	writer := clientOf(t, c.addrs...)
	watchLog := newLogCounter()
	watchClient := newClient(t, client.Config{Endpoints: c.addrs, Logger: slog.New(watchLog)})

	ctx, cancel := callCtx(t)
	created, err := writer.ConfigMaps().CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: configMap(ns, name, map[string]string{"seq": "0"})})
	cancel()
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	current := created.GetConfigMap()

	type seen struct {
		seq     string
		version int64
		typ     capstanv1.WatchEventType
	}
	var (
		mu     sync.Mutex
		events []seen
	)
	watcher := watchClient.Watch(t.Context(), configMapKind, client.WatchOptions{
		Namespace:       ns,
		FieldSelector:   "metadata.name=" + name,
		ResourceVersion: current.GetMetadata().GetResourceVersion(),
	})
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for ev := range watcher.Events() {
			cm, _ := ev.Object.(*capstanv1.ConfigMap)
			mu.Lock()
			events = append(events, seen{seq: cm.GetData()["seq"], version: ev.ResourceVersion, typ: ev.Type})
			mu.Unlock()
		}
	}()
	defer func() {
		watcher.Stop()
		<-consumed
	}()

	var want []seen
	seq := 0
	write := func(n int) {
		t.Helper()
		for range n {
			seq++
			update := proto.CloneOf(current)
			update.Data = map[string]string{"seq": strconv.Itoa(seq)}
			ctx, cancel := callCtx(t)
			resp, err := writer.ConfigMaps().UpdateConfigMap(ctx, &capstanv1.UpdateConfigMapRequest{ConfigMap: update})
			cancel()
			if err != nil {
				t.Fatalf("update %d: %v", seq, err)
			}
			current = resp.GetConfigMap()
			want = append(want, seen{seq: strconv.Itoa(seq), version: current.GetMetadata().GetResourceVersion(), typ: client.Modified})
		}
	}
	// waitDelivered waits until the watcher has delivered the last write.
	waitDelivered := func(what string) {
		t.Helper()
		last := want[len(want)-1].version
		poll.For(t, 60*time.Second, "the watcher to deliver "+what, func(context.Context) error {
			if watcher.ResourceVersion() >= last {
				return nil
			}
			select {
			case <-consumed:
				return errors.New("the watch ended: " + fmt.Sprint(watcher.Err()))
			default:
			}
			return fmt.Errorf("delivered up to version %d, want %d", watcher.ResourceVersion(), last)
		})
	}

	write(writesPerStep)
	waitDelivered("the first writes")
	for _, victim := range c.names {
		write(writesPerStep)
		c.kill(t, victim)
		write(writesPerStep)
		c.restore(t)
	}
	write(writesPerStep)
	waitDelivered("every numbered write")
	write(1) // the sentinel
	waitDelivered("the sentinel")

	watcher.Stop()
	<-consumed
	if err := watcher.Err(); err != nil {
		t.Errorf("the watch ended with %v", err)
	}
	t.Logf("%d writes; the watch client logged %d resumptions", len(want), watchLog.count("resuming"))
	if !slices.Equal(events, want) {
		t.Errorf("the watcher delivered (seq, version, type):\n %v\nwant exactly:\n %v\nwatch client log:\n%s", events, want, watchLog)
	}
}
