package chaos

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
)

var configMapKind = resource.MustLookup("ConfigMap")

// The register workload: clients create, read, update (conditional on the
// resource_version they read) and delete ConfigMaps reg-0..reg-N-1, each
// write with a value never written before, so a value names the write
// that made it. Every operation is recorded with its call and return time
// for the linearizability check; a write whose outcome is unknown (the
// call failed UNAVAILABLE or ran out of time) may have happened at any
// moment after its call, so it is recorded as returning never.

type regOp int

const (
	regGet regOp = iota
	regCreate
	regUpdate
	regDelete
)

func (o regOp) String() string {
	return [...]string{"get", "create", "update", "delete"}[o]
}

// regInput is one operation on one key.
type regInput struct {
	Key string
	Op  regOp
	// Value written (create, update).
	Value string
	// Expect is the value the update's resource_version was read with.
	Expect string
}

// regOutcome says how an operation ended.
type regOutcome int

const (
	outcomeOK regOutcome = iota
	outcomeNotFound
	outcomeExists
	outcomeConflict
	outcomeUnknown
)

// regOutput is what an operation returned.
type regOutput struct {
	Outcome regOutcome
	// Found and Value are a get's answer.
	Found bool
	Value string
}

// regState is one key's register: whether the ConfigMap exists, and its
// value.
type regState struct {
	Exists bool
	Value  string
}

// registerModel is the sequential specification, partitioned by key, with
// unknown outcomes nondeterministic.
var registerModel = (&porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(regInput).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() []interface{} { return []interface{}{regState{}} },
	Step: func(state, input, output interface{}) []interface{} {
		s, in, out := state.(regState), input.(regInput), output.(regOutput)
		applied := s
		possible := false
		switch in.Op {
		case regGet:
			if out.Outcome == outcomeOK && out.Found == s.Exists && (!s.Exists || out.Value == s.Value) {
				return []interface{}{s}
			}
			return nil
		case regCreate:
			possible = !s.Exists
			applied = regState{Exists: true, Value: in.Value}
			if out.Outcome == outcomeExists && s.Exists {
				return []interface{}{s}
			}
		case regUpdate:
			possible = s.Exists && s.Value == in.Expect
			applied = regState{Exists: true, Value: in.Value}
			if out.Outcome == outcomeConflict && s.Exists && s.Value != in.Expect {
				return []interface{}{s}
			}
			if out.Outcome == outcomeNotFound && !s.Exists {
				return []interface{}{s}
			}
		case regDelete:
			possible = s.Exists
			applied = regState{}
			if out.Outcome == outcomeNotFound && !s.Exists {
				return []interface{}{s}
			}
		}
		switch out.Outcome {
		case outcomeOK:
			if possible {
				return []interface{}{applied}
			}
		case outcomeUnknown:
			if possible {
				return []interface{}{s, applied}
			}
			return []interface{}{s}
		}
		return nil
	},
	Equal: func(a, b interface{}) bool { return a.(regState) == b.(regState) },
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(regInput), output.(regOutput)
		res := [...]string{"ok", "not found", "exists", "conflict", "unknown"}[out.Outcome]
		switch in.Op {
		case regGet:
			if out.Found {
				return fmt.Sprintf("get(%s) -> %s", in.Key, out.Value)
			}
			return fmt.Sprintf("get(%s) -> none", in.Key)
		case regUpdate:
			return fmt.Sprintf("update(%s, %s if %s) -> %s", in.Key, in.Value, in.Expect, res)
		}
		return fmt.Sprintf("%v(%s, %s) -> %s", in.Op, in.Key, in.Value, res)
	},
	DescribeState: func(state interface{}) string {
		if s := state.(regState); s.Exists {
			return s.Value
		}
		return "(none)"
	},
}).ToModel()

// history records operations from many goroutines.
type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
}

func (h *history) now() int64 { return time.Since(h.start).Nanoseconds() }

func (h *history) add(client int, in regInput, call int64, out regOutput) {
	ret := h.now()
	if out.Outcome == outcomeUnknown {
		ret = math.MaxInt64
	}
	h.mu.Lock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	h.mu.Unlock()
}

func (h *history) operations() []porcupine.Operation {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]porcupine.Operation(nil), h.ops...)
}

