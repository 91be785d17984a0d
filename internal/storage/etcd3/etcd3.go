// Package etcd3 implements storage.Interface on etcd v3.
//
// An object is stored as its protobuf encoding under its key; its
// metadata.resource_version is never stored but set on every read from the
// key's mod revision, so the version a client sees is exactly the revision
// etcd will compare against. Every write is one etcd transaction whose
// conditions carry all the checks (the key is free, the key is at the
// version that was read, the fencing lease is still at its epoch), so a
// write either happens with every check true or not at all.
//
// Every call runs with etcd's require-leader flag, so a member cut off from
// its cluster refuses at once instead of waiting, and every etcd failure is
// translated to the apierrors vocabulary (see statusOf): no quorum or no
// answer in time is UNAVAILABLE, a compacted revision OUT_OF_RANGE.
//
// The store knows no kind: fields that, like resource_version, are revisions
// of the key rather than part of the value are its caller's to fill, from the
// create revision handed to Options.StampCreateRevision.
//
// A Store is safe for concurrent use. Each Watch runs one goroutine and one
// etcd watch stream of its own, both gone when the watch ends.
package etcd3

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/storage"
)

// maxListChunk caps how many keys one range of a filtered, paginated List
// asks for: the chunk doubles while the predicate rejects most keys.
const maxListChunk = 10000

// compactionProbeTimeout bounds the extra watch that finds the compacted
// revision for an OUT_OF_RANGE error; it answers at once when it can.
const compactionProbeTimeout = 2 * time.Second

// Options configure a Store.
type Options struct {
	// Logger receives the errors the store decides to drop (nil: discard).
	Logger *slog.Logger
	// StampCreateRevision, if set, is called on every object the store
	// returns — read, listed, watched, or the result of a write — with the
	// create revision of its key, before the caller sees it. The create
	// revision is etcd's, like the mod revision behind resource_version, so
	// the store hands it out rather than storing it; what it means for a kind
	// (a Lease's epoch) is the caller's business. The only object returned
	// without it is a watch's Deleted event whose previous value etcd
	// compacted away: that object is known by its key alone. It must not
	// block; it is called from the caller's goroutine or a watch's.
	StampCreateRevision func(obj storage.Object, createRevision int64)
	// Now is this replica's wall clock, which request records are filed by
	// and the cluster clock is written from (nil: time.Now); tests set it
	// to play a replica whose clock differs.
	Now func() time.Time
}

// Store is the etcd implementation of storage.Interface.
type Store struct {
	client *clientv3.Client
	log    *slog.Logger
	stamp  func(obj storage.Object, createRevision int64)
	now    func() time.Time
	// clockLead is how far the cluster clock led this replica's wall
	// clock at its last measurement (a time.Duration; clock.go).
	clockLead atomic.Int64
	// clockSeen is the clock's value at this replica's last measurement,
	// clockSeenAt when it was read (with its monotonic reading).
	clockMu     sync.Mutex
	clockSeen   time.Time
	clockSeenAt time.Time
	// writeTxn commits the transaction of a create, update or delete;
	// tests replace it to deliver one to etcd late.
	writeTxn func(ctx context.Context, conds []clientv3.Cmp, then, orElse []clientv3.Op) (*clientv3.TxnResponse, error)
}

var _ storage.Interface = (*Store)(nil)

