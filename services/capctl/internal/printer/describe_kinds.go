package printer

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	k8sresource "k8s.io/apimachinery/pkg/api/resource"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// defaultRollingUpdateBound is maxSurge and maxUnavailable when a
// Deployment leaves them empty.
const defaultRollingUpdateBound = "25%"

// The resources every node description accounts for, first and in this
// order; others follow by name.
var primaryResources = []string{"cpu", "memory"}

func (w *describeWriter) node(n *capstanv1.Node, pods []*capstanv1.Pod) {
	w.metadata(n)
	var taints []string
	for _, t := range n.GetSpec().GetTaints() {
		taint := t.GetKey()
		if t.GetValue() != "" {
			taint += "=" + t.GetValue()
		}
		taints = append(taints, taint+":"+t.GetEffect())
	}
	w.multiline(0, "Taints", taints)
	w.field(0, "Unschedulable", strconv.FormatBool(n.GetSpec().GetUnschedulable()))
	st := n.GetStatus()
	w.field(0, "Agent Endpoint", orNone(st.GetAgentEndpoint()))
	w.flush()
	if len(st.GetConditions()) == 0 {
		w.field(0, "Conditions", "<none>")
	}
	w.conditionTable(st.GetConditions(), true)
	if len(st.GetAddresses()) == 0 {
		w.field(0, "Addresses", "<none>")
	} else {
		w.write(0, "Addresses:\n")
		for _, a := range st.GetAddresses() {
			w.field(1, text(a.GetType()), text(a.GetAddress()))
		}
	}
	w.resources(0, "Capacity", st.GetCapacity())
	w.resources(0, "Allocatable", st.GetAllocatable())
	info := st.GetNodeInfo()
	w.write(0, "System Info:\n")
	w.field(1, "Agent Version", text(info.GetAgentVersion()))
	w.field(1, "Operating System", text(info.GetOperatingSystem()))
	w.field(1, "Architecture", text(info.GetArchitecture()))
	w.field(1, "Runtime", text(info.GetRuntime()))
	w.nodePods(st.GetAllocatable(), pods)
}

