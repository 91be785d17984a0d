// Package clusterstatus answers "what is the state of the control plane" for
// one API replica (capstan.v1.ClusterService) and keeps that replica
// registered in etcd so that every replica can list the others.
//
// Registration is a key /capstan-internal/apiservers/<name> holding the
// replica's ApiServer message, attached to an etcd lease that Run keeps
// alive: a replica that dies drops out when its lease expires, one that stops
// cleanly calls Deregister and drops out at once, and one that lost its lease
// (etcd without quorum for longer than the TTL) registers again once it can.
//
// GetClusterStatus always answers within its deadline, quorum or not: what
// needs a quorum is marked by quorum=false, and each etcd member's health
// comes from asking that member directly.
//
// A Service is safe for concurrent use; Run must be called at most once, and
// Deregister after Run has returned.
package clusterstatus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/apiserver/internal/leases"
)

// RegistrationPrefix is the etcd prefix of the replicas' registrations,
// outside the /capstan/ object keyspace so no API call can reach it.
const RegistrationPrefix = "/capstan-internal/apiservers/"

// LeaseNamespace is the namespace of the lease-gated components' Leases.
const LeaseNamespace = "capstan-system"

// Defaults for zero Options fields.
const (
	DefaultRegistrationTTL = 10 * time.Second
	DefaultCheckTimeout    = time.Second
)

// deregisterTimeout bounds the lease revocation when Run ends; after it the
// registration still expires with its lease.
const deregisterTimeout = 2 * time.Second

// Options configure a Service.
type Options struct {
	// Client reaches the etcd cluster. Required.
	Client *clientv3.Client
	// Self describes this replica; Self.Name is required and unique.
	Self *capstanv1.ApiServer
	// Logger receives registration changes; nil discards.
	Logger *slog.Logger
	// RegistrationTTL is the TTL of the registration lease (default
	// DefaultRegistrationTTL; whole seconds, at least one).
	RegistrationTTL time.Duration
	// CheckTimeout bounds the quorum read and each member's status request
	// (default DefaultCheckTimeout).
	CheckTimeout time.Duration
}

// Service implements capstanv1.ClusterServiceServer.
type Service struct {
	capstanv1.UnimplementedClusterServiceServer

	client       *clientv3.Client
	self         *capstanv1.ApiServer
	selfBytes    []byte
	logger       *slog.Logger
	ttlSeconds   int64
	checkTimeout time.Duration
	leasePrefix  string

	// mu guards lease: the registration lease Run last held, which
	// Deregister revokes (0: none).
	mu    sync.Mutex
	lease clientv3.LeaseID
}

