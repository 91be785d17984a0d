package printer

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// ClusterStatus prints the control plane's state as four sections: the API
// replicas (the one that answered marked), the etcd members (the raft
// leader marked), quorum and revision, and the lease-gated components with
// their leaders and the API replica that holds each leader's session.
func ClusterStatus(out io.Writer, st *capstanv1.GetClusterStatusResponse, now time.Time) error {
	// Each section is a block of tab-separated lines that tabwriter
	// aligns on its own; the blank lines between them end the blocks.
	tw := tabwriter.NewWriter(out, 0, 8, columnGap, ' ', 0)
	fmt.Fprintln(tw, "API SERVERS")
	fmt.Fprintln(tw, "ANSWERED\tNAME\tADDRESS\tAGE\tVERSION\tETCD-MEMBER")
	servers := st.GetApiServers()
	self := st.GetSelf()
	if self != nil && !containsServer(servers, self.GetName()) {
		// A replica whose registration has not been written (or has
		// expired) still answered: show it.
		servers = append([]*capstanv1.ApiServer{self}, servers...)
	}
	for _, s := range servers {
		mark := ""
		if self != nil && s.GetName() == self.GetName() {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", mark, cell(s.GetName()), cell(s.GetAddress()),
			Age(s.GetStartTime(), now), cell(s.GetVersion()), cell(s.GetEtcdMember()))
	}

	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "ETCD MEMBERS")
	fmt.Fprintln(tw, "NAME\tID\tLEADER\tTERM\tINDEX\tDB-SIZE\tHEALTHY\tCLIENT-URLS")
	var problems []string
	for _, m := range st.GetEtcdMembers() {
		name := cell(m.GetName())
		if m.GetLearner() {
			name += " (learner)"
		}
		leader := ""
		if m.GetLeader() {
			leader = "*"
		}
		healthy := "yes"
		if !m.GetHealthy() {
			healthy = "NO"
			if m.GetError() != "" {
				problems = append(problems, fmt.Sprintf("etcd member %s: %s", name, m.GetError()))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", name, cell(m.GetId()), leader, m.GetRaftTerm(), m.GetRaftIndex(),
			Bytes(m.GetDbSize()), healthy, cell(strings.Join(m.GetClientUrls(), ",")))
	}
	fmt.Fprintln(tw)
	quorum := "no"
	if st.GetQuorum() {
		quorum = "yes"
	}
	fmt.Fprintf(tw, "QUORUM: %s\tREVISION: %d\n", quorum, st.GetRevision())

	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "LEASES")
	fmt.Fprintln(tw, "LEASE\tHOLDER\tEPOCH\tSESSION\tRENEWED\tDURATION\tSTANDBYS")
	for _, l := range sortedLeases(st.GetLeases()) {
		// A lease nobody holds is listed for its standbys alone: it has no
		// epoch, session, renewal or duration to show. A holder without a
		// session (an older binary) shows <none>: its death is noticed only
		// when its lease expires.
		holder, epoch, session, renewed, duration := "<nobody>", "-", "-", "-", "-"
		if l.GetHolderIdentity() != "" {
			holder, epoch, renewed = cell(l.GetHolderIdentity()), strconv.FormatInt(l.GetEpoch(), 10), Ago(l.GetRenewTime(), now)
			session = cell(l.GetSessionReplica())
		}
		if l.GetLeaseDurationSeconds() > 0 {
			duration = fmt.Sprintf("%ds", l.GetLeaseDurationSeconds())
		}
		standbys := slices.Sorted(slices.Values(l.GetStandbys()))
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cell(l.GetName()), holder, epoch, session, renewed, duration, cell(strings.Join(standbys, ",")))
	}
	if len(st.GetLeases()) == 0 {
		fmt.Fprintln(tw, "(none: no lease-gated component has started)")
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("printer: %w", err)
	}
	for _, p := range problems {
		if _, err := fmt.Fprintln(out, p); err != nil {
			return fmt.Errorf("printer: %w", err)
		}
	}
	return nil
}

// sortedLeases orders the leases by namespace and name, so that a lease
// known only from its standbys does not jump to the end of the table.
func sortedLeases(leases []*capstanv1.ComponentLease) []*capstanv1.ComponentLease {
	out := slices.Clone(leases)
	slices.SortFunc(out, func(a, b *capstanv1.ComponentLease) int {
		return cmp.Or(strings.Compare(a.GetNamespace(), b.GetNamespace()), strings.Compare(a.GetName(), b.GetName()))
	})
	return out
}

func containsServer(servers []*capstanv1.ApiServer, name string) bool {
	for _, s := range servers {
		if s.GetName() == name {
			return true
		}
	}
	return false
}

// Bytes is a size in powers of 1024 ("20 KiB"), the way etcdctl prints
// database sizes.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
