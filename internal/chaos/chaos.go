// Package chaos is Capstan's chaos run (make chaos): faults drawn at random
// from a printed seed — kills, stops, pauses and SIGSTOPs of any master
// component, of the lease holders and of the etcd leader's host on
// purpose, whole masters, workers with their pods, network cuts (compose)
// and a quorum loss now and then — while clients keep a register workload
// on ConfigMaps going through every replica (with and without the
// failover client), a Deployment and a ReplicaSet are scaled and rolled
// out, and watches follow ConfigMaps, pods and leases. At the end it
// checks, each pass or fail with counts:
//
//  1. the ConfigMap history is linearizable (porcupine; an HTML
//     visualisation is written when it is not);
//  2. no acknowledged write is lost: final reads from every replica join
//     the history and agree;
//  3. no write of a deposed lease holder is accepted: the fence's
//     LEASE_NOT_HELD refusals are counted from the components' logs, and
//     checks 4 and 5 would see a deposed holder's writes;
//  4. no pod is bound twice or to two nodes;
//  5. no workload ever has more active pods than asked (plus maxSurge);
//  6. pods on workers that were never faulted never restarted;
//  7. every workload converges within 30 s after the faults stop;
//  8. no watch event is delivered twice, out of order, or missed;
//  9. leases change hands only when their holder was faulted.
//
// It runs on any Target: the compose cluster or local processes.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/poll"
)

// Config is one run.
type Config struct {
	// Duration of the faults; the checks come after it.
	Duration time.Duration
	// Seed of every random choice.
	Seed uint64
	// OutDir receives report.json, report.txt and, on a linearizability
	// failure, history.html.
	OutDir string
	// Kinds, if set, are the only scenarios drawn (to chase one).
	Kinds []FaultKind
	// Keys of the register workload, and its clients.
	Keys, Clients int
	// Log receives progress lines.
	Log func(string)
}

// namespace holds everything the run creates.
const namespace = "chaos"

// convergeTimeout is check 7's bound.
const convergeTimeout = 30 * time.Second

// Check is one check's outcome.
type Check struct {
	Name   string   `json:"name"`
	Pass   bool     `json:"pass"`
	Counts string   `json:"counts"`
	Errors []string `json:"errors,omitempty"`
}

// Report is what a run found.
type Report struct {
	Target      string                    `json:"target"`
	Seed        uint64                    `json:"seed"`
	Duration    time.Duration             `json:"duration"`
	Faults      []FaultRecord             `json:"faults"`
	FaultsBy    map[string]int            `json:"faultsByKind"`
	Operations  map[string]map[string]int `json:"operations"`
	WriteAvail  float64                   `json:"writeAvailability"`
	LongestGap  time.Duration             `json:"longestWriteGap"`
	LeaseMoves  []leaseChange             `json:"leaseChanges"`
	Checks      []Check                   `json:"checks"`
	HistoryHTML string                    `json:"historyHtml,omitempty"`
}

// Passed reports whether every check passed.
func (r *Report) Passed() bool {
	for _, c := range r.Checks {
		if !c.Pass {
			return false
		}
	}
	return len(r.Checks) > 0
}