// outcomeOf classifies a write's error: definite refusals, or unknown.
func outcomeOf(err error) regOutcome {
	switch {
	case err == nil:
		return outcomeOK
	case apierrors.IsNotFound(err):
		return outcomeNotFound
	case apierrors.IsAlreadyExists(err):
		return outcomeExists
	case apierrors.IsConflict(err):
		return outcomeConflict
	}
	return outcomeUnknown
}

// registerClient is one client of the register workload.
type registerClient struct {
	id      int
	c       *client.Client
	via     string // "failover client" or the one replica it talks to
	ns      string
	keys    int
	rng     *rand.Rand
	h       *history
	stats   *opStats
	acked   *ackLog
	counter *valueCounter
	// seen maps, per key, a resource_version read to the value it had.
	seen map[string]map[int64]string
}

// valueCounter hands out values never written before.
type valueCounter struct {
	mu sync.Mutex
	n  int
}

func (v *valueCounter) next(client int) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.n++
	return fmt.Sprintf("c%d-v%d", client, v.n)
}

func (r *registerClient) run(ctx context.Context) {
	r.seen = map[string]map[int64]string{}
	for ctx.Err() == nil {
		r.step(ctx)
	}
}

// opTimeout bounds each operation, as a user's call would be.
const opTimeout = 5 * time.Second

func (r *registerClient) step(ctx context.Context) {
	key := fmt.Sprintf("reg-%d", r.rng.IntN(r.keys))
	callCtx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	call := r.h.now()
	switch p := r.rng.IntN(10); {
	case p < 4: // get
		obj, err := r.c.Get(callCtx, configMapKind, r.ns, key)
		r.stats.add("get", err)
		if err != nil && !apierrors.IsNotFound(err) {
			return // a failed read tells nothing
		}
		out := regOutput{Outcome: outcomeOK}
		if err == nil {
			cm := obj.(*capstanv1.ConfigMap)
			out.Found, out.Value = true, cm.GetData()["value"]
			if r.seen[key] == nil {
				r.seen[key] = map[int64]string{}
			}
			r.seen[key][cm.GetMetadata().GetResourceVersion()] = out.Value
		}
		if ctx.Err() == nil {
			r.h.add(r.id, regInput{Key: key, Op: regGet}, call, out)
		}
	case p < 6: // create
		v := r.counter.next(r.id)
		obj, err := r.c.Create(callCtx, &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Namespace: r.ns, Name: key}, Data: map[string]string{"value": v}})
		r.record(ctx, "create", regInput{Key: key, Op: regCreate, Value: v}, call, obj, err)
	case p < 9: // update, conditional on a version read before
		var rv int64
		var expect string
		for v, val := range r.seen[key] {
			if v > rv {
				rv, expect = v, val
			}
		}
		if rv == 0 {
			return
		}
		v := r.counter.next(r.id)
		obj, err := r.c.Update(callCtx, &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Namespace: r.ns, Name: key, ResourceVersion: rv}, Data: map[string]string{"value": v}})
		r.record(ctx, "update", regInput{Key: key, Op: regUpdate, Value: v, Expect: expect}, call, obj, err)
	default:
		_, err := r.c.Delete(callCtx, configMapKind, r.ns, key, nil)
		r.record(ctx, "delete", regInput{Key: key, Op: regDelete}, call, nil, err)
	}
}

func (r *registerClient) record(_ context.Context, what string, in regInput, call int64, obj any, err error) {
	r.stats.add(what, err)
	out := regOutput{Outcome: outcomeOf(err)}
	r.h.add(r.id, in, call, out)
	if err == nil && obj != nil {
		cm := obj.(*capstanv1.ConfigMap)
		r.acked.add(ackedWrite{Key: in.Key, Value: in.Value, Version: cm.GetMetadata().GetResourceVersion(), At: time.Now()})
		if r.seen[in.Key] == nil {
			r.seen[in.Key] = map[int64]string{}
		}
		r.seen[in.Key][cm.GetMetadata().GetResourceVersion()] = in.Value
	}
}

// ackedWrite is a create or update the API acknowledged.
type ackedWrite struct {
	Key, Value string
	Version    int64
	At         time.Time
}

type ackLog struct {
	mu     sync.Mutex
	writes []ackedWrite
}

func (a *ackLog) add(w ackedWrite) {
	a.mu.Lock()
	a.writes = append(a.writes, w)
	a.mu.Unlock()
}

func (a *ackLog) all() []ackedWrite {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]ackedWrite(nil), a.writes...)
}
