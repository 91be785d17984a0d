package printer

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/util/duration"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/resource"
)

// column is one table column: its header and how to compute a cell.
type column struct {
	header string
	// wide columns appear only with -o wide.
	wide  bool
	value func(obj resource.Object, now time.Time) string
}

var (
	nameColumn      = column{header: "NAME", value: func(o resource.Object, _ time.Time) string { return o.GetMetadata().GetName() }}
	namespaceColumn = column{header: "NAMESPACE", value: func(o resource.Object, _ time.Time) string { return o.GetMetadata().GetNamespace() }}
	ageColumn       = column{header: "AGE", value: func(o resource.Object, now time.Time) string { return Age(o.GetMetadata().GetCreateTime(), now) }}
)

// kindColumns are the columns of each kind, after NAMESPACE (with -A).
var kindColumns = map[string][]column{
	"Pod": {
		nameColumn,
		{header: "READY", value: pod(podReady)},
		{header: "STATUS", value: pod(func(p *capstanv1.Pod, _ time.Time) string { return PodStatus(p) })},
		{header: "RESTARTS", value: pod(podRestarts)},
		{header: "NODE", value: pod(func(p *capstanv1.Pod, _ time.Time) string { return p.GetSpec().GetNodeName() })},
		ageColumn,
		{header: "IP", wide: true, value: pod(func(p *capstanv1.Pod, _ time.Time) string { return p.GetStatus().GetPodIp() })},
	},
	"Node": {
		nameColumn,
		{header: "STATUS", value: node(func(n *capstanv1.Node, _ time.Time) string { return NodeStatus(n) })},
		ageColumn,
		{header: "VERSION", wide: true, value: node(func(n *capstanv1.Node, _ time.Time) string { return n.GetStatus().GetNodeInfo().GetAgentVersion() })},
		{header: "INTERNAL-IP", wide: true, value: node(nodeAddress)},
		{header: "OS", wide: true, value: node(func(n *capstanv1.Node, _ time.Time) string { return n.GetStatus().GetNodeInfo().GetOperatingSystem() })},
		{header: "ARCH", wide: true, value: node(func(n *capstanv1.Node, _ time.Time) string { return n.GetStatus().GetNodeInfo().GetArchitecture() })},
		{header: "RUNTIME", wide: true, value: node(func(n *capstanv1.Node, _ time.Time) string { return n.GetStatus().GetNodeInfo().GetRuntime() })},
	},
	"ReplicaSet": {
		nameColumn,
		{header: "DESIRED", value: replicaSet(func(r *capstanv1.ReplicaSet) string {
			if r.GetSpec() == nil {
				return desired(nil)
			}
			return desired(r.GetSpec().Replicas)
		})},
		{header: "CURRENT", value: replicaSet(func(r *capstanv1.ReplicaSet) string { return itoa(r.GetStatus().GetReplicas()) })},
		{header: "READY", value: replicaSet(func(r *capstanv1.ReplicaSet) string { return itoa(r.GetStatus().GetReadyReplicas()) })},
		ageColumn,
		{header: "SELECTOR", wide: true, value: replicaSet(func(r *capstanv1.ReplicaSet) string { return Selector(r.GetSpec().GetSelector()) })},
	},
	"Deployment": {
		nameColumn,
		{header: "READY", value: deployment(func(d *capstanv1.Deployment) string {
			var replicas *int32
			if d.GetSpec() != nil {
				replicas = d.GetSpec().Replicas
			}
			return itoa(d.GetStatus().GetReadyReplicas()) + "/" + desired(replicas)
		})},
		{header: "UP-TO-DATE", value: deployment(func(d *capstanv1.Deployment) string { return itoa(d.GetStatus().GetUpdatedReplicas()) })},
		{header: "AVAILABLE", value: deployment(func(d *capstanv1.Deployment) string { return itoa(d.GetStatus().GetAvailableReplicas()) })},
		ageColumn,
		{header: "STRATEGY", wide: true, value: deployment(func(d *capstanv1.Deployment) string { return d.GetSpec().GetStrategy().GetType() })},
		{header: "SELECTOR", wide: true, value: deployment(func(d *capstanv1.Deployment) string { return Selector(d.GetSpec().GetSelector()) })},
	},
	"Lease": {
		nameColumn,
		{header: "HOLDER", value: lease(func(l *capstanv1.Lease, _ time.Time) string { return l.GetSpec().GetHolderIdentity() })},
		{header: "EPOCH", value: lease(func(l *capstanv1.Lease, _ time.Time) string { return strconv.FormatInt(l.GetStatus().GetEpoch(), 10) })},
		ageColumn,
		// The API replica that holds the holder's session, which releases
		// the lease the moment the holder dies. Wide: a default table of
		// every namespace would no longer fit 80 columns.
		{header: "SESSION", wide: true, value: lease(func(l *capstanv1.Lease, _ time.Time) string { return l.GetStatus().GetSessionReplica() })},
		{header: "DURATION", wide: true, value: lease(func(l *capstanv1.Lease, _ time.Time) string {
			return fmt.Sprintf("%ds", l.GetSpec().GetLeaseDurationSeconds())
		})},
		{header: "RENEWED", wide: true, value: lease(func(l *capstanv1.Lease, now time.Time) string { return Ago(l.GetStatus().GetRenewTime(), now) })},
		{header: "TRANSITIONS", wide: true, value: lease(func(l *capstanv1.Lease, _ time.Time) string { return itoa(l.GetStatus().GetLeaseTransitions()) })},
	},
	"Event": {
		{header: "LAST SEEN", value: event(func(e *capstanv1.Event, now time.Time) string { return Age(eventLastSeen(e), now) })},
		{header: "TYPE", value: event(func(e *capstanv1.Event, _ time.Time) string { return e.GetType() })},
		{header: "REASON", value: event(func(e *capstanv1.Event, _ time.Time) string { return e.GetReason() })},
		{header: "OBJECT", value: event(func(e *capstanv1.Event, _ time.Time) string {
			ref := e.GetInvolvedObject()
			return strings.ToLower(ref.GetKind()) + "/" + ref.GetName()
		})},
		{header: "SOURCE", wide: true, value: event(func(e *capstanv1.Event, _ time.Time) string {
			src := e.GetSource()
			if src.GetHost() == "" {
				return src.GetComponent()
			}
			return src.GetComponent() + ", " + src.GetHost()
		})},
		{header: "MESSAGE", value: event(func(e *capstanv1.Event, _ time.Time) string { return e.GetMessage() })},
		{header: "FIRST SEEN", wide: true, value: event(func(e *capstanv1.Event, now time.Time) string { return Age(e.GetFirstTime(), now) })},
		{header: "COUNT", wide: true, value: event(func(e *capstanv1.Event, _ time.Time) string { return itoa(e.GetCount()) })},
		{header: "NAME", wide: true, value: func(o resource.Object, _ time.Time) string { return o.GetMetadata().GetName() }},
	},
	"ConfigMap": {
		nameColumn,
		{header: "DATA", value: func(o resource.Object, _ time.Time) string {
			cm, _ := o.(*capstanv1.ConfigMap)
			return strconv.Itoa(len(cm.GetData()))
		}},
		ageColumn,
	},
}

