package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/faultproxy"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

// The frozen-replica test: a write sits in the socket of a frozen API
// replica (a proxy that holds its bytes) while its caller gives up on it,
// and reaches the replica after a newer write to the same object. The late
// write must change nothing: not overwrite the newer value, not re-create
// an object deleted since.
const (
	// frozenRounds is the number of rounds per kind of caller and write.
	frozenRounds = 100
	// frozenWorkers run rounds side by side, each with its own proxy and
	// clients.
	frozenWorkers = 4
	// frozenAttempt bounds each attempt: how long a caller waits on the
	// frozen replica before it retries elsewhere or gives up.
	frozenAttempt = 500 * time.Millisecond
	// lateWriteWindow is how long, after the last thaw, the test watches
	// that no late write lands (every earlier round's late writes have
	// had whole rounds to land before it looks).
	lateWriteWindow = time.Second
)

var frozenKind = resource.MustLookup("ConfigMap")

// frozenCheck is what the rounds leave to check: each name's expected data
// value, "" for an object that must not exist.
type frozenCheck struct {
	mu   sync.Mutex
	want map[string]string
}

func (c *frozenCheck) expect(name, value string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.want[name] = value
}

// violations lists the objects whose state a late write changed.
func (c *frozenCheck) violations(ctx context.Context, w *Client, ns string) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	res, err := w.ListAll(ctx, frozenKind, ListOptions{Namespace: ns})
	if err != nil {
		return nil, err
	}
	have := map[string]string{}
	for _, obj := range res.Items {
		have[obj.GetMetadata().GetName()] = obj.(*capstanv1.ConfigMap).GetData()["v"]
	}
	var bad []string
	for name, want := range c.want {
		got, exists := have[name]
		switch {
		case want == "" && exists:
			bad = append(bad, fmt.Sprintf("%s was re-created (v=%q)", name, got))
		case want != "" && got != want:
			bad = append(bad, fmt.Sprintf("%s has v=%q, want the newer %q", name, got, want))
		}
	}
	return bad, nil
}

