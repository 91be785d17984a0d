package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

func TestParsePortRange(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want PortRange
		err  string
	}{
		{"30000-32767", PortRange{30000, 32767}, ""},
		{" 1-1 ", PortRange{1, 1}, ""},
		{"1-65535", PortRange{1, 65535}, ""},
		{"0-10", PortRange{}, "0-10 is not a range of ports"},
		{"5-3", PortRange{}, "5-3 is not a range of ports"},
		{"1-65536", PortRange{}, "1-65536 is not a range of ports"},
		{"30000", PortRange{}, `"30000" is not FIRST-LAST`},
		{"30000-", PortRange{}, `"30000-" is not FIRST-LAST`},
		{"a-b", PortRange{}, `"a-b" is not FIRST-LAST`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePortRange(tc.in)
			switch {
			case tc.err == "" && (err != nil || got != tc.want):
				t.Fatalf("ParsePortRange(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("ParsePortRange(%q) error %v, want one containing %q", tc.in, err, tc.err)
			}
		})
	}
}

// TestKernelPorts: which ports of a node port range the kernel may hand to
// outgoing connections, as its sysctls say, and which ranges are refused
// for lying wholly inside the ephemeral range.
func TestKernelPorts(t *testing.T) {
	for _, tc := range []struct {
		name             string
		rng, reserved    string
		nodePorts        PortRange
		wantUsable       int
		wantRangeProblem string
	}{
		{"default below the usual range", "32768\t60999\n", "\n", DefaultNodePortRange, 2768, ""},
		{"overlap: the shared ports are not used", "32768\t60999\n", "", PortRange{32000, 33000}, 768, ""},
		{"inside", "32768\t60999\n", "", PortRange{40000, 41000}, 0, "40000-41000 lies inside the kernel's ephemeral port range 32768-60999"},
		{"inside but reserved", "32768\t60999\n", "8080,40000-41000\n", PortRange{40000, 41000}, 1001, ""},
		{"partly reserved", "1024\t65535\n", "30000-30099", DefaultNodePortRange, 100, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := parseKernelPorts(tc.rng, tc.reserved)
			if err != nil {
				t.Fatal(err)
			}
			if got := k.usable(tc.nodePorts); got != tc.wantUsable {
				t.Errorf("usable ports of %s: %d, want %d", tc.nodePorts, got, tc.wantUsable)
			}
			err = k.inRange(tc.nodePorts)
			switch {
			case tc.wantRangeProblem == "" && err != nil:
				t.Errorf("range %s refused: %v", tc.nodePorts, err)
			case tc.wantRangeProblem != "" && (err == nil || !strings.Contains(err.Error(), tc.wantRangeProblem)):
				t.Errorf("range %s: %v, want an error containing %q", tc.nodePorts, err, tc.wantRangeProblem)
			}
		})
	}
	for _, bad := range [][2]string{{"32768", ""}, {"a b", ""}, {"32768 60999", "x-y"}} {
		if _, err := parseKernelPorts(bad[0], bad[1]); err == nil {
			t.Errorf("parseKernelPorts(%q, %q) accepted", bad[0], bad[1])
		}
	}
}

// freeNodePortRange finds n consecutive ports below 20000 (test clusters
// take 20000-29999, `make local-up` 30000-32767), outside the kernel's
// ephemeral range, that no program holds right now.
func freeNodePortRange(t *testing.T, n int) PortRange {
	t.Helper()
	kernel, _ := readKernelPorts()
	for first := 10000; first+n <= 20000; first += n {
		r := PortRange{First: first, Last: first + n - 1}
		free := true
		for port := r.First; port <= r.Last && free; port++ {
			free = !kernel.ephemeralPort(port) && probeFree(port, "TCP") == nil
		}
		if free {
			return r
		}
	}
	t.Fatalf("no %d free consecutive ports in 10000-19999", n)
	return PortRange{}
}