// Run runs the chaos run on t and returns its report; an error means the
// run itself could not go on (the cluster did not come back), and the
// report holds what was found until then.
func Run(ctx context.Context, t Target, cfg Config) (*Report, error) {
	if cfg.Keys == 0 {
		cfg.Keys = 6
	}
	if cfg.Clients == 0 {
		cfg.Clients = 6
	}
	if cfg.Log == nil {
		cfg.Log = func(string) {}
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	rep := &Report{Target: t.Kind(), Seed: cfg.Seed, Duration: cfg.Duration, FaultsBy: map[string]int{}}
	start := time.Now()

	failover, err := client.New(client.Config{Endpoints: t.APIAddrs(), UserAgent: "chaos"})
	if err != nil {
		return rep, err
	}
	defer failover.Close()
	var pinned []*client.Client
	for _, a := range t.APIAddrs() {
		c, err := client.New(client.Config{Endpoints: []string{a}, UserAgent: "chaos-pinned"})
		if err != nil {
			return rep, err
		}
		defer c.Close()
		pinned = append(pinned, c)
	}

	listCtx, cancel := context.WithTimeout(ctx, time.Minute)
	list, err := failover.List(listCtx, configMapKind, client.ListOptions{Namespace: namespace})
	cancel()
	if err != nil {
		return rep, fmt.Errorf("list config maps: %w", err)
	}

	// Watches run until the checks are done; load until the faults end.
	watchCtx, stopWatches := context.WithCancel(ctx)
	defer stopWatches()
	var watchers sync.WaitGroup
	cmWatch := &configMapWatch{}
	leases := newLeaseWatch()
	stats := newOpStats(start)
	w := &workloads{c: failover, ns: namespace, echo: t.EchoCommand(), rng: rand.New(rand.NewPCG(rng.Uint64(), 1)), stats: stats}
	pods := newPodWatch(w)
	watchers.Go(func() { cmWatch.run(watchCtx, failover, namespace, list.ResourceVersion) })
	for _, ns := range leaseNamespaces {
		watchers.Go(func() { leases.run(watchCtx, failover, ns) })
	}
	watchers.Go(func() { pods.run(watchCtx, failover) })

	createCtx, cancel := context.WithTimeout(ctx, time.Minute)
	err = w.create(createCtx)
	cancel()
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return rep, err
	}
	if err := poll.Until(ctx, 2*time.Minute, "the workloads to come up", w.converged); err != nil {
		return rep, err
	}

	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var load sync.WaitGroup
	h := &history{start: start}
	acked := &ackLog{}
	counter := &valueCounter{}
	for i := range cfg.Clients {
		rc := &registerClient{id: i, ns: namespace, keys: cfg.Keys, h: h, stats: stats, acked: acked, counter: counter,
			rng: rand.New(rand.NewPCG(rng.Uint64(), uint64(i)))}
		if i%2 == 0 {
			rc.c, rc.via = failover, "failover client"
		} else {
			rc.c, rc.via = pinned[(i/2)%len(pinned)], t.APIAddrs()[(i/2)%len(pinned)]
		}
		load.Go(func() { rc.run(loadCtx) })
	}
	load.Go(func() { w.run(loadCtx) })

	cfg.Log(fmt.Sprintf("chaos on %s: seed %d, %v of faults, %d register clients on %d keys", t.Kind(), cfg.Seed, cfg.Duration, cfg.Clients, cfg.Keys))
	f := &faulter{t: t, c: failover, rng: rand.New(rand.NewPCG(rng.Uint64(), 2)), log: cfg.Log, only: cfg.Kinds}
	faultsStart := time.Since(start)
	deadline := time.Now().Add(cfg.Duration)
	var runErr error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if err := f.next(ctx); err != nil {
			runErr = err
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second + time.Duration(rng.Int64N(int64(2*time.Second)))):
		}
	}
	faultsEnd := time.Since(start)
	rep.Faults = f.records
	for _, r := range f.records {
		rep.FaultsBy[string(r.Kind)+" "+r.How]++
	}
	if runErr != nil {
		stopLoad()
		load.Wait()
		return rep, runErr
	}
	cfg.Log(fmt.Sprintf("%d faults done; the cluster is whole; checking", len(f.records)))

	// Check 7 runs while the load (and its scaling) goes on for a moment,
	// then with the load stopped.
	stopLoad()
	load.Wait()
	convergeStart := time.Now()
	convErr := poll.Until(ctx, convergeTimeout, "every workload to converge", w.converged)
	rep.Checks = append(rep.Checks, Check{Name: "7 workloads converge within 30 s after the faults", Pass: convErr == nil,
		Counts: fmt.Sprintf("converged after %v", time.Since(convergeStart).Round(100*time.Millisecond)), Errors: errList(convErr)})

	rep.Operations = stats.snapshot()
	rep.WriteAvail, rep.LongestGap = stats.availability(faultsStart, faultsEnd)

	// Check 2: the final state from every replica.
	ops := h.operations()
	var finalErrs []string
	finals := map[string][]string{}
	for i, c := range pinned {
		for k := range cfg.Keys {
			key := fmt.Sprintf("reg-%d", k)
			call := h.now()
			readCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			obj, err := c.Get(readCtx, configMapKind, namespace, key)
			cancel()
			out := regOutput{Outcome: outcomeOK}
			switch {
			case err == nil:
				out.Found, out.Value = true, obj.(*capstanv1.ConfigMap).GetData()["value"]
			case apierrors.IsNotFound(err):
			default:
				finalErrs = append(finalErrs, fmt.Sprintf("read %s from replica %d: %v", key, i+1, err))
				continue
			}
			ops = append(ops, porcupine.Operation{ClientId: cfg.Clients + i, Input: regInput{Key: key, Op: regGet}, Call: call, Output: out, Return: h.now()})
			finals[key] = append(finals[key], fmt.Sprintf("%v:%s", out.Found, out.Value))
		}
	}
	for key, vals := range finals {
		if slices.ContainsFunc(vals, func(v string) bool { return v != vals[0] }) {
			finalErrs = append(finalErrs, fmt.Sprintf("%s reads differently on the replicas: %v", key, vals))
		}
	}
	ackedWrites := acked.all()

	// Check 1.
	result, info := porcupine.CheckOperationsVerbose(registerModel, ops, 3*time.Minute)
	lin := Check{Name: "1 the ConfigMap history is linearizable", Pass: result == porcupine.Ok,
		Counts: fmt.Sprintf("%d operations (%d acknowledged writes, %d unknown outcomes), result %s", len(ops), len(ackedWrites), unknowns(ops), result)}
	if result != porcupine.Ok && cfg.OutDir != "" {
		path := filepath.Join(cfg.OutDir, "history.html")
		err := os.MkdirAll(cfg.OutDir, 0o755)
		if err == nil {
			err = porcupine.VisualizePath(registerModel, info, path)
		}
		if err == nil {
			rep.HistoryHTML = path
			lin.Errors = append(lin.Errors, "visualisation: "+path)
		} else {
			lin.Errors = append(lin.Errors, "no visualisation: "+err.Error())
		}
	}
	rep.Checks = append(rep.Checks, lin)
	rep.Checks = append(rep.Checks, Check{Name: "2 no acknowledged write lost: final reads from every replica agree and linearize", Pass: len(finalErrs) == 0 && result == porcupine.Ok,
		Counts: fmt.Sprintf("%d keys read from %d replicas after %d acknowledged writes", cfg.Keys, len(pinned), len(ackedWrites)), Errors: finalErrs})

	// Check 3.
	refusals := 0
	for _, role := range []Role{ControllerManager, Scheduler} {
		logs, err := t.Logs(ctx, role)
		if err == nil {
			refusals += strings.Count(logs, "LEASE_NOT_HELD")
		}
	}

	// Check 8: let the watch catch up with the newest acknowledged write.
	var newest int64
	for _, a := range ackedWrites {
		newest = max(newest, a.Version)
	}
	_ = poll.Until(ctx, 30*time.Second, "the config map watch to catch up", poll.True(func() bool { return cmWatch.reached(newest) }))
	stopWatches()
	watchers.Wait()

	pods.mu.Lock()
	rep.Checks = append(rep.Checks, Check{Name: "3 no write of a deposed lease holder accepted", Pass: len(pods.rebinds) == 0 && len(pods.overs) == 0,
		Counts: fmt.Sprintf("%d LEASE_NOT_HELD refusals in the components' logs; no pod bound twice, no workload above its bound (checks 4, 5)", refusals)})
	rep.Checks = append(rep.Checks, Check{Name: "4 no pod bound twice or to two nodes", Pass: len(pods.rebinds) == 0,
		Counts: fmt.Sprintf("%d pods followed over %d events", len(pods.nodeOf), pods.events), Errors: pods.rebinds})
	rep.Checks = append(rep.Checks, Check{Name: "5 no workload above replicas (+maxSurge)", Pass: len(pods.overs) == 0,
		Counts: fmt.Sprintf("most active pods seen: %s %d, %s %d; %d scales, %d rollouts", deploymentName, pods.maxSeen[deploymentName], replicaSetName, pods.maxSeen[replicaSetName], w.scales, w.rollouts), Errors: capped(pods.overs)})
	podWatchErr := pods.watchErr
	pods.mu.Unlock()

	faultedNodes := map[string]bool{}
	for _, r := range f.records {
		for _, n := range r.Nodes {
			faultedNodes[n] = true
		}
	}
	checkCtx, cancel := context.WithTimeout(ctx, time.Minute)
	checked, restarted, err := w.restartedPods(checkCtx, faultedNodes)
	cancel()
	rep.Checks = append(rep.Checks, Check{Name: "6 pods on workers never faulted never restarted", Pass: err == nil && len(restarted) == 0,
		Counts: fmt.Sprintf("%d pods on %d unfaulted workers", checked, len(unitsOf(t, func(u Unit) bool { return u.Role == Worker && !faultedNodes[u.Node] }))), Errors: append(restarted, errList(err)...)})

	cmWatch.mu.Lock()
	watchErrs := append(append([]string(nil), cmWatch.dupes...), cmWatch.disorder...)
	cmEvents := cmWatch.events
	for _, e := range []error{cmWatch.err, podWatchErr} {
		if e != nil && !errors.Is(e, context.Canceled) {
			watchErrs = append(watchErrs, "watch ended: "+e.Error())
		}
	}
	cmWatch.mu.Unlock()
	missing := cmWatch.missing(ackedWrites)
	watchErrs = append(watchErrs, capped(prefix("missed ", missing))...)
	rep.Checks = append(rep.Checks, Check{Name: "8 no watch event twice, out of order or missing", Pass: len(watchErrs) == 0,
		Counts: fmt.Sprintf("%d config map events; %d acknowledged writes, %d missing", cmEvents, len(ackedWrites), len(missing)), Errors: capped(watchErrs)})

	leases.mu.Lock()
	changes := append([]leaseChange(nil), leases.changes...)
	leases.mu.Unlock()
	var unexplained []string
	for i, c := range changes {
		changes[i] = explain(t, c, f.records)
		if changes[i].Fault == "" {
			unexplained = append(unexplained, fmt.Sprintf("%s: %s (epoch %d) lost it at %s with no fault of its own", c.Lease, c.From, c.FromEpoch, c.At.Format(time.StampMilli)))
		}
	}
	rep.LeaseMoves = changes
	rep.Checks = append(rep.Checks, Check{Name: "9 leases change hands only when their holder was faulted", Pass: len(unexplained) == 0,
		Counts: fmt.Sprintf("%d changes, %d explained by a fault of the holder", len(changes), len(changes)-len(unexplained)), Errors: unexplained})
	slices.SortFunc(rep.Checks, func(a, b Check) int { return strings.Compare(a.Name, b.Name) })
	return rep, nil
}

