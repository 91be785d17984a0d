package etcd3

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/storage"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Request records (storage.WriteOptions.RequestID, ADR 0012).
//
// A write with a request id puts, in its own transaction, a record of the
// key it wrote and whether it put or deleted it, under
// RequestKeyPrefix/<minute>/<id>, <minute> being the minute of this
// replica's clock (Unix minutes, ten digits, so keys sort by time). The
// transaction also requires that no record of the id exists in the last
// requestCheckedMinutes minutes, and a failed transaction reads them, so
// a repeat of a recorded write is answered from its record. The record's
// mod revision is the write's revision, so the outcome of the write is
// etcd's history of the object at that revision (the revision before, for a
// delete).
//
// Records are grouped by minute so that they expire in bulk without an
// etcd lease per write (attaching every record to a lease cost a third of
// the API's write throughput): ExpireRequests deletes the minutes older
// than requestKeptMinutes. A record is thus found for at least
// requestCheckedMinutes-1 minutes (three) and gone within
// requestKeptMinutes+1 (six): longer than any Capstan client retries a
// write (client.WriteRetryWindow, two minutes), with a minute to spare for
// the clocks of API replicas that differ, and within the history etcd keeps
// by default (auto-compaction retention five minutes) for the time a
// record is looked for.
//
// The condition also looks requestCheckedMinutes-1 minutes ahead. A
// transaction is evaluated when etcd applies it, which can be long after
// the replica built it: one sent to an etcd member that was frozen (the
// etcd leader's host paused) waits in that member's socket or proposal
// queue, and is proposed when the member resumes, after the caller's retry
// was recorded elsewhere in a later minute. Looking only back, such a late
// create found no record of its id and re-created an object deleted
// meanwhile (seen by the chaos run's linearizability check).
const (
	RequestKeyPrefix      = "/capstan-internal/requests/"
	requestCheckedMinutes = 4
	requestKeptMinutes    = 5
	// RequestExpiryPeriod is how often ExpireRequests looks.
	RequestExpiryPeriod = 30 * time.Second
)

// record is the value of a request record.
type record struct {
	// Key is the object's key.
	Key string `json:"key"`
	// Deleted: the write deleted the key (else it put it).
	Deleted bool `json:"deleted,omitempty"`
	// Refused: the write was a create refused because the key existed
	// (ALREADY_EXISTS); it wrote nothing else.
	Refused bool `json:"refused,omitempty"`
}

// request is what a write with a request id adds to its transaction.
type request struct {
	id string
	// checked are the keys a record of id may have: the current minute's
	// first (the one a write puts), then the requestCheckedMinutes-1
	// minutes before and after it.
	checked []string
}

func minuteKey(minute int64) string { return fmt.Sprintf("%s%010d/", RequestKeyPrefix, minute) }

func newRequest(id string, now time.Time) *request {
	if id == "" {
		return nil
	}
	minute := now.Unix() / 60
	r := &request{id: id, checked: []string{minuteKey(minute) + id}}
	for i := int64(1); i < requestCheckedMinutes; i++ {
		r.checked = append(r.checked, minuteKey(minute-i)+id, minuteKey(minute+i)+id)
	}
	return r
}

// absent are the transaction conditions: the request is not recorded yet.
func (r *request) absent() []clientv3.Cmp {
	cmps := make([]clientv3.Cmp, len(r.checked))
	for i, k := range r.checked {
		cmps[i] = clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
	}
	return cmps
}

// gets read the request's possible records (in a transaction's Else
// branch, or with the object).
func (r *request) gets() []clientv3.Op {
	ops := make([]clientv3.Op, len(r.checked))
	for i, k := range r.checked {
		ops[i] = clientv3.OpGet(k)
	}
	return ops
}

// put records the write of objectKey.
func (r *request) put(objectKey string, deleted bool) clientv3.Op {
	data, _ := json.Marshal(record{Key: objectKey, Deleted: deleted}) // cannot fail on a string and a bool
	return clientv3.OpPut(r.checked[0], string(data))
}

// refusal is the transaction op, for a create's Else branch, that records
// the create's refusal: if no record of the request exists and the key does
// (and the fence, if any, holds: a broken fence is the answer then), the
// refusal is put. A refused create is thus refused for good. Without it, an
// earlier attempt of the same request still on its way — held in a frozen
// etcd member, say — could be applied after this attempt's ALREADY_EXISTS
// was returned, once the key was deleted: a create reported refused would
// happen (found by the chaos run). Updates and deletes need no such record:
// they are conditional on a mod revision that a refusal has seen pass.
func (r *request) refusal(objectKey string, fence *storage.Fence, clock []clientv3.Cmp) clientv3.Op {
	conds := append(r.absent(), clientv3.Compare(clientv3.CreateRevision(objectKey), "!=", 0))
	if fence != nil {
		conds = append(conds, fenceCompare(fence))
	}
	// A create etcd applies after its deadline records nothing either: a
	// retry of it may find the key gone and create it.
	conds = append(conds, clock...)
	data, _ := json.Marshal(record{Key: objectKey, Refused: true}) // cannot fail on a string and a bool
	return clientv3.OpTxn(conds, []clientv3.Op{clientv3.OpPut(r.checked[0], string(data))}, nil)
}