// New checks opts and returns a Service; nothing is registered until Run.
func New(opts Options) (*Service, error) {
	if opts.Client == nil {
		return nil, errors.New("clusterstatus: Options.Client is nil")
	}
	if opts.Self.GetName() == "" {
		return nil, errors.New("clusterstatus: Options.Self.Name is empty")
	}
	if strings.Contains(opts.Self.GetName(), "/") {
		return nil, fmt.Errorf("clusterstatus: Options.Self.Name %q contains a slash", opts.Self.GetName())
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.RegistrationTTL == 0 {
		opts.RegistrationTTL = DefaultRegistrationTTL
	}
	if opts.RegistrationTTL < time.Second {
		return nil, fmt.Errorf("clusterstatus: Options.RegistrationTTL %v is below one second", opts.RegistrationTTL)
	}
	if opts.CheckTimeout <= 0 {
		opts.CheckTimeout = DefaultCheckTimeout
	}
	self := proto.CloneOf(opts.Self)
	selfBytes, err := proto.Marshal(self)
	if err != nil {
		return nil, fmt.Errorf("clusterstatus: encode Self: %w", err)
	}
	return &Service{
		client:       opts.Client,
		self:         self,
		selfBytes:    selfBytes,
		logger:       opts.Logger,
		ttlSeconds:   int64(opts.RegistrationTTL / time.Second),
		checkTimeout: opts.CheckTimeout,
		leasePrefix:  resource.MustLookup("lease").Prefix(LeaseNamespace),
	}, nil
}

// RegistrationKey is the etcd key of the named replica's registration.
func RegistrationKey(name string) string { return RegistrationPrefix + name }

// Run keeps this replica registered until ctx ends, and returns nil. It
// leaves the registration in place when it returns, as a process that is
// killed does: call Deregister for a clean stop. While etcd has no quorum it
// retries with back-off.
func (s *Service) Run(ctx context.Context) error {
	const minBackoff, maxBackoff = 200 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	failures := 0
	for {
		lease, kept, err := s.register(ctx)
		if err == nil {
			s.mu.Lock()
			s.lease = lease
			s.mu.Unlock()
			s.logger.Info("registered this replica", "key", RegistrationKey(s.self.GetName()), "lease-id", fmt.Sprintf("%x", lease), "ttl", time.Duration(s.ttlSeconds)*time.Second)
			failures, backoff = 0, minBackoff
			for range kept {
				// Drain the keep-alive answers; the channel closes when the
				// lease is lost or ctx ends.
			}
			if ctx.Err() != nil {
				return nil
			}
			s.mu.Lock()
			s.lease = 0
			s.mu.Unlock()
			s.logger.Warn("registration lease lost; registering again")
		} else if ctx.Err() == nil {
			failures++
			// The first failure says why; repeats while etcd is down
			// would only fill the log.
			level := slog.LevelDebug
			if failures == 1 {
				level = slog.LevelWarn
			}
			s.logger.Log(ctx, level, "cannot register this replica yet; retrying", "error", err, "failures", failures)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// Deregister removes this replica's registration at once, without waiting
// for its lease to expire; call it after Run has returned. It gives up after
// a couple of seconds or when ctx ends (the registration then expires with
// its lease), and logs rather than returns a failure: nothing is left to do
// about it.
func (s *Service) Deregister(ctx context.Context) {
	s.mu.Lock()
	lease := s.lease
	s.lease = 0
	s.mu.Unlock()
	if lease != 0 {
		s.revoke(ctx, lease)
	}
}

// register grants a lease, writes the registration under it and starts
// keeping it alive until ctx ends.
func (s *Service) register(ctx context.Context) (clientv3.LeaseID, <-chan *clientv3.LeaseKeepAliveResponse, error) {
	opCtx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), 2*s.checkTimeout)
	defer cancel()
	grant, err := s.client.Grant(opCtx, s.ttlSeconds)
	if err != nil {
		return 0, nil, fmt.Errorf("grant a registration lease: %w", err)
	}
	if _, err := s.client.Put(opCtx, RegistrationKey(s.self.GetName()), string(s.selfBytes), clientv3.WithLease(grant.ID)); err != nil {
		s.revoke(context.WithoutCancel(ctx), grant.ID)
		return 0, nil, fmt.Errorf("write the registration: %w", err)
	}
	kept, err := s.client.KeepAlive(ctx, grant.ID)
	if err != nil {
		s.revoke(context.WithoutCancel(ctx), grant.ID)
		return 0, nil, fmt.Errorf("keep the registration lease alive: %w", err)
	}
	return grant.ID, kept, nil
}

// revoke revokes a registration lease, which deletes the registration.
func (s *Service) revoke(ctx context.Context, lease clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(ctx, deregisterTimeout)
	defer cancel()
	if _, err := s.client.Revoke(ctx, lease); err != nil {
		s.logger.Warn("cannot revoke the registration lease; the registration expires with it", "lease-id", fmt.Sprintf("%x", lease), "error", err)
		return
	}
	s.logger.Info("deregistered this replica", "key", RegistrationKey(s.self.GetName()))
}

// GetClusterStatus implements capstanv1.ClusterServiceServer. It does not
// fail for lack of quorum: it reports quorum=false, and then the replicas
// and leases it lists are this replica's possibly stale view (a
// serializable read), or empty if even that failed.
func (s *Service) GetClusterStatus(ctx context.Context, _ *capstanv1.GetClusterStatusRequest) (*capstanv1.GetClusterStatusResponse, error) {
	var (
		wg      sync.WaitGroup
		state   clusterState
		members []*capstanv1.EtcdMember
	)
	wg.Go(func() { state = s.readState(ctx) })
	wg.Go(func() { members = s.members(ctx) })
	wg.Wait()
	return &capstanv1.GetClusterStatusResponse{
		Self:        proto.CloneOf(s.self),
		ApiServers:  state.apiServers,
		EtcdMembers: members,
		Leases:      state.leases,
		Quorum:      state.quorum,
		Revision:    state.revision,
	}, nil
}

type clusterState struct {
	quorum     bool
	revision   int64
	apiServers []*capstanv1.ApiServer
	leases     []*capstanv1.ComponentLease
}

// readState reads the registrations and the leases in one transaction:
// linearizable if etcd has a quorum (which is how quorum is decided), else
// from whichever member answers.
func (s *Service) readState(ctx context.Context) clusterState {
	read := func(ctx context.Context, opts ...clientv3.OpOption) (*clientv3.TxnResponse, error) {
		ctx, cancel := context.WithTimeout(ctx, s.checkTimeout)
		defer cancel()
		withPrefix := append([]clientv3.OpOption{clientv3.WithPrefix()}, opts...)
		return s.client.Txn(ctx).Then(
			clientv3.OpGet(RegistrationPrefix, withPrefix...),
			clientv3.OpGet(s.leasePrefix, withPrefix...),
			clientv3.OpGet(leases.CandidatePrefix+LeaseNamespace+"/", withPrefix...),
		).Commit()
	}
	var state clusterState
	resp, err := read(clientv3.WithRequireLeader(ctx))
	if err == nil {
		state.quorum = true
	} else {
		s.logger.Debug("cluster status: no linearizable read", "error", err)
		if resp, err = read(ctx, clientv3.WithSerializable()); err != nil {
			s.logger.Debug("cluster status: no serializable read either", "error", err)
			return state
		}
	}
	state.revision = resp.Header.GetRevision()
	for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
		var a capstanv1.ApiServer
		if err := proto.Unmarshal(kv.Value, &a); err != nil {
			s.logger.Warn("cluster status: skipping an undecodable registration", "key", string(kv.Key), "error", err)
			continue
		}
		state.apiServers = append(state.apiServers, &a)
	}
	for _, kv := range resp.Responses[1].GetResponseRange().GetKvs() {
		var l capstanv1.Lease
		if err := proto.Unmarshal(kv.Value, &l); err != nil {
			s.logger.Warn("cluster status: skipping an undecodable lease", "key", string(kv.Key), "error", err)
			continue
		}
		state.leases = append(state.leases, &capstanv1.ComponentLease{
			Name:                 l.GetMetadata().GetName(),
			Namespace:            l.GetMetadata().GetNamespace(),
			HolderIdentity:       l.GetSpec().GetHolderIdentity(),
			Epoch:                kv.CreateRevision, // the epoch is the key's create revision
			RenewTime:            l.GetStatus().GetRenewTime(),
			LeaseDurationSeconds: l.GetSpec().GetLeaseDurationSeconds(),
			SessionReplica:       l.GetStatus().GetSessionReplica(),
		})
	}
	// Standbys: /capstan-internal/lease-candidates/<ns>/<name>/<identity>.
	byName := map[string]*capstanv1.ComponentLease{}
	for _, l := range state.leases {
		byName[l.GetName()] = l
	}
	for _, kv := range resp.Responses[2].GetResponseRange().GetKvs() {
		rest := strings.TrimPrefix(string(kv.Key), leases.CandidatePrefix+LeaseNamespace+"/")
		name, identity, ok := strings.Cut(rest, "/")
		if !ok {
			continue
		}
		l := byName[name]
		if l == nil {
			l = &capstanv1.ComponentLease{Name: name, Namespace: LeaseNamespace}
			byName[name] = l
			state.leases = append(state.leases, l)
		}
		if identity != l.GetHolderIdentity() {
			l.Standbys = append(l.Standbys, identity)
		}
	}
	return state
}

// members lists the etcd members and asks each for its status. The list is
// a serializable read, so any live member can give it without a quorum; if
// none does, the client's endpoints are asked instead.
func (s *Service) members(ctx context.Context) []*capstanv1.EtcdMember {
	listCtx, cancel := context.WithTimeout(ctx, s.checkTimeout)
	list, err := s.client.MemberList(listCtx, clientv3.WithSerializable())
	cancel()
	var out []*capstanv1.EtcdMember
	if err == nil {
		for _, m := range list.Members {
			out = append(out, &capstanv1.EtcdMember{
				Id:         memberID(m.GetID()),
				Name:       m.GetName(),
				PeerUrls:   m.GetPeerURLs(),
				ClientUrls: m.GetClientURLs(),
				Learner:    m.GetIsLearner(),
			})
		}
	} else {
		s.logger.Debug("cluster status: no member list; asking the client's endpoints", "error", err)
		for _, ep := range s.client.Endpoints() {
			out = append(out, &capstanv1.EtcdMember{ClientUrls: []string{ep}})
		}
	}

	var wg sync.WaitGroup
	for _, m := range out {
		wg.Go(func() { s.memberStatus(ctx, m) })
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool {
		if out[i].GetName() != out[j].GetName() {
			return out[i].GetName() < out[j].GetName()
		}
		return out[i].GetId() < out[j].GetId()
	})
	return out
}

// memberStatus fills m's health from a Status request to its first client
// URL that answers.
func (s *Service) memberStatus(ctx context.Context, m *capstanv1.EtcdMember) {
	if len(m.GetClientUrls()) == 0 {
		m.Error = "not started: the member was added but has not joined yet"
		return
	}
	var errs []string
	for _, url := range m.GetClientUrls() {
		stCtx, cancel := context.WithTimeout(ctx, s.checkTimeout)
		st, err := s.client.Status(stCtx, url)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", url, err))
			continue
		}
		id := st.Header.GetMemberId()
		if m.Id == "" {
			m.Id = memberID(id)
		}
		m.Leader = st.Leader != 0 && st.Leader == id
		m.RaftTerm = st.RaftTerm
		m.RaftIndex = st.RaftIndex
		m.DbSize = st.DbSize
		m.Version = st.Version
		m.Learner = m.Learner || st.IsLearner
		switch {
		case len(st.Errors) > 0:
			m.Error = strings.Join(st.Errors, "; ")
		case st.Leader == 0:
			m.Error = "no leader: the member cannot reach a quorum"
		default:
			m.Healthy = true
		}
		return
	}
	m.Error = strings.Join(errs, "; ")
}

// memberID formats an id as etcdctl prints it.
func memberID(id uint64) string { return fmt.Sprintf("%x", id) }