// New returns a store that keeps objects through client. The caller owns
// client and closes it after the store's last call has returned.
func New(client *clientv3.Client, opts Options) *Store {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stamp := opts.StampCreateRevision
	if stamp == nil {
		stamp = func(storage.Object, int64) {}
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	s := &Store{client: client, log: log, stamp: stamp, now: now}
	s.writeTxn = func(ctx context.Context, conds []clientv3.Cmp, then, orElse []clientv3.Op) (*clientv3.TxnResponse, error) {
		return client.Txn(withLeader(ctx)).If(conds...).Then(then...).Else(orElse...).Commit()
	}
	return s
}

// marshalOptions make equal objects encode to equal bytes.
var marshalOptions = proto.MarshalOptions{Deterministic: true}

// MaxValueBytes is the largest stored object: etcd refuses requests above
// 1.5 MiB, and the key and transaction need some of that.
const MaxValueBytes = 1536*1024 - 8*1024

// encode returns obj's stored form: its encoding without resource_version.
// obj must be private to the caller: its resource_version is cleared.
func encode(key string, obj storage.Object) ([]byte, error) {
	resource.Meta(obj).ResourceVersion = 0
	data, err := marshalOptions.Marshal(obj)
	if err != nil {
		return nil, apierrors.Internal("encode %s: %v", key, err)
	}
	if len(data) > MaxValueBytes {
		return nil, apierrors.TooLarge("object "+key, len(data), MaxValueBytes)
	}
	return data, nil
}

// decode reads a stored value into a new object stamped with its key's
// revisions: resource_version from the mod revision, and whatever
// StampCreateRevision derives from the create revision.
func (s *Store) decode(kv *mvccpb.KeyValue, newObj storage.NewFunc) (storage.Object, error) {
	obj := newObj()
	if err := proto.Unmarshal(kv.Value, obj); err != nil {
		return nil, apierrors.Internal("stored value of %s is not a valid %s: %v",
			kv.Key, obj.ProtoReflect().Descriptor().FullName(), err)
	}
	resource.Meta(obj).ResourceVersion = kv.ModRevision
	s.stamp(obj, kv.CreateRevision)
	return obj, nil
}

// withLeader marks ctx so that an etcd member without a leader refuses the
// request at once rather than holding it until ctx ends.
func withLeader(ctx context.Context) context.Context { return clientv3.WithRequireLeader(ctx) }

// fenceCompare is the transaction condition a fence adds: the lease key
// still has the create revision of the acquisition that issued the epoch.
func fenceCompare(f *storage.Fence) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(f.LeaseKey), "=", f.Epoch)
}

// fenceHolds reads the lease key's state from a failed transaction's Else
// branch (the response at index i) and reports whether the fence was true.
func fenceHolds(f *storage.Fence, resp *clientv3.TxnResponse, i int) bool {
	kvs := resp.Responses[i].GetResponseRange().GetKvs()
	return len(kvs) == 1 && kvs[0].CreateRevision == f.Epoch
}

func leaseNotHeld(f *storage.Fence) error {
	return apierrors.LeaseNotHeld(f.Namespace, f.Name, f.Epoch)
}

// checkFence rejects a fence that can never hold, so that an epoch of 0
// does not match an absent lease key.
func checkFence(f *storage.Fence) error {
	if f != nil && f.Epoch <= 0 {
		return leaseNotHeld(f)
	}
	return nil
}

// Create implements storage.Interface.
func (s *Store) Create(ctx context.Context, key string, obj storage.Object, opts storage.WriteOptions) (storage.Object, error) {
	if err := checkFence(opts.Fence); err != nil {
		return nil, err
	}
	stored := resource.Clone(obj)
	data, err := encode(key, stored)
	if err != nil {
		return nil, err
	}
	var putOpts []clientv3.OpOption
	if opts.TTLLease != 0 {
		putOpts = append(putOpts, clientv3.WithLease(clientv3.LeaseID(opts.TTLLease)))
	}
	conds := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)}
	then := []clientv3.Op{clientv3.OpPut(key, string(data), putOpts...)}
	var orElse []clientv3.Op
	fenceAt, recordAt := -1, -1
	if opts.Fence != nil {
		conds = append(conds, fenceCompare(opts.Fence))
		fenceAt, orElse = len(orElse), append(orElse, clientv3.OpGet(opts.Fence.LeaseKey, clientv3.WithKeysOnly()))
	}
	req := newRequest(opts.RequestID, s.now())
	if req != nil {
		conds = append(conds, req.absent()...)
		then = append(then, req.put(key, false))
		recordAt, orElse = len(orElse), append(orElse, req.gets()...)
	}
	var resp *clientv3.TxnResponse
	for clockMeasured := false; ; clockMeasured = true {
		if err := checkDeadline(ctx); err != nil {
			return nil, err
		}
		// The clock condition is stated anew for each attempt, with the
		// lead measured now; the refusal is recorded only by a
		// transaction that is on time.
		txnConds, txnElse := conds[:len(conds):len(conds)], orElse[:len(orElse):len(orElse)]
		deadline, clockCmps := s.clockConds(ctx)
		txnConds = append(txnConds, clockCmps...)
		keyAt := len(txnElse)
		txnElse = append(txnElse, clientv3.OpGet(key, clientv3.WithCountOnly()))
		if req != nil {
			txnElse = append(txnElse, req.refusal(key, opts.Fence, clockCmps))
		}
		clockAt := -1
		if len(clockCmps) > 0 {
			clockAt, txnElse = len(txnElse), append(txnElse, clientv3.OpGet(ClockKey))
		}
		var err error
		resp, err = s.writeTxn(ctx, txnConds, then, txnElse)
		if err != nil {
			return nil, statusOf(err)
		}
		if resp.Succeeded {
			break
		}
		if rec := req.recordIn(resp, recordAt); rec != nil {
			return s.recorded(ctx, req, key, rec, newLike(obj))
		}
		if opts.Fence != nil && !fenceHolds(opts.Fence, resp, fenceAt) {
			return nil, leaseNotHeld(opts.Fence)
		}
		if c := clockIn(resp, clockAt, deadline); c != clockFine {
			// Missing (a new cluster), or past the deadline while this
			// call still waits for it: this replica's measure of the
			// clock is off. Measure it, and try once more.
			switch {
			case clockMeasured && c == clockMissing:
				return nil, apierrors.Internal("the cluster clock %s is gone again right after this write started it", ClockKey)
			case clockMeasured:
				return nil, lateWrite(ctx)
			}
			if err := s.measureClock(ctx, c); err != nil {
				return nil, err
			}
			continue
		}
		kind, ns, name := objectRef(key)
		if countIn(resp, keyAt) == 0 {
			return nil, apierrors.Internal("the create of %s %s failed with the name free and no reason found", kind, qualifiedName(ns, name))
		}
		return nil, apierrors.AlreadyExists(kind, ns, name)
	}
	// The key was created by this transaction: both revisions are its own.
	resource.Meta(stored).ResourceVersion = resp.Header.Revision
	s.stamp(stored, resp.Header.Revision)
	return stored, nil
}