func TestFrozenReplicaReplaysNoWrite(t *testing.T) {
	cluster := apiservertest.Start(t, 2)
	frozen, healthy := cluster.Addrs()[0], cluster.Addrs()[1]
	writer := newClient(t, healthy) // the newer writes, never through the frozen replica
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	for _, caller := range []struct {
		name  string
		round func(t *testing.T, ctx context.Context, r frozenRound) error
	}{
		{"caller alive, retries elsewhere", aliveCallerRound},
		{"caller dead", deadCallerRound},
	} {
		t.Run(caller.name, func(t *testing.T) {
			ns := fmt.Sprintf("frozen-%d", len(caller.name))
			check := &frozenCheck{want: map[string]string{}}
			var wg sync.WaitGroup
			errs := make([]error, frozenWorkers)
			for worker := range frozenWorkers {
				wg.Go(func() {
					proxy, err := faultproxy.Start(frozen, faultproxy.Options{VanishingClients: true})
					if err != nil {
						errs[worker] = err
						return
					}
					defer proxy.Close()
					for round := worker; round < frozenRounds; round += frozenWorkers {
						r := frozenRound{proxy: proxy, healthy: healthy, writer: writer, check: check, ns: ns, id: fmt.Sprintf("r%d", round)}
						if err := caller.round(t, ctx, r); err != nil {
							errs[worker] = fmt.Errorf("round %d: %w", round, err)
							return
						}
					}
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			// Nothing late lands: looked at for a while after the last thaw.
			deadline := time.Now().Add(lateWriteWindow)
			for {
				bad, err := check.violations(ctx, writer, ns)
				if err != nil {
					t.Fatal(err)
				}
				if len(bad) > 0 {
					t.Fatalf("%d of %d objects changed by a late write: %v", len(bad), len(check.want), bad)
				}
				if time.Now().After(deadline) {
					break
				}
				time.Sleep(poll.Interval) // watching an invariant, not waiting for a state
			}
			t.Logf("%d rounds of a stale update and a create whose object was deleted (or never made): no late write landed", frozenRounds)
		})
	}
}

// frozenRound is what one round works with.
type frozenRound struct {
	proxy   *faultproxy.Proxy
	healthy string
	writer  *Client
	check   *frozenCheck
	ns, id  string
}

func (r frozenRound) configMap(name, v string) *capstanv1.ConfigMap {
	return newConfigMap(r.ns, name, map[string]string{"v": v})
}

// aliveCallerRound: the caller's attempt is held by the frozen replica; it
// gives up on it after its attempt timeout and retries on the healthy
// replica, which applies the write. Then another writer writes over the
// object (the update) or deletes it (the create), and the frozen replica
// thaws and reads the held attempt. Round robin decides where a first
// attempt goes; a write whose first attempt went to the healthy replica
// tests nothing and is made again, on a new object.
func aliveCallerRound(t *testing.T, ctx context.Context, r frozenRound) error {
	c, err := New(Config{Endpoints: []string{r.proxy.Addr(), r.healthy}, UserAgent: "frozen-alive", AttemptTimeout: frozenAttempt})
	if err != nil {
		return err
	}
	defer c.Close()
	for _, write := range []struct {
		name   string
		before func(name string) error
		do     func(name string) error
		after  func(name string) error
		want   string
	}{{
		name:   "u-" + r.id,
		before: func(name string) error { _, err := r.writer.Create(ctx, r.configMap(name, "old")); return err },
		do:     func(name string) error { _, err := c.Update(ctx, r.configMap(name, "stale")); return err },
		after:  func(name string) error { _, err := r.writer.Update(ctx, r.configMap(name, "newer")); return err },
		want:   "newer",
	}, {
		name:   "c-" + r.id,
		before: func(string) error { return nil },
		do:     func(name string) error { _, err := c.Create(ctx, r.configMap(name, "late")); return err },
		after:  func(name string) error { _, err := r.writer.Delete(ctx, frozenKind, r.ns, name, nil); return err },
		want:   "",
	}} {
		for try := 1; ; try++ {
			name := fmt.Sprintf("%s-%d", write.name, try)
			if try > 10 {
				return fmt.Errorf("%s: no first attempt went through the frozen replica in 10 tries", write.name)
			}
			if err := write.before(name); err != nil {
				return err
			}
			if err := nextCallThrough(ctx, c, r.healthy); err != nil {
				return err
			}
			r.proxy.FreezeAtNextRequest()
			if err := write.do(name); err != nil {
				return fmt.Errorf("%s, retried on the healthy replica: %w", name, err)
			}
			if r.proxy.Held() == 0 {
				r.proxy.Thaw() // disarm: this try went to the healthy replica
				continue
			}
			if err := write.after(name); err != nil {
				return fmt.Errorf("the newer write to %s: %w", name, err)
			}
			r.check.expect(name, write.want)
			r.proxy.Thaw()
			break
		}
	}
	return nil
}

// deadCallerRound: a caller process sends one write — an update of an
// object, or a create — and the frozen replica holds it; the caller is
// SIGKILLed before its deadline (it sends nothing more: no cancellation,
// and its connection vanishes without the replica noticing). Another writer
// writes over the object; once the caller's deadline has passed the
// replica thaws and reads the write, with a fresh gRPC timeout of its own.
func deadCallerRound(t *testing.T, ctx context.Context, r frozenRound) error {
	for _, write := range []struct {
		op, name string
		before   func(name string) error
		after    func(name string) error
		want     string
	}{{
		op: "update", name: "u-" + r.id,
		before: func(name string) error { _, err := r.writer.Create(ctx, r.configMap(name, "old")); return err },
		after:  func(name string) error { _, err := r.writer.Update(ctx, r.configMap(name, "newer")); return err },
		want:   "newer",
	}, {
		op: "create", name: "c-" + r.id,
		before: func(string) error { return nil },
		after:  func(string) error { return nil },
		want:   "",
	}} {
		if err := write.before(write.name); err != nil {
			return err
		}
		caller, err := startFrozenCaller(t, r.proxy.Addr(), r.ns, write.op, write.name)
		if err != nil {
			return err
		}
		r.proxy.FreezeAtNextRequest()
		sent, err := caller.send()
		if err != nil {
			return err
		}
		if err := poll.Until(ctx, 10*time.Second, "the write to be held", poll.True(func() bool { return r.proxy.Held() > 0 })); err != nil {
			return err
		}
		if err := caller.kill(); err != nil {
			return err
		}
		if err := write.after(write.name); err != nil {
			return fmt.Errorf("the newer write to %s: %w", write.name, err)
		}
		r.check.expect(write.name, write.want)
		// The held write is read after its caller's deadline, as a frozen
		// replica resumed late would read it.
		deadline := sent.Add(frozenAttempt)
		if err := poll.Until(ctx, 2*frozenAttempt, "the caller's deadline to pass", poll.True(func() bool { return time.Now().After(deadline) })); err != nil {
			return err
		}
		r.proxy.Thaw()
	}
	return nil
}

// frozenCallerEnv makes the test binary a frozen-round caller
// (runFrozenCaller): its value is "proxy-address namespace op name".
const frozenCallerEnv = "CAPSTAN_CLIENT_TEST_FROZEN_CALLER"

// frozenCaller is a caller process of a dead-caller round.
type frozenCaller struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
}

// startFrozenCaller starts the caller and waits until it is connected.
func startFrozenCaller(t *testing.T, proxy, ns, op, name string) (*frozenCaller, error) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), frozenCallerEnv+"="+strings.Join([]string{proxy, ns, op, name}, " "))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &frozenCaller{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(stdout)}
	t.Cleanup(func() { _ = c.kill() })
	if line, err := c.stdout.ReadString('\n'); err != nil || line != "ready\n" {
		return nil, fmt.Errorf("the caller did not get ready: %q, %v", line, err)
	}
	return c, nil
}

