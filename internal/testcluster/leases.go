package testcluster

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/leaderelection"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Holding is one holding of a lease: its holder and its epoch, the
// fencing token every write of the holder carries. Holdings compare with
// ==.
type Holding struct {
	Holder string
	Epoch  int64
}

func (h Holding) String() string {
	if h == (Holding{}) {
		return "nobody"
	}
	return fmt.Sprintf("%s at epoch %d", h.Holder, h.Epoch)
}

// HoldingOf is the holding a Lease object records, its holder named by the
// candidate's identity (the process name) without the nonce of the process
// (leaderelection.IdentityOf).
func HoldingOf(l *capstanv1.Lease) Holding {
	return Holding{Holder: leaderelection.IdentityOf(l.GetSpec().GetHolderIdentity()), Epoch: l.GetStatus().GetEpoch()}
}

// Lease reads the named lease of a lease-gated component (in
// wellknown.SystemNamespace).
func (c *Cluster) Lease(ctx context.Context, lease string) (*capstanv1.Lease, error) {
	resp, err := c.client.Leases().GetLease(ctx, &capstanv1.GetLeaseRequest{Namespace: wellknown.SystemNamespace, Name: lease})
	if err != nil {
		return nil, fmt.Errorf("testcluster: lease %s: %w", lease, err)
	}
	return resp.GetLease(), nil
}

// LeaseHolding reads the current holding of a component's lease.
func (c *Cluster) LeaseHolding(ctx context.Context, lease string) (Holding, error) {
	l, err := c.Lease(ctx, lease)
	if err != nil {
		return Holding{}, err
	}
	return HoldingOf(l), nil
}

// CheckSettled looks once whether a lease-gated component has settled: a
// candidate holds the lease and its /healthz says that it leads at that
// epoch, and every other candidate that runs stands by — its /healthz
// says that it does not lead and has seen that holding, so it watches the
// lease and will take it the moment it is deleted. It returns the holding
// if so.
func (c *Cluster) CheckSettled(ctx context.Context, lease string) (Holding, error) {
	h, err := c.LeaseHolding(ctx, lease)
	if err != nil {
		return Holding{}, err
	}
	candidates := c.Candidates(lease)
	if !slices.Contains(candidates, h.Holder) {
		return Holding{}, fmt.Errorf("the lease is held by %v, not by one of %v", h, candidates)
	}
	for _, st := range c.lc.Status() {
		if !st.Running || !slices.Contains(candidates, st.Name) {
			continue
		}
		hz, err := c.Health(ctx, st.Name)
		if err != nil {
			return Holding{}, err
		}
		if leads := st.Name == h.Holder; hz.Leading != leads || hz.Leader != h.Holder || hz.LeaderEpoch != h.Epoch {
			return Holding{}, fmt.Errorf("the lease is held by %v; %s reports %+v", h, st.Name, hz)
		}
	}
	return h, nil
}

// WaitSettled waits until the component has settled (CheckSettled) and
// returns the holding.
func (c *Cluster) WaitSettled(ctx context.Context, lease string, timeout time.Duration) (Holding, error) {
	var got Holding
	err := poll.Until(ctx, timeout, "the "+lease+" candidates to settle: one leads, the others stand by", func(ctx context.Context) error {
		h, err := c.CheckSettled(ctx, lease)
		got = h
		return err
	})
	if err != nil {
		return Holding{}, fmt.Errorf("testcluster: %w", err)
	}
	return got, nil
}

// WaitTakeover waits until a candidate other than prev's holder holds the
// lease at an epoch above prev's, and returns that holding.
func (c *Cluster) WaitTakeover(ctx context.Context, lease string, prev Holding, timeout time.Duration) (Holding, error) {
	var got Holding
	err := poll.Until(ctx, timeout, fmt.Sprintf("another %s to take the lease over from %v", lease, prev), func(ctx context.Context) error {
		h, err := c.LeaseHolding(ctx, lease)
		if err != nil {
			return err
		}
		if h.Holder == prev.Holder || h.Epoch <= prev.Epoch || !slices.Contains(c.Candidates(lease), h.Holder) {
			return fmt.Errorf("the lease is held by %v", h)
		}
		got = h
		return nil
	})
	if err != nil {
		return Holding{}, fmt.Errorf("testcluster: %w", err)
	}
	return got, nil
}