// newLike makes empty objects of obj's type.
func newLike(obj storage.Object) storage.NewFunc {
	return func() storage.Object { return obj.ProtoReflect().New().Interface().(storage.Object) }
}

// Get implements storage.Interface.
func (s *Store) Get(ctx context.Context, key string, newObj storage.NewFunc) (storage.Object, error) {
	resp, err := s.client.Get(withLeader(ctx), key)
	if err != nil {
		return nil, statusOf(err)
	}
	if len(resp.Kvs) == 0 {
		kind, ns, name := objectRef(key)
		return nil, apierrors.NotFound(kind, ns, name)
	}
	return s.decode(resp.Kvs[0], newObj)
}

// checkPreconditions returns ABORTED if cur does not satisfy pre.
func checkPreconditions(key string, cur storage.Object, pre storage.Preconditions) error {
	meta := resource.Meta(cur)
	var detail string
	switch {
	case pre.ResourceVersion != 0 && pre.ResourceVersion != meta.GetResourceVersion():
		detail = fmt.Sprintf("its resource_version is %d, not %d", meta.GetResourceVersion(), pre.ResourceVersion)
	case pre.UID != "" && pre.UID != meta.GetUid():
		detail = fmt.Sprintf("its uid is %q, not %q", meta.GetUid(), pre.UID)
	default:
		return nil
	}
	kind, ns, name := objectRef(key)
	return apierrors.Conflict(kind, ns, name, detail)
}

// conditionalWrite commits ops (none: it only checks) if key is still at
// the mod revision of cur, the fence holds and the request is not recorded
// yet; with a request, the record of the write is put along with ops. It
// returns the transaction response when it committed; otherwise the key's
// current value (nil if it is gone), so the caller can retry from it, or
// the request's record if the request was recorded meanwhile. A broken
// fence is an error, and so is etcd applying the write after ctx's deadline
// (the cluster clock, clock.go).
func (s *Store) conditionalWrite(ctx context.Context, cur *mvccpb.KeyValue, ops []clientv3.Op, deleted bool, fence *storage.Fence, req *request) (committed *clientv3.TxnResponse, fresh, rec *mvccpb.KeyValue, err error) {
	key := string(cur.Key)
	conds := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", cur.ModRevision)}
	orElse := []clientv3.Op{clientv3.OpGet(key)}
	fenceAt, recordAt := -1, -1
	if fence != nil {
		conds = append(conds, fenceCompare(fence))
		fenceAt, orElse = len(orElse), append(orElse, clientv3.OpGet(fence.LeaseKey, clientv3.WithKeysOnly()))
	}
	if req != nil {
		conds = append(conds, req.absent()...)
		recordAt, orElse = len(orElse), append(orElse, req.gets()...)
		if len(ops) > 0 {
			ops = append(ops, req.put(key, deleted))
		}
	}
	clockAt, deadline := -1, ""
	if len(ops) > 0 {
		if err := checkDeadline(ctx); err != nil {
			return nil, nil, nil, err
		}
		var clockCmps []clientv3.Cmp
		deadline, clockCmps = s.clockConds(ctx)
		if len(clockCmps) > 0 {
			conds = append(conds, clockCmps...)
			clockAt, orElse = len(orElse), append(orElse, clientv3.OpGet(ClockKey))
		}
	}
	resp, err := s.writeTxn(ctx, conds, ops, orElse)
	if err != nil {
		return nil, nil, nil, statusOf(err)
	}
	if resp.Succeeded {
		return resp, nil, nil, nil
	}
	if rec := req.recordIn(resp, recordAt); rec != nil {
		return nil, nil, rec, nil
	}
	if fence != nil && !fenceHolds(fence, resp, fenceAt) {
		return nil, nil, nil, leaseNotHeld(fence)
	}
	if c := clockIn(resp, clockAt, deadline); c != clockFine {
		// Measured again, the caller tries again from the value read (its
		// loop ends with ctx's deadline).
		if err := s.measureClock(ctx, c); err != nil {
			return nil, nil, nil, err
		}
	}
	return nil, kvIn(resp, 0), nil, nil
}