// recordIn returns the record read by the request's gets, which start at
// index first of a transaction response, or nil if there was none (or no
// request: first < 0).
func (r *request) recordIn(resp *clientv3.TxnResponse, first int) *mvccpb.KeyValue {
	if r == nil || first < 0 {
		return nil
	}
	for i := range r.checked {
		if kv := kvIn(resp, first+i); kv != nil {
			return kv
		}
	}
	return nil
}

// countIn returns the count of keys the (count-only) Get at index i of a
// transaction response found.
func countIn(resp *clientv3.TxnResponse, i int) int64 {
	if i < 0 || i >= len(resp.Responses) {
		return 0
	}
	return resp.Responses[i].GetResponseRange().GetCount()
}

// kvIn returns the key-value read by the Get at index i of a transaction
// response, or nil if it found none.
func kvIn(resp *clientv3.TxnResponse, i int) *mvccpb.KeyValue {
	if i < 0 || i >= len(resp.Responses) {
		return nil
	}
	if kvs := resp.Responses[i].GetResponseRange().GetKvs(); len(kvs) > 0 {
		return kvs[0]
	}
	return nil
}

// ExpireRequests deletes, every RequestExpiryPeriod until ctx ends, the
// request records of minutes older than requestKeptMinutes. Every API
// replica runs it; deleting the same minutes twice is harmless.
func (s *Store) ExpireRequests(ctx context.Context) {
	ticker := time.NewTicker(RequestExpiryPeriod)
	defer ticker.Stop()
	for {
		oldest := minuteKey(s.now().Unix()/60 - requestKeptMinutes)
		callCtx, cancel := context.WithTimeout(ctx, RequestExpiryPeriod)
		resp, err := s.client.Delete(withLeader(callCtx), RequestKeyPrefix, clientv3.WithRange(oldest))
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.log.WarnContext(ctx, "deleting expired request records failed; trying again later", "error", err)
		case resp.Deleted > 0:
			s.log.DebugContext(ctx, "deleted expired request records", "records", resp.Deleted)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// recorded answers a write whose request is already recorded: the outcome
// of the recorded write of key. newObj makes the object to decode into.
func (s *Store) recorded(ctx context.Context, req *request, key string, rec *mvccpb.KeyValue, newObj storage.NewFunc) (storage.Object, error) {
	var r record
	if err := json.Unmarshal(rec.Value, &r); err != nil {
		return nil, apierrors.Internal("request record %s is malformed: %v", rec.Key, err)
	}
	if r.Key != key {
		kind, ns, name := objectRef(r.Key)
		return nil, apierrors.Invalid(wellknown.MetadataRequestID,
			fmt.Sprintf("request id %q already names a write of %s %s; every call needs its own id", req.id, kind, qualifiedName(ns, name)))
	}
	if r.Refused {
		s.log.DebugContext(ctx, "a repeated create found its refusal recorded: refusing it again", "request-id", req.id, "key", key)
		kind, ns, name := objectRef(key)
		return nil, apierrors.AlreadyExists(kind, ns, name)
	}
	at := rec.ModRevision
	if r.Deleted {
		at-- // the object's last state is in the revision before
	}
	resp, err := s.client.Get(withLeader(ctx), key, clientv3.WithRev(at))
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		return s.recordedPastHistory(ctx, key, rec.ModRevision, r.Deleted, newObj)
	case err != nil:
		return nil, statusOf(err)
	case len(resp.Kvs) == 0:
		return nil, apierrors.Internal("request record %s: %s has no value at revision %d", rec.Key, key, at)
	}
	obj, err := s.decode(resp.Kvs[0], newObj)
	if err != nil {
		return nil, err
	}
	if r.Deleted {
		resource.Meta(obj).ResourceVersion = rec.ModRevision
	}
	s.log.DebugContext(ctx, "a repeated write found its request recorded: answering with its outcome",
		"request-id", req.id, "key", key, "revision", rec.ModRevision)
	return obj, nil
}

// recordedPastHistory answers a recorded write whose revision etcd has
// compacted (a retention shorter than the records', or a manual
// compaction): the write happened, but its exact result is gone. The
// answer is the object as it is now if it still exists, else an object
// with only its name, namespace and the write's revision.
func (s *Store) recordedPastHistory(ctx context.Context, key string, revision int64, deleted bool, newObj storage.NewFunc) (storage.Object, error) {
	s.log.WarnContext(ctx, "a repeated write found its request recorded, but etcd compacted the revision it wrote: answering with the object as it is now",
		"key", key, "revision", revision)
	if !deleted {
		resp, err := s.client.Get(withLeader(ctx), key)
		if err != nil {
			return nil, statusOf(err)
		}
		if len(resp.Kvs) > 0 {
			return s.decode(resp.Kvs[0], newObj)
		}
	}
	obj := newObj()
	_, ns, name := objectRef(key)
	meta := resource.Meta(obj)
	meta.Namespace, meta.Name, meta.ResourceVersion = ns, name, revision
	return obj, nil
}

// checkDeadline refuses a write whose context's deadline has passed: it is
// called immediately before a transaction is sent, so a replica frozen
// between reading a call and writing it writes nothing for a caller that
// has given up (the API server's handler contexts end before the caller's
// deadline).
func checkDeadline(ctx context.Context) error {
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return apierrors.DeadlinePassed("before this replica wrote to etcd", d)
	}
	return nil
}

func qualifiedName(namespace, name string) string {
	if namespace == "" {
		return name
	}
	return namespace + "/" + name
}