// columnsFor returns the columns of kind's table.
func columnsFor(kind *resource.Kind, wide, withNamespace bool) []column {
	all, ok := kindColumns[kind.Name]
	if !ok {
		all = []column{nameColumn, ageColumn}
	}
	var out []column
	if withNamespace {
		out = append(out, namespaceColumn)
	}
	for _, c := range all {
		if !c.wide || wide {
			out = append(out, c)
		}
	}
	return out
}

// Adapters from a kind's typed function to a column value; an object of
// another kind (which never reaches a table of this kind) prints empty.
func pod(f func(*capstanv1.Pod, time.Time) string) func(resource.Object, time.Time) string {
	return func(o resource.Object, now time.Time) string { p, _ := o.(*capstanv1.Pod); return f(p, now) }
}

func node(f func(*capstanv1.Node, time.Time) string) func(resource.Object, time.Time) string {
	return func(o resource.Object, now time.Time) string { n, _ := o.(*capstanv1.Node); return f(n, now) }
}

func replicaSet(f func(*capstanv1.ReplicaSet) string) func(resource.Object, time.Time) string {
	return func(o resource.Object, _ time.Time) string { r, _ := o.(*capstanv1.ReplicaSet); return f(r) }
}

func deployment(f func(*capstanv1.Deployment) string) func(resource.Object, time.Time) string {
	return func(o resource.Object, _ time.Time) string { d, _ := o.(*capstanv1.Deployment); return f(d) }
}

func lease(f func(*capstanv1.Lease, time.Time) string) func(resource.Object, time.Time) string {
	return func(o resource.Object, now time.Time) string { l, _ := o.(*capstanv1.Lease); return f(l, now) }
}

func event(f func(*capstanv1.Event, time.Time) string) func(resource.Object, time.Time) string {
	return func(o resource.Object, now time.Time) string { e, _ := o.(*capstanv1.Event); return f(e, now) }
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }

// desired is a replica count; unset means 1, as Kubernetes defaults it.
func desired(replicas *int32) string {
	if replicas == nil {
		return "1"
	}
	return itoa(*replicas)
}