// read returns the current value of key, nil if absent, and with a request
// the request's record, nil if it has none, both in one read.
func (s *Store) read(ctx context.Context, key string, req *request) (kv, rec *mvccpb.KeyValue, err error) {
	if req == nil {
		resp, err := s.client.Get(withLeader(ctx), key)
		if err != nil {
			return nil, nil, statusOf(err)
		}
		if len(resp.Kvs) == 0 {
			return nil, nil, nil
		}
		return resp.Kvs[0], nil, nil
	}
	resp, err := s.client.Txn(withLeader(ctx)).Then(append([]clientv3.Op{clientv3.OpGet(key)}, req.gets()...)...).Commit()
	if err != nil {
		return nil, nil, statusOf(err)
	}
	return kvIn(resp, 0), req.recordIn(resp, 1), nil
}

// Update implements storage.Interface. Without TTLLease the key keeps the
// etcd lease it has, if any. An error from update is returned unchanged.
// A lost race is retried from the value that won it for as long as ctx
// allows.
func (s *Store) Update(ctx context.Context, key string, newObj storage.NewFunc, pre storage.Preconditions, update storage.UpdateFunc, opts storage.WriteOptions) (storage.Object, error) {
	if err := checkFence(opts.Fence); err != nil {
		return nil, err
	}
	putOpts := []clientv3.OpOption{clientv3.WithIgnoreLease()}
	if opts.TTLLease != 0 {
		putOpts = []clientv3.OpOption{clientv3.WithLease(clientv3.LeaseID(opts.TTLLease))}
	}
	req := newRequest(opts.RequestID, s.now())
	kv, rec, err := s.read(ctx, key, req)
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		if rec != nil {
			return s.recorded(ctx, req, key, rec, newObj)
		}
		if kv == nil {
			kind, ns, name := objectRef(key)
			return nil, apierrors.NotFound(kind, ns, name)
		}
		cur, err := s.decode(kv, newObj)
		if err != nil {
			return nil, err
		}
		if err := checkPreconditions(key, cur, pre); err != nil {
			return nil, err
		}
		next, err := update(resource.Clone(cur))
		if err != nil {
			return nil, err
		}
		if next == nil {
			return nil, apierrors.Internal("update of %s returned no object", key)
		}
		// Like Kubernetes, an update that changes nothing writes nothing:
		// no new revision, no watch event. Its fence and request are still
		// checked, so a deposed leader is told, and a repeat of a recorded
		// write gets its outcome.
		resource.Meta(next).ResourceVersion = kv.ModRevision
		var ops []clientv3.Op
		unchanged := proto.Equal(next, cur)
		if unchanged && opts.Fence == nil && req == nil {
			return cur, nil
		}
		if !unchanged {
			data, err := encode(key, next)
			if err != nil {
				return nil, err
			}
			ops = append(ops, clientv3.OpPut(key, string(data), putOpts...))
		}
		resp, fresh, recorded, err := s.conditionalWrite(ctx, kv, ops, false, opts.Fence, req)
		if err != nil {
			return nil, err
		}
		if resp != nil && unchanged {
			return cur, nil
		}
		if resp != nil {
			// A put keeps the key's create revision.
			resource.Meta(next).ResourceVersion = resp.Header.Revision
			s.stamp(next, kv.CreateRevision)
			return next, nil
		}
		s.log.DebugContext(ctx, "update lost a race; retrying", "key", key, "attempt", attempt)
		kv, rec = fresh, recorded
	}
}