// send makes the caller send its write; it returns when the caller did.
func (c *frozenCaller) send() (time.Time, error) {
	if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
		return time.Time{}, err
	}
	line, err := c.stdout.ReadString('\n')
	if err != nil {
		return time.Time{}, fmt.Errorf("the caller: %q, %w", line, err)
	}
	nanos, err := strconv.ParseInt(strings.TrimPrefix(strings.TrimSpace(line), "sent "), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("the caller said %q", line)
	}
	return time.Unix(0, nanos), nil
}

// kill SIGKILLs the caller (by its pid) and reaps it.
func (c *frozenCaller) kill() error {
	if c.cmd.ProcessState != nil {
		return nil
	}
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	_ = c.cmd.Wait() // killed: the status says so
	return nil
}

// runFrozenCaller is the caller process: it connects through the proxy,
// says "ready", and at "go" sends its one write (which the proxy holds),
// saying "sent <unix nanoseconds>" just before; it is killed while the
// write waits.
func runFrozenCaller() int {
	args := strings.Fields(os.Getenv(frozenCallerEnv))
	if len(args) != 4 {
		fmt.Fprintln(os.Stderr, "frozen caller: bad arguments", args)
		return 2
	}
	proxy, ns, op, name := args[0], args[1], args[2], args[3]
	c, err := New(Config{Endpoints: []string{proxy}, UserAgent: "frozen-dead", CallTimeout: frozenAttempt, AttemptTimeout: frozenAttempt})
	if err != nil {
		fmt.Fprintln(os.Stderr, "frozen caller:", err)
		return 1
	}
	ctx := context.Background()
	// Connecting may take longer than one attempt on a loaded machine: the
	// read is retried until this deadline.
	connectCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = c.Cluster().GetClusterStatus(connectCtx, &capstanv1.GetClusterStatusRequest{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "frozen caller: connect:", err)
		return 1
	}
	fmt.Println("ready")
	if line, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil || line != "go\n" {
		return 1
	}
	fmt.Printf("sent %d\n", time.Now().UnixNano())
	cm := newConfigMap(ns, name, map[string]string{"v": "late"})
	if op == "update" {
		_, err = c.Update(ctx, cm)
	} else {
		_, err = c.Create(ctx, cm)
	}
	fmt.Fprintln(os.Stderr, "frozen caller: the write returned before the caller was killed:", err)
	return 1
}

// nextCallThrough makes the client's next call go to the frozen replica,
// through the proxy: round robin alternates over the replicas, so after a
// call answered by the healthy one (if the client has it), the other is
// next.
func nextCallThrough(ctx context.Context, c *Client, healthy string) error {
	return poll.Until(ctx, 10*time.Second, "a call answered by the healthy replica", func(ctx context.Context) error {
		st, err := c.Cluster().GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
		switch {
		case err != nil:
			return err
		case len(c.Endpoints()) > 1 && st.GetSelf().GetAddress() != healthy:
			return errors.New("answered by the frozen replica")
		}
		return nil
	})
}