// Standbys are the standbys of a component's lease as the cluster status
// lists them, with the holding it reports, by the candidates' identities.
func (c *Cluster) Standbys(ctx context.Context, lease string) ([]string, Holding, error) {
	st, err := c.client.Cluster().GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
	if err != nil {
		return nil, Holding{}, fmt.Errorf("testcluster: cluster status: %w", err)
	}
	for _, l := range st.GetLeases() {
		if l.GetNamespace() == wellknown.SystemNamespace && l.GetName() == lease {
			standbys := make([]string, 0, len(l.GetStandbys()))
			for _, s := range l.GetStandbys() {
				standbys = append(standbys, leaderelection.IdentityOf(s))
			}
			return standbys, Holding{Holder: leaderelection.IdentityOf(l.GetHolderIdentity()), Epoch: l.GetEpoch()}, nil
		}
	}
	return nil, Holding{}, fmt.Errorf("testcluster: the cluster status lists no lease %s: %v", lease, st.GetLeases())
}

// EtcdLeader is the index (in APIServers) of the API server whose embedded
// etcd member leads, as the cluster status reports it.
func (c *Cluster) EtcdLeader(ctx context.Context) (int, error) {
	st, err := c.client.Cluster().GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
	if err != nil {
		return -1, fmt.Errorf("testcluster: cluster status: %w", err)
	}
	for _, m := range st.GetEtcdMembers() {
		if !m.GetLeader() {
			continue
		}
		for i, u := range c.etcdURLs {
			if slices.Contains(m.GetClientUrls(), u) {
				return i, nil
			}
		}
	}
	return -1, fmt.Errorf("testcluster: no etcd member of this cluster is reported as leader: %v", st.GetEtcdMembers())
}

// ComponentHealth is what a lease-gated component's /healthz says.
type ComponentHealth struct {
	Identity string
	// Leading is whether it leads; Leader and LeaderEpoch the holding it
	// has seen last.
	Leading     bool
	Leader      string
	LeaderEpoch int64
}

// healthTimeout bounds one /healthz request.
const healthTimeout = time.Second

// healthClient keeps no idle connections: nothing lingers after a read
// (for goleak), and every read reaches the process that listens now.
var healthClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}

// Health reads the named lease-gated component's /healthz.
func (c *Cluster) Health(ctx context.Context, name string) (ComponentHealth, error) {
	url := c.healthURL(name)
	if url == "" {
		return ComponentHealth{}, fmt.Errorf("testcluster: %s has no health URL", name)
	}
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return ComponentHealth{}, fmt.Errorf("testcluster: %s /healthz: %w", name, err)
	}
	resp, err := healthClient.Do(req)
	if err != nil {
		return ComponentHealth{}, fmt.Errorf("testcluster: %s /healthz: %w", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ComponentHealth{}, fmt.Errorf("testcluster: %s /healthz: %s", name, resp.Status)
	}
	// "key: value" lines (internal/leaderelection/component).
	fields := map[string]string{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 64<<10))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			fields[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return ComponentHealth{}, fmt.Errorf("testcluster: %s /healthz: %w", name, err)
	}
	if _, ok := fields["leader"]; !ok {
		return ComponentHealth{}, fmt.Errorf("testcluster: %s /healthz has no leader line: %v", name, fields)
	}
	epoch, _ := strconv.ParseInt(fields["leader-epoch"], 10, 64)
	return ComponentHealth{
		Identity:    fields["identity"],
		Leading:     fields["leading"] == "true",
		Leader:      fields["leader"],
		LeaderEpoch: epoch,
	}, nil
}