// Delete implements storage.Interface. A lost race with another write is
// retried from the value that won it (the preconditions are checked again).
func (s *Store) Delete(ctx context.Context, key string, newObj storage.NewFunc, pre storage.Preconditions, opts storage.WriteOptions) (storage.Object, error) {
	if err := checkFence(opts.Fence); err != nil {
		return nil, err
	}
	req := newRequest(opts.RequestID, s.now())
	kv, rec, err := s.read(ctx, key, req)
	if err != nil {
		return nil, err
	}
	for {
		if rec != nil {
			return s.recorded(ctx, req, key, rec, newObj)
		}
		if kv == nil {
			kind, ns, name := objectRef(key)
			return nil, apierrors.NotFound(kind, ns, name)
		}
		cur, err := s.decode(kv, newObj)
		if err != nil {
			return nil, err
		}
		if err := checkPreconditions(key, cur, pre); err != nil {
			return nil, err
		}
		resp, fresh, recorded, err := s.conditionalWrite(ctx, kv, []clientv3.Op{clientv3.OpDelete(key)}, true, opts.Fence, req)
		if err != nil {
			return nil, err
		}
		if resp != nil {
			resource.Meta(cur).ResourceVersion = resp.Header.Revision
			return cur, nil
		}
		kv, rec = fresh, recorded
	}
}

// continueToken is the decoded form of a List page token.
type continueToken struct {
	// Key is the first key of the next page.
	Key string `json:"k"`
	// Revision is the revision every page is read at.
	Revision int64 `json:"r"`
}

func encodeContinue(key string, rev int64) string {
	data, _ := json.Marshal(continueToken{Key: key, Revision: rev}) // cannot fail on a string and an int
	return base64.RawURLEncoding.EncodeToString(data)
}

// decodeContinue parses a page token and checks that it continues a list of
// prefix: a token must not read keys outside the range it was issued for.
func decodeContinue(token, prefix string) (continueToken, error) {
	invalid := func(why string) error {
		return apierrors.Invalid(resource.FieldPageToken, "not a page token of this list: "+why)
	}
	data, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return continueToken{}, invalid("not base64")
	}
	var ct continueToken
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ct); err != nil {
		return continueToken{}, invalid("malformed")
	}
	if ct.Revision <= 0 {
		return continueToken{}, invalid("no revision")
	}
	if !strings.HasPrefix(ct.Key, prefix) || len(ct.Key) == len(prefix) {
		return continueToken{}, invalid("issued for another list")
	}
	return ct, nil
}

