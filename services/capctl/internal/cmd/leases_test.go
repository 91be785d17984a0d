package cmd_test

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

// wantPattern is wantLines where "~" in a wanted line stands for an age or
// a time ago ("5s", "3m12s", "1s ago"), which a test must not pin down.
func wantPattern(t *testing.T, what, got string, want ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(got), "\n")
	ok := len(lines) == len(want)
	for i := 0; ok && i < len(want); i++ {
		pattern := strings.ReplaceAll(regexp.QuoteMeta(want[i]), "~", `[0-9][0-9a-z]*( ago)?`)
		ok = regexp.MustCompile("^" + pattern + "$").MatchString(lines[i])
	}
	if !ok {
		t.Errorf("%s:\n%s\nwant (~ is an age):\n%s", what, got, strings.Join(want, "\n"))
	}
}

// leasesSection is the LEASES table of cluster status, squashed.
func leasesSection(t *testing.T, out string) []string {
	t.Helper()
	_, section, ok := strings.Cut(out, "\nLEASES\n")
	if !ok {
		t.Fatalf("no LEASES section in:\n%s", out)
	}
	return strings.Split(strings.TrimSpace(squash(section)), "\n")
}

func TestLeases(t *testing.T) {
	cluster := apiservertest.Start(t, 2)
	c := capctl{t: t, addrs: cluster.Addrs()}
	api := apiClient(t, cluster.Addrs())
	ctx := context.Background()
	epoch := func(l *capstanv1.Lease) string { return strconv.FormatInt(l.GetStatus().GetEpoch(), 10) }

	cm := acquire(t, api, wellknown.SystemNamespace, wellknown.ControllerManagerLease, "master-1", true)
	acquire(t, api, wellknown.SystemNamespace, wellknown.ControllerManagerLease, "master-3", false)
	acquire(t, api, wellknown.SystemNamespace, wellknown.ControllerManagerLease, "master-2", false)
	sched := acquire(t, api, wellknown.SystemNamespace, wellknown.SchedulerLease, "master-2", true)
	node := acquire(t, api, wellknown.NodeLeaseNamespace, "worker-1", "worker-1", true)
	// The scheduler's holder keeps a session with the first replica; the
	// controller-manager's keeps none.
	session := holdSession(t, cluster.Addrs()[0], wellknown.SystemNamespace, wellknown.SchedulerLease, "master-2", sched.GetStatus().GetEpoch())

	t.Run("get leases", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		wantPattern(t, "get leases -n capstan-system", squash(c.ok("", "get", "leases", "-n", wellknown.SystemNamespace)),
			"NAME HOLDER EPOCH AGE",
			"controller-manager master-1 "+epoch(cm)+" ~",
			"scheduler master-2 "+epoch(sched)+" ~")
		wantPattern(t, "get leases -A", squash(c.ok("", "get", "leases", "-A")),
			"NAMESPACE NAME HOLDER EPOCH AGE",
			"capstan-node-lease worker-1 worker-1 "+epoch(node)+" ~",
			"capstan-system controller-manager master-1 "+epoch(cm)+" ~",
			"capstan-system scheduler master-2 "+epoch(sched)+" ~")
		wantPattern(t, "get lease -o wide", squash(c.ok("", "get", "lease", "scheduler", "-n", wellknown.SystemNamespace, "-o", "wide")),
			"NAME HOLDER EPOCH AGE SESSION DURATION RENEWED TRANSITIONS",
			"scheduler master-2 "+epoch(sched)+" ~ "+session+" 30s ~ 0")
		wantPattern(t, "get leases -o wide", squash(c.ok("", "get", "leases", "-n", wellknown.SystemNamespace, "-o", "wide")),
			"NAME HOLDER EPOCH AGE SESSION DURATION RENEWED TRANSITIONS",
			"controller-manager master-1 "+epoch(cm)+" ~ <none> 30s ~ 0",
			"scheduler master-2 "+epoch(sched)+" ~ "+session+" 30s ~ 0")
		r := c.run("", "get", "leases")
		if r.code != 0 || strings.TrimSpace(r.stderr) != "No resources found in default namespace." {
			t.Errorf("get leases in the default namespace: %+v", r)
		}
	})

	t.Run("cluster status shows holders, epochs, sessions and standbys", func(t *testing.T) {
		c := capctl{t: t, addrs: c.addrs}
		wantPattern(t, "LEASES", strings.Join(leasesSection(t, c.ok("", "cluster", "status")), "\n"),
			"LEASE HOLDER EPOCH SESSION RENEWED DURATION STANDBYS",
			"controller-manager master-1 "+epoch(cm)+" <none> ~ 30s master-2,master-3",
			"scheduler master-2 "+epoch(sched)+" "+session+" ~ 30s <none>")

		// The leader steps down: the lease is nobody's, its standbys wait.
		if _, err := api.Leases().ReleaseLease(ctx, &capstanv1.ReleaseLeaseRequest{Namespace: wellknown.SystemNamespace,
			Name: wellknown.ControllerManagerLease, HolderIdentity: "master-1", Epoch: cm.GetStatus().GetEpoch()}); err != nil {
			t.Fatal(err)
		}
		wantPattern(t, "LEASES after the release", strings.Join(leasesSection(t, c.ok("", "cluster", "status")), "\n"),
			"LEASE HOLDER EPOCH SESSION RENEWED DURATION STANDBYS",
			"controller-manager <nobody> - - - - master-2,master-3",
			"scheduler master-2 "+epoch(sched)+" "+session+" ~ 30s <none>")

		// A standby takes over with a new, higher epoch and is no longer a standby.
		next := acquire(t, api, wellknown.SystemNamespace, wellknown.ControllerManagerLease, "master-3", true)
		if next.GetStatus().GetEpoch() <= cm.GetStatus().GetEpoch() {
			t.Fatalf("new epoch %d is not above the old %d", next.GetStatus().GetEpoch(), cm.GetStatus().GetEpoch())
		}
		wantPattern(t, "LEASES after the takeover", strings.Join(leasesSection(t, c.ok("", "cluster", "status")), "\n"),
			"LEASE HOLDER EPOCH SESSION RENEWED DURATION STANDBYS",
			"controller-manager master-3 "+epoch(next)+" <none> ~ 30s master-2",
			"scheduler master-2 "+epoch(sched)+" "+session+" ~ 30s <none>")
		wantContains(t, "describe lease", squash(c.ok("", "describe", "lease/controller-manager", "-n", wellknown.SystemNamespace)),
			"Holder: master-3\n", "Epoch: "+epoch(next)+"\n", "Session: <none>\n", "Transitions: 1\n")
		wantContains(t, "describe lease", squash(c.ok("", "describe", "lease/scheduler", "-n", wellknown.SystemNamespace)),
			"Holder: master-2\n", "Session: "+session+"\n")
	})
}