// Age is kubectl's AGE: how long ago t was, in one or two units ("5m",
// "3h12m"); "<unknown>" without a time. A time slightly ahead of now (the
// server's clock runs ahead of this machine's) is "0s", not "<invalid>".
func Age(t *timestamppb.Timestamp, now time.Time) string {
	if t == nil {
		return "<unknown>"
	}
	return duration.HumanDuration(max(now.Sub(t.AsTime()), 0))
}

// Ago is Age for something that happened rather than was created: "2s ago".
func Ago(t *timestamppb.Timestamp, now time.Time) string {
	if t == nil {
		return "never"
	}
	return Age(t, now) + " ago"
}

func podReady(p *capstanv1.Pod, _ time.Time) string {
	ready := 0
	for _, cs := range p.GetStatus().GetContainerStatuses() {
		if cs.GetReady() {
			ready++
		}
	}
	return fmt.Sprintf("%d/%d", ready, len(p.GetSpec().GetContainers()))
}

// podRestarts sums the containers' restarts and says when the last one
// happened, as kubectl does: "3 (42s ago)".
func podRestarts(p *capstanv1.Pod, now time.Time) string {
	var restarts int32
	var last *timestamppb.Timestamp
	for _, cs := range p.GetStatus().GetContainerStatuses() {
		restarts += cs.GetRestartCount()
		if t := cs.GetLastState().GetTerminated().GetFinishedAt(); t != nil && (last == nil || t.AsTime().After(last.AsTime())) {
			last = t
		}
	}
	if restarts > 0 && last != nil {
		return fmt.Sprintf("%d (%s)", restarts, Ago(last, now))
	}
	return itoa(restarts)
}

// PodStatus is the STATUS of a pod as kubectl computes it: the phase, or
// the reason a container waits or ended (CrashLoopBackOff, Error, ...),
// or Terminating once deletion has begun.
func PodStatus(p *capstanv1.Pod) string {
	st := p.GetStatus()
	reason := st.GetPhase()
	if st.GetReason() != "" {
		reason = st.GetReason()
	}
	for _, cs := range st.GetContainerStatuses() {
		state := cs.GetState()
		switch {
		case state.GetWaiting().GetReason() != "":
			reason = state.GetWaiting().GetReason()
		case state.GetTerminated().GetReason() != "":
			reason = state.GetTerminated().GetReason()
		case state.GetTerminated() != nil && state.GetTerminated().GetSignal() != 0:
			reason = fmt.Sprintf("Signal:%d", state.GetTerminated().GetSignal())
		case state.GetTerminated() != nil:
			reason = fmt.Sprintf("ExitCode:%d", state.GetTerminated().GetExitCode())
		}
	}
	if p.GetMetadata().GetDeleteTime() != nil {
		reason = "Terminating"
	}
	if reason == "" {
		reason = "Unknown"
	}
	return reason
}

// NodeStatus is Ready, NotReady or Unknown from the Ready condition, plus
// SchedulingDisabled for a cordoned node.
func NodeStatus(n *capstanv1.Node) string {
	status := "Unknown"
	for _, c := range n.GetStatus().GetConditions() {
		if c.GetType() == "Ready" {
			if c.GetStatus() == "True" {
				status = "Ready"
			} else {
				status = "NotReady"
			}
		}
	}
	if n.GetSpec().GetUnschedulable() {
		status += ",SchedulingDisabled"
	}
	return status
}

func nodeAddress(n *capstanv1.Node, _ time.Time) string {
	addrs := n.GetStatus().GetAddresses()
	for _, a := range addrs {
		if a.GetType() == "InternalIP" {
			return a.GetAddress()
		}
	}
	if len(addrs) > 0 {
		return addrs[0].GetAddress()
	}
	return ""
}

func eventLastSeen(e *capstanv1.Event) *timestamppb.Timestamp {
	for _, t := range []*timestamppb.Timestamp{e.GetLastTime(), e.GetFirstTime(), e.GetMetadata().GetCreateTime()} {
		if t != nil {
			return t
		}
	}
	return nil
}

// Selector prints a LabelSelector in the label-selector syntax of -l.
func Selector(sel *capstanv1.LabelSelector) string {
	var terms []string
	for k, v := range sel.GetMatchLabels() {
		terms = append(terms, k+"="+v)
	}
	slices.Sort(terms)
	for _, req := range sel.GetMatchExpressions() {
		switch req.GetOperator() {
		case "In":
			terms = append(terms, fmt.Sprintf("%s in (%s)", req.GetKey(), strings.Join(req.GetValues(), ",")))
		case "NotIn":
			terms = append(terms, fmt.Sprintf("%s notin (%s)", req.GetKey(), strings.Join(req.GetValues(), ",")))
		case "Exists":
			terms = append(terms, req.GetKey())
		case "DoesNotExist":
			terms = append(terms, "!"+req.GetKey())
		}
	}
	return strings.Join(terms, ",")
}