// List implements storage.Interface. With a Limit it reads the range in
// chunks at the first chunk's revision until Limit objects match or the
// range ends, so a selective predicate still fills a page.
func (s *Store) List(ctx context.Context, prefix string, newObj storage.NewFunc, opts storage.ListOptions) (storage.ListResult, error) {
	ctx = withLeader(ctx)
	start, rev := prefix, int64(0)
	if opts.Continue != "" {
		ct, err := decodeContinue(opts.Continue, prefix)
		if err != nil {
			return storage.ListResult{}, err
		}
		start, rev = ct.Key, ct.Revision
	}
	rangeEnd := clientv3.GetPrefixRangeEnd(prefix)
	limit := max(opts.Limit, 0)
	chunk := limit
	var result storage.ListResult
	for {
		getOpts := []clientv3.OpOption{clientv3.WithRange(rangeEnd)}
		if rev != 0 {
			getOpts = append(getOpts, clientv3.WithRev(rev))
		}
		if chunk > 0 {
			getOpts = append(getOpts, clientv3.WithLimit(chunk))
		}
		resp, err := s.client.Get(ctx, start, getOpts...)
		if err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				return storage.ListResult{}, s.expired(ctx, rev)
			}
			return storage.ListResult{}, statusOf(err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for i, kv := range resp.Kvs {
			obj, err := s.decode(kv, newObj)
			if err != nil {
				return storage.ListResult{}, err
			}
			if !opts.Predicate.Matches(obj) {
				continue
			}
			result.Items = append(result.Items, obj)
			if limit > 0 && int64(len(result.Items)) == limit {
				if i < len(resp.Kvs)-1 || resp.More {
					result.Continue = encodeContinue(string(kv.Key)+"\x00", rev)
				}
				result.Revision = rev
				return result, nil
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			result.Revision = rev
			return result, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		chunk = min(2*chunk, max(limit, maxListChunk))
	}
}

// expired builds the OUT_OF_RANGE error for a read at a compacted revision.
// etcd's range error does not say up to where it compacted; a watch from
// that revision does, so it asks one.
func (s *Store) expired(ctx context.Context, requested int64) error {
	ctx, cancel := context.WithTimeout(ctx, compactionProbeTimeout)
	defer cancel()
	w := clientv3.NewWatcher(s.client)
	defer func() {
		if err := w.Close(); err != nil {
			s.log.WarnContext(ctx, "close compaction probe watcher", "error", err)
		}
	}()
	if resp, ok := <-w.Watch(ctx, resource.KeyRoot, clientv3.WithRev(requested)); ok && resp.CompactRevision != 0 {
		return apierrors.Expired(requested, resp.CompactRevision)
	}
	// The probe did not say; the compaction is past the requested revision.
	return apierrors.Expired(requested, requested+1)
}

// Revision implements storage.Interface with a linearizable read of the
// root key: its header carries the store's revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	resp, err := s.client.Get(withLeader(ctx), resource.KeyRoot, clientv3.WithCountOnly())
	if err != nil {
		return 0, statusOf(err)
	}
	return resp.Header.Revision, nil
}

// objectRef names the object stored under key for an error message: the
// kind, namespace and name of /capstan/<resource>/<namespace>/<name> or
// /capstan/<resource>/<name>. A key of no known kind is named by its
// resource segment and the rest of the key.
func objectRef(key string) (kind, namespace, name string) {
	rest, ok := strings.CutPrefix(key, resource.KeyRoot)
	if !ok {
		return "object", "", key
	}
	res, tail, ok := strings.Cut(rest, "/")
	if !ok {
		return "object", "", key
	}
	k, known := resource.Lookup(res)
	if !known {
		return res, "", tail
	}
	if k.Namespaced {
		if ns, n, ok := strings.Cut(tail, "/"); ok {
			return k.Name, ns, n
		}
	}
	return k.Name, "", tail
}

// unavailable are the etcd errors that mean "no quorum, or no answer in
// time": safe to retry, possibly through another member.
var unavailable = []error{
	rpctypes.ErrTimeout, rpctypes.ErrTimeoutDueToLeaderFail, rpctypes.ErrTimeoutDueToConnectionLost,
	rpctypes.ErrTimeoutWaitAppliedIndex, rpctypes.ErrNoLeader, rpctypes.ErrLeaderChanged,
	rpctypes.ErrStopped, rpctypes.ErrTooManyRequests,
}

// statusOf translates an etcd client error to the apierrors vocabulary.
//
// A deadline is UNAVAILABLE, not DEADLINE_EXCEEDED: the API server gives a
// storage call less time than its caller has, so an expired deadline here
// means etcd did not answer in time, and the caller should try another
// replica. A cancelled context is CANCELED.
// StatusOf maps an error of the etcd client to the API's status errors, as
// every Store method does: for code that talks to etcd directly.
func StatusOf(err error) error { return statusOf(err) }

func statusOf(err error) error {
	if err == nil {
		return nil
	}
	var etcdErr rpctypes.EtcdError
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "storage call cancelled: "+err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return apierrors.NoQuorum(fmt.Errorf("etcd did not answer in time: %w", err))
	case errors.Is(err, rpctypes.ErrCompacted):
		// Callers that know the revision asked for build a precise error.
		return apierrors.Expired(0, 0)
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return apierrors.PreconditionFailed("the etcd lease of the write does not exist (expired or revoked)")
	}
	for _, u := range unavailable {
		if errors.Is(err, u) {
			return apierrors.NoQuorum(err)
		}
	}
	if errors.As(err, &etcdErr) {
		if etcdErr.Code() == codes.Unavailable || etcdErr.Code() == codes.DeadlineExceeded {
			return apierrors.NoQuorum(err)
		}
		return apierrors.Internal("etcd: %v", err)
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return apierrors.NoQuorum(err)
	case codes.Canceled:
		// The client turns a cancellation of the caller's context into
		// context.Canceled; a bare CANCELED means its connection closed.
		return apierrors.NoQuorum(err)
	}
	return apierrors.Internal("etcd: %v", err)
}