// TestNodePortsAreNeverGivenTwice: in a range of four ports, a port that
// another program listens on is skipped, a declared host port is held as
// is and never allocated, UDP ports are probed as UDP, a full range fails
// with the reason, and a released port is given again.
func TestNodePortsAreNeverGivenTwice(t *testing.T) {
	rng := freeNodePortRange(t, 4)
	other, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(rng.First+1))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	nodes := newNodePorts(rng, kernelPorts{}, slog.New(slog.NewTextHandler(t.Output(), nil)))

	a := newPortMap(nodes, "u-a", nil)
	added, err := a.ensure(&capstanv1.PodSpec{Containers: []*capstanv1.Container{{
		Name: "app",
		Ports: []*capstanv1.ContainerPort{
			{ContainerPort: 8080},
			{ContainerPort: 9090, HostPort: int32(rng.First + 2)},
			{ContainerPort: 53, Protocol: "UDP"},
		},
	}}})
	if err != nil || !added {
		t.Fatalf("ensure: added %v, %v", added, err)
	}
	want := map[int32]int32{8080: int32(rng.First), 9090: int32(rng.First + 2), 53: int32(rng.First + 3)}
	if got := a.snapshot(); !mapsEqual(got, want) {
		t.Fatalf("ports %v, want %v (the port another program holds skipped, the host port kept)", got, want)
	}
	if again, err := a.ensure(&capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "app", Ports: []*capstanv1.ContainerPort{{ContainerPort: 8080}}}}}); again || err != nil {
		t.Errorf("ensure of mapped ports: added %v, %v", again, err)
	}

	b := newPortMap(nodes, "u-b", nil)
	bSpec := &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "app", Ports: []*capstanv1.ContainerPort{{ContainerPort: 8080}}}}}
	_, err = b.ensure(bSpec)
	wantMsg := fmt.Sprintf("runtime: node port range exhausted: all 4 ports of %s are taken (3 held by this node's pods, 1 in use by other programs)", rng)
	if !errors.Is(err, ErrNodePortsExhausted) || !strings.Contains(err.Error(), wantMsg) {
		t.Fatalf("a full range: %v, want %q", err, wantMsg)
	}
	if got := b.unmapped(bSpec.Containers[0]); !slices.Equal(got, []int32{8080}) {
		t.Errorf("unmapped %v, want [8080]", got)
	}
	if st := b.statuses(bSpec.Containers[0]); st[0].GetHostPort() != 0 {
		t.Errorf("status of a port without a node port: %v", st)
	}

	nodes.release("u-a")
	if _, err := b.ensure(bSpec); err != nil {
		t.Fatalf("after the release: %v", err)
	}
	if got := b.nodePort(8080); got != int32(rng.First) {
		t.Errorf("after the release: node port %d, want the freed %d", got, rng.First)
	}
	if n := nodes.inUse(); n != 1 {
		t.Errorf("%d ports in use, want 1", n)
	}
}

func mapsEqual(a, b map[int32]int32) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// manyPods is how many pods TestNodePortsOfManyPods runs on one node.
const manyPods = 500