// leaseSlack: a holder that is faulted loses its lease at most a TTL
// (6 s) and an expiry check after the fault began, or when it comes back
// and finds itself deposed.
const leaseSlack = 15 * time.Second

// explain finds the fault of c's old holder that explains c.
func explain(t Target, c leaseChange, faults []FaultRecord) leaseChange {
	u, ok := holderUnit(t, c.From)
	for _, f := range faults {
		hit := f.Kind == FaultQuorumLoss || (ok && slices.Contains(f.Units, u.Name))
		if hit && !c.At.Before(f.Start) && c.At.Before(f.Restored.Add(leaseSlack)) {
			c.Fault = f.String()
			c.After = c.At.Sub(f.Start)
			return c
		}
	}
	return c
}

func unknowns(ops []porcupine.Operation) int {
	n := 0
	for _, op := range ops {
		if op.Output.(regOutput).Outcome == outcomeUnknown {
			n++
		}
	}
	return n
}

func errList(err error) []string {
	if err == nil {
		return nil
	}
	return []string{err.Error()}
}

func prefix(p string, s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = p + v
	}
	return out
}

// capped keeps the first 20 lines of a list, saying how many more.
func capped(s []string) []string {
	if len(s) <= 20 {
		return s
	}
	return append(s[:20:20], fmt.Sprintf("... and %d more", len(s)-20))
}

// WriteFiles writes report.json and report.txt into dir.
func (r *Report) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := jsonIndent(r)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), data, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "report.txt"), []byte(r.Text()), 0o644)
}