// nodePods writes the pods a node runs with what they request, and the
// sums against the node's allocatable resources (kubectl's "Non-terminated
// Pods" and "Allocated resources").
func (w *describeWriter) nodePods(allocatable map[string]string, pods []*capstanv1.Pod) {
	var running []*capstanv1.Pod
	for _, p := range pods {
		if phase := p.GetStatus().GetPhase(); phase != wellknown.PodSucceeded && phase != wellknown.PodFailed {
			running = append(running, p)
		}
	}
	slices.SortFunc(running, func(a, b *capstanv1.Pod) int {
		return cmp.Or(strings.Compare(a.GetMetadata().GetNamespace(), b.GetMetadata().GetNamespace()),
			strings.Compare(a.GetMetadata().GetName(), b.GetMetadata().GetName()))
	})
	alloc := quantities(allocatable)
	names := slices.Clone(primaryResources)
	requests, limits := map[string]k8sresource.Quantity{}, map[string]k8sresource.Quantity{}
	w.flush() // the pods table aligns with its own title only
	w.field(0, "Non-terminated Pods", fmt.Sprintf("(%d in total)", len(running)))
	w.write(1, "Namespace\tName\tCPU Requests\tCPU Limits\tMemory Requests\tMemory Limits\tAge\n")
	w.write(1, "---------\t----\t------------\t----------\t---------------\t-------------\t---\n")
	for _, p := range running {
		req, lim := podResources(p)
		w.write(1, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", text(p.GetMetadata().GetNamespace()), text(p.GetMetadata().GetName()),
			share(req["cpu"], alloc["cpu"]), share(lim["cpu"], alloc["cpu"]),
			share(req["memory"], alloc["memory"]), share(lim["memory"], alloc["memory"]),
			Age(p.GetMetadata().GetCreateTime(), w.now))
		for name, q := range req {
			sum := requests[name]
			sum.Add(q)
			requests[name] = sum
		}
		for name, q := range lim {
			sum := limits[name]
			sum.Add(q)
			limits[name] = sum
		}
	}
	for _, m := range []map[string]k8sresource.Quantity{requests, limits} {
		for _, name := range sortedKeys(m) {
			if !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
	}
	w.write(0, "Allocated resources:\n")
	w.write(1, "(Total limits may be over 100 percent, i.e., overcommitted.)\n")
	w.write(1, "Resource\tRequests\tLimits\n")
	w.write(1, "--------\t--------\t------\n")
	for _, name := range names {
		w.write(1, "%s\t%s\t%s\n", text(name), share(requests[name], alloc[name]), share(limits[name], alloc[name]))
	}
}

// quantities parses a resource list; an entry that does not parse (the API
// validates them, so only a foreign writer could store one) counts as
// absent.
func quantities(list map[string]string) map[string]k8sresource.Quantity {
	out := make(map[string]k8sresource.Quantity, len(list))
	for name, s := range list {
		if q, err := k8sresource.ParseQuantity(s); err == nil {
			out[name] = q
		}
	}
	return out
}

// podResources sums the requests and limits of a pod's containers.
func podResources(p *capstanv1.Pod) (requests, limits map[string]k8sresource.Quantity) {
	requests, limits = map[string]k8sresource.Quantity{}, map[string]k8sresource.Quantity{}
	for _, c := range p.GetSpec().GetContainers() {
		for name, q := range quantities(c.GetResources().GetRequests()) {
			sum := requests[name]
			sum.Add(q)
			requests[name] = sum
		}
		for name, q := range quantities(c.GetResources().GetLimits()) {
			sum := limits[name]
			sum.Add(q)
			limits[name] = sum
		}
	}
	return requests, limits
}

// share is q and, when the node says how much it has, its percentage of
// that: "250m (12%)".
func share(q, total k8sresource.Quantity) string {
	if total.IsZero() {
		return q.String()
	}
	return fmt.Sprintf("%s (%d%%)", q.String(), int64(float64(q.MilliValue())/float64(total.MilliValue())*100))
}

func (w *describeWriter) replicaSet(rs *capstanv1.ReplicaSet, pods []*capstanv1.Pod) {
	w.metadata(rs)
	spec, st := rs.GetSpec(), rs.GetStatus()
	w.field(0, "Selector", orNone(Selector(spec.GetSelector())))
	var replicas *int32
	if spec != nil {
		replicas = spec.Replicas
	}
	w.field(0, "Replicas", fmt.Sprintf("%d current / %s desired / %d ready / %d available",
		st.GetReplicas(), desired(replicas), st.GetReadyReplicas(), st.GetAvailableReplicas()))
	var running, waiting, succeeded, failed int
	for _, p := range pods {
		switch p.GetStatus().GetPhase() {
		case wellknown.PodRunning:
			running++
		case wellknown.PodPending:
			waiting++
		case wellknown.PodSucceeded:
			succeeded++
		case wellknown.PodFailed:
			failed++
		}
	}
	w.field(0, "Pods Status", fmt.Sprintf("%d Running / %d Waiting / %d Succeeded / %d Failed", running, waiting, succeeded, failed))
	if spec.GetMinReadySeconds() != 0 {
		w.field(0, "MinReadySeconds", fmt.Sprint(spec.GetMinReadySeconds()))
	}
	w.podTemplate(spec.GetTemplate())
	w.conditionTable(st.GetConditions(), false)
}

func (w *describeWriter) deployment(d *capstanv1.Deployment, replicaSets []*capstanv1.ReplicaSet) {
	w.metadata(d)
	spec, st := d.GetSpec(), d.GetStatus()
	w.field(0, "Selector", orNone(Selector(spec.GetSelector())))
	var replicas *int32
	if spec != nil {
		replicas = spec.Replicas
	}
	w.field(0, "Replicas", fmt.Sprintf("%s desired | %d updated | %d total | %d available | %d unavailable",
		desired(replicas), st.GetUpdatedReplicas(), st.GetReplicas(), st.GetAvailableReplicas(), st.GetUnavailableReplicas()))
	strategy := spec.GetStrategy().GetType()
	if strategy == "" {
		strategy = wellknown.StrategyRollingUpdate
	}
	w.field(0, "StrategyType", text(strategy))
	w.field(0, "MinReadySeconds", fmt.Sprint(spec.GetMinReadySeconds()))
	if strategy == wellknown.StrategyRollingUpdate {
		ru := spec.GetStrategy().GetRollingUpdate()
		w.field(0, "RollingUpdateStrategy", fmt.Sprintf("%s max unavailable, %s max surge",
			orDefault(ru.GetMaxUnavailable(), defaultRollingUpdateBound), orDefault(ru.GetMaxSurge(), defaultRollingUpdateBound)))
	}
	if spec.GetPaused() {
		w.field(0, "Paused", "true")
	}
	w.podTemplate(spec.GetTemplate())
	w.conditionTable(st.GetConditions(), false)
	newRS, oldRSs := splitReplicaSets(d, replicaSets)
	var old []string
	for _, rs := range oldRSs {
		old = append(old, replicaSetSummary(rs))
	}
	w.field(0, "OldReplicaSets", orNone(strings.Join(old, ", ")))
	newSummary := "<none>"
	if newRS != nil {
		newSummary = replicaSetSummary(newRS)
	}
	w.field(0, "NewReplicaSet", newSummary)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return text(s)
}

// replicaSetSummary is kubectl's "web-5d8f (3/3 replicas created)".
func replicaSetSummary(rs *capstanv1.ReplicaSet) string {
	var replicas *int32
	if rs.GetSpec() != nil {
		replicas = rs.GetSpec().Replicas
	}
	return fmt.Sprintf("%s (%d/%s replicas created)", text(rs.GetMetadata().GetName()), rs.GetStatus().GetReplicas(), desired(replicas))
}

// splitReplicaSets finds, among a Deployment's ReplicaSets, the one that
// runs its current template (the new one) and the others, oldest first.
// A ReplicaSet's template is the Deployment's plus the pod-template-hash
// label, so that label is ignored in the comparison, as kubectl does.
func splitReplicaSets(d *capstanv1.Deployment, replicaSets []*capstanv1.ReplicaSet) (newRS *capstanv1.ReplicaSet, old []*capstanv1.ReplicaSet) {
	sorted := slices.Clone(replicaSets)
	slices.SortStableFunc(sorted, func(a, b *capstanv1.ReplicaSet) int {
		if c := a.GetMetadata().GetCreateTime().AsTime().Compare(b.GetMetadata().GetCreateTime().AsTime()); c != 0 {
			return c
		}
		return strings.Compare(a.GetMetadata().GetName(), b.GetMetadata().GetName())
	})
	want := withoutHash(d.GetSpec().GetTemplate())
	for _, rs := range sorted {
		if newRS == nil && proto.Equal(withoutHash(rs.GetSpec().GetTemplate()), want) {
			newRS = rs
			continue
		}
		old = append(old, rs)
	}
	return newRS, old
}

func withoutHash(t *capstanv1.PodTemplateSpec) *capstanv1.PodTemplateSpec {
	if t == nil {
		return &capstanv1.PodTemplateSpec{}
	}
	t = proto.Clone(t).(*capstanv1.PodTemplateSpec)
	if t.GetMetadata() != nil {
		delete(t.Metadata.Labels, wellknown.LabelPodTemplateHash)
	}
	return t
}

func (w *describeWriter) lease(l *capstanv1.Lease) {
	w.metadata(l)
	spec, st := l.GetSpec(), l.GetStatus()
	w.field(0, "Holder", orNone(spec.GetHolderIdentity()))
	w.field(0, "Epoch", strconv.FormatInt(st.GetEpoch(), 10))
	w.field(0, "Session", orNone(st.GetSessionReplica()))
	w.field(0, "Duration", fmt.Sprintf("%ds", spec.GetLeaseDurationSeconds()))
	w.field(0, "Acquired", w.timestampAgo(st.GetAcquireTime()))
	w.field(0, "Renewed", w.timestampAgo(st.GetRenewTime()))
	w.field(0, "Transitions", fmt.Sprint(st.GetLeaseTransitions()))
}

func (w *describeWriter) configMap(cm *capstanv1.ConfigMap) {
	w.metadata(cm)
	var b strings.Builder
	b.WriteString("\nData\n====\n")
	for _, k := range sortedKeys(cm.GetData()) {
		fmt.Fprintf(&b, "%s:\n----\n%s\n", k, strings.TrimSuffix(cm.GetData()[k], "\n"))
	}
	b.WriteString("\n")
	w.raw(b.String())
}

func (w *describeWriter) event(e *capstanv1.Event) {
	w.metadata(e)
	ref := e.GetInvolvedObject()
	w.write(0, "Involved Object:\n")
	w.field(1, "Kind", orNone(ref.GetKind()))
	w.field(1, "Name", orNone(ref.GetName()))
	if ref.GetNamespace() != "" {
		w.field(1, "Namespace", text(ref.GetNamespace()))
	}
	if ref.GetUid() != "" {
		w.field(1, "UID", text(ref.GetUid()))
	}
	w.field(0, "Type", orNone(e.GetType()))
	w.field(0, "Reason", orNone(e.GetReason()))
	w.field(0, "Message", orNone(e.GetMessage()))
	source := e.GetSource().GetComponent()
	if host := e.GetSource().GetHost(); host != "" {
		source += ", " + host
	}
	w.field(0, "Source", orNone(source))
	w.field(0, "Count", fmt.Sprint(e.GetCount()))
	w.field(0, "First Seen", w.timestampAgo(e.GetFirstTime()))
	w.field(0, "Last Seen", w.timestampAgo(eventLastSeen(e)))
}