// TestNodePortsOfManyPods runs manyPods pods on one node, each declaring
// container port 8080, in a node port range of exactly manyPods ports.
// Their commands exit at once and never listen, so no bind probe can stand
// in for the node-wide set: every pod gets a node port of its own; one pod
// more finds none and says so in its status until a pod is removed, and
// then gets that pod's port; a new runtime on the same state directory
// (an agent restart) rebuilds the set from the checkpoints and does the
// same.
func TestNodePortsOfManyPods(t *testing.T) {
	opts := fastOptions(t)
	opts.NodePortRange = freeNodePortRange(t, manyPods)
	a, err := NewProcessRuntime(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })

	exits := func(uid string) *capstanv1.Pod {
		return testPod(uid, wellknown.RestartNever, 1, &capstanv1.Container{
			Name: "app", Command: []string{"/bin/true"}, Ports: []*capstanv1.ContainerPort{{ContainerPort: 8080}},
		})
	}
	sleeps := func(uid string) *capstanv1.Pod {
		return testPod(uid, wellknown.RestartAlways, 1, &capstanv1.Container{
			Name: "app", Command: []string{"/bin/sleep", "300"}, Ports: []*capstanv1.ContainerPort{{ContainerPort: 8080}},
		})
	}
	uids := make([]string, manyPods)
	for i := range uids {
		uids[i] = fmt.Sprintf("u-%03d", i)
		syncPod(t, a, exits(uids[i]))
	}
	// nodePortsOf is the node port of every pod of uids, once each has run.
	nodePortsOf := func(rt *ProcessRuntime, uids []string) map[string]int {
		ports := map[string]int{}
		poll.For(t, 5*waitTimeout, fmt.Sprintf("%d pods to have run", len(uids)), func(context.Context) error {
			for _, uid := range uids {
				cs := containerStatus(rt, uid, "app")
				if cs.GetState().GetTerminated().GetReason() != ReasonCompleted {
					return fmt.Errorf("pod %s: %s", uid, describe(cs))
				}
				ports[uid] = int(cs.GetPorts()[0].GetHostPort())
			}
			return nil
		})
		return ports
	}
	ports := nodePortsOf(a, uids)
	owner := map[int]string{}
	for _, uid := range uids {
		port := ports[uid]
		if !opts.NodePortRange.Contains(port) {
			t.Errorf("pod %s has node port %d, outside %s", uid, port, opts.NodePortRange)
		}
		if other, ok := owner[port]; ok {
			t.Errorf("pods %s and %s both have node port %d", other, uid, port)
		}
		owner[port] = uid
	}
	t.Logf("%d pods, %d distinct node ports in %s", manyPods, len(owner), opts.NodePortRange)

	// oneMore waits until pod uid cannot start for want of a node port,
	// saying so; then, once pod freed is removed, until it runs on freed's
	// port.
	oneMore := func(rt *ProcessRuntime, uid, freed string) {
		t.Helper()
		syncPod(t, rt, sleeps(uid))
		cs := waitContainer(t, rt, uid, "app", "unable to start: no node port", func(cs *capstanv1.ContainerStatus) bool {
			return cs.GetState().GetWaiting().GetReason() == ReasonContainerCannotRun
		})
		wantMsg := fmt.Sprintf("no node port for container port 8080: runtime: node port range exhausted: all %d ports of %s are taken (%d held by this node's pods)",
			manyPods, opts.NodePortRange, manyPods)
		if msg := cs.GetState().GetWaiting().GetMessage(); !strings.HasPrefix(msg, wantMsg) {
			t.Errorf("waiting message %q, want it to start with %q", msg, wantMsg)
		}
		if st := rt.PodStatus(uid); st.Reason != ReasonStartError || !strings.Contains(st.Message, "container app: "+wantMsg) {
			t.Errorf("pod status reason %q message %q", st.Reason, st.Message)
		}
		if got := cs.GetPorts()[0].GetHostPort(); got != 0 {
			t.Errorf("status shows node port %d before one was free", got)
		}
		if err := rt.KillPod(context.Background(), freed, 0); err != nil {
			t.Fatal(err)
		}
		cs = waitContainer(t, rt, uid, "app", "running on the freed port", isRunning)
		if got := int(cs.GetPorts()[0].GetHostPort()); got != ports[freed] {
			t.Errorf("pod %s got node port %d, want %d, which the removal of %s freed", uid, got, ports[freed], freed)
		}
		ports[uid] = int(cs.GetPorts()[0].GetHostPort())
		delete(ports, freed)
	}
	oneMore(a, "u-extra", "u-007")
	killGroupAtCleanup(t, pidOf(a, "u-extra", "app"))

	// An agent restart: the new runtime knows every port from the pods'
	// checkpoints, although nothing listens on any.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := newRuntime(t, opts)
	if n := len(b.Pods()); n != manyPods {
		t.Fatalf("%d pods adopted, want %d", n, manyPods)
	}
	if n := b.nodePorts.inUse(); n != manyPods {
		t.Fatalf("%d node ports held after adoption, want %d", n, manyPods)
	}
	for _, uid := range b.Pods() {
		if cs := containerStatus(b, uid, "app"); int(cs.GetPorts()[0].GetHostPort()) != ports[uid] {
			t.Errorf("pod %s has node port %d after adoption, had %d", uid, cs.GetPorts()[0].GetHostPort(), ports[uid])
		}
	}
	oneMore(b, "u-late", "u-042")
}
