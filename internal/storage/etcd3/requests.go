package etcd3

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
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
// A write with a request id puts, in its own transaction, the key
// RequestKeyPrefix+id with the key it wrote and whether it put or deleted
// it; the transaction also requires that key to be absent. The record's mod
// revision is the write's revision, so the outcome of the write is etcd's
// history of the object at that revision (the revision before, for a
// delete). Records are attached to an etcd lease of this store, so etcd
// deletes them in bulk when it expires: a lease is granted with a TTL of
// RequestRecordTTL plus requestLeaseRotation and replaced every
// requestLeaseRotation, so a record lives between RequestRecordTTL and
// RequestRecordTTL + requestLeaseRotation. That is longer than any Capstan
// client retries a write (client.WriteRetryWindow) and shorter than the
// history etcd keeps (auto-compaction retention, 5 minutes by default).
const (
	RequestKeyPrefix     = "/capstan-internal/requests/"
	RequestRecordTTL     = 3 * time.Minute
	requestLeaseRotation = 30 * time.Second
)

// record is the value of a request record.
type record struct {
	// Key is the object's key.
	Key string `json:"key"`
	// Deleted: the write deleted the key (else it put it).
	Deleted bool `json:"deleted,omitempty"`
}

// request is what a write with a request id adds to its transaction.
type request struct {
	id  string
	key string // the record's key
}

func newRequest(id string) *request {
	if id == "" {
		return nil
	}
	return &request{id: id, key: RequestKeyPrefix + id}
}

// absent is the transaction condition: the request is not recorded yet.
func (r *request) absent() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(r.key), "=", 0)
}

// get reads the record (in a transaction's Else branch, or with the object).
func (r *request) get() clientv3.Op { return clientv3.OpGet(r.key) }

// put records the write of objectKey under lease.
func (r *request) put(objectKey string, deleted bool, lease clientv3.LeaseID) clientv3.Op {
	data, _ := json.Marshal(record{Key: objectKey, Deleted: deleted}) // cannot fail on a string and a bool
	return clientv3.OpPut(r.key, string(data), clientv3.WithLease(lease))
}

// recordIn returns the record read by the Get at index i of a transaction
// response, or nil if there was none.
func recordIn(resp *clientv3.TxnResponse, i int) *mvccpb.KeyValue {
	if i < 0 || i >= len(resp.Responses) {
		return nil
	}
	if kvs := resp.Responses[i].GetResponseRange().GetKvs(); len(kvs) > 0 {
		return kvs[0]
	}
	return nil
}

// recordLeases hands out the etcd lease new records are attached to.
type recordLeases struct {
	mu      sync.Mutex
	id      clientv3.LeaseID
	granted time.Time // monotonic: a frozen process rotates when it resumes
}

// lease returns a lease that outlives RequestRecordTTL from now, granting
// a new one every requestLeaseRotation.
func (s *Store) recordLease(ctx context.Context) (clientv3.LeaseID, error) {
	l := &s.recordLeases
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.id != 0 && time.Since(l.granted) < requestLeaseRotation {
		return l.id, nil
	}
	granted := time.Now()
	resp, err := s.client.Grant(withLeader(ctx), int64((RequestRecordTTL+requestLeaseRotation)/time.Second))
	if err != nil {
		return 0, statusOf(err)
	}
	l.id, l.granted = resp.ID, granted
	return l.id, nil
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