// holdSession opens a HoldLease session of the holding through a
// connection of its own to addr, as a lease holder keeps one, and returns
// the name of the replica that holds it. When the test ends it closes the
// session cleanly (which releases nothing) and waits for the replica to
// acknowledge that.
func holdSession(t *testing.T, addr, namespace, name, holder string, epoch int64) string {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	stream, err := capstanv1.NewLeaseServiceClient(conn).HoldLease(ctx)
	t.Cleanup(func() {
		if stream != nil && stream.CloseSend() == nil {
			for {
				if _, err := stream.Recv(); err != nil {
					break
				}
			}
		}
		cancel()
		conn.Close()
	})
	if err != nil {
		t.Fatalf("HoldLease: %v", err)
	}
	if err := stream.Send(&capstanv1.HoldLeaseRequest{Namespace: namespace, Name: name, HolderIdentity: holder, Epoch: epoch}); err != nil {
		t.Fatalf("HoldLease: send: %v", err)
	}
	opened, err := stream.Recv()
	if err != nil {
		t.Fatalf("HoldLease: %v", err)
	}
	if opened.GetReplica() == "" {
		t.Fatalf("HoldLease answered %v: no replica", opened)
	}
	return opened.GetReplica()
}

func TestGetEvents(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := capctl{t: t, addrs: cluster.Addrs()}
	api := apiClient(t, cluster.Addrs())
	now := time.Now()
	pod := create(t, api, &capstanv1.Pod{Metadata: &capstanv1.ObjectMeta{Name: "web-1"},
		Spec: &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "web", Command: []string{"/bin/sleep", "3600"}}}}})
	other := create(t, api, &capstanv1.Pod{Metadata: &capstanv1.ObjectMeta{Name: "api-1"},
		Spec: &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "api", Command: []string{"/bin/sleep", "3600"}}}}})
	// Names sort differently from times: the table follows the times.
	recordEvent(t, api, pod, wellknown.EventNormal, "Started", "Started container web", now.Add(-time.Minute))
	recordEvent(t, api, other, wellknown.EventWarning, "FailedScheduling", "0/2 nodes are available", now.Add(-2*time.Minute))
	recordEvent(t, api, pod, wellknown.EventNormal, "Scheduled", "Successfully assigned default/web-1 to worker-1", now.Add(-3*time.Minute))

	wantPattern(t, "get events", squash(c.ok("", "get", "events")),
		"LAST SEEN TYPE REASON OBJECT MESSAGE",
		"~ Normal Scheduled pod/web-1 Successfully assigned default/web-1 to worker-1",
		"~ Warning FailedScheduling pod/api-1 0/2 nodes are available",
		"~ Normal Started pod/web-1 Started container web")
	for _, selector := range []string{"involved_object.name=web-1", "involvedObject.name=web-1"} {
		wantPattern(t, "get events --field-selector "+selector, squash(c.ok("", "get", "ev", "--field-selector", selector)),
			"LAST SEEN TYPE REASON OBJECT MESSAGE",
			"~ Normal Scheduled pod/web-1 Successfully assigned default/web-1 to worker-1",
			"~ Normal Started pod/web-1 Started container web")
	}
	wantContains(t, "get events --field-selector type=Warning", c.ok("", "get", "events", "--field-selector", "type=Warning", "-o", "name"),
		"event/api-1.failedscheduling-")

	r := c.start("get", "events", "-w", "--field-selector", "involved_object.name=web-1")
	waitFor(t, &r.out, "Started container web")
	recordEvent(t, api, other, wellknown.EventNormal, "Pulled", "not about web-1", now)
	recordEvent(t, api, pod, wellknown.EventWarning, "BackOff", "Back-off restarting failed container", now)
	waitFor(t, &r.out, "Back-off restarting failed container")
	r.cancel()
	if code := r.exit(t); code != 0 {
		t.Fatalf("get events -w exited %d; stderr:\n%s", code, r.errOut.String())
	}
	wantPattern(t, "get events -w", squash(r.out.String()),
		"LAST SEEN TYPE REASON OBJECT MESSAGE",
		"~ Normal Scheduled pod/web-1 Successfully assigned default/web-1 to worker-1",
		"~ Normal Started pod/web-1 Started container web",
		"~ Warning BackOff pod/web-1 Back-off restarting failed container")
}
