package printer

import (
	"fmt"
	"strings"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// Probe timings a zero value stands for (PodSpec's documented defaults).
const (
	defaultProbePeriodSeconds    = 10
	defaultProbeTimeoutSeconds   = 1
	defaultProbeSuccessThreshold = 1
	defaultProbeFailureThreshold = 3
)

func (w *describeWriter) pod(p *capstanv1.Pod) {
	w.metadata(p)
	st := p.GetStatus()
	node := orNone(p.GetSpec().GetNodeName())
	if p.GetSpec().GetNodeName() != "" && st.GetHostIp() != "" {
		node += "/" + text(st.GetHostIp())
	}
	w.field(0, "Node", node)
	if st.GetStartTime() != nil {
		w.field(0, "Start Time", w.timestamp(st.GetStartTime()))
	}
	w.field(0, "Status", PodStatus(p))
	if st.GetReason() != "" {
		w.field(0, "Reason", text(st.GetReason()))
	}
	if st.GetMessage() != "" {
		w.field(0, "Message", text(st.GetMessage()))
	}
	w.field(0, "IP", orNone(st.GetPodIp()))
	if p.GetSpec().GetRestartPolicy() != "" {
		w.field(0, "Restart Policy", text(p.GetSpec().GetRestartPolicy()))
	}
	statuses := map[string]*capstanv1.ContainerStatus{}
	for _, cs := range st.GetContainerStatuses() {
		statuses[cs.GetName()] = cs
	}
	w.containers(0, p.GetSpec().GetContainers(), statuses)
	if conditions := st.GetConditions(); len(conditions) > 0 {
		w.write(0, "Conditions:\n")
		w.write(1, "Type\tStatus\tReason\n")
		for _, c := range conditions {
			w.write(1, "%s\t%s\t%s\n", orNone(c.GetType()), orNone(c.GetStatus()), text(c.GetReason()))
		}
		w.flush() // the table is aligned on its own
	}
	w.multiline(0, "Node-Selectors", keyValues(p.GetSpec().GetNodeSelector(), "="))
	var tolerations []string
	for _, t := range p.GetSpec().GetTolerations() {
		tolerations = append(tolerations, toleration(t))
	}
	w.multiline(0, "Tolerations", tolerations)
}

// containers writes the Containers section at level: each container's
// command, ports, resources, probes and environment, and its state when
// statuses has it (a pod template has none).
func (w *describeWriter) containers(level int, containers []*capstanv1.Container, statuses map[string]*capstanv1.ContainerStatus) {
	if len(containers) == 0 {
		w.field(level, "Containers", "<none>")
		return
	}
	w.write(level, "Containers:\n")
	for _, c := range containers {
		w.write(level+1, "%s:\n", text(c.GetName()))
		in := level + 2
		w.list(in, "Command", c.GetCommand())
		w.list(in, "Args", c.GetArgs())
		if c.GetWorkingDir() != "" {
			w.field(in, "Working Dir", text(c.GetWorkingDir()))
		}
		w.ports(in, c.GetPorts())
		if cs, ok := statuses[c.GetName()]; ok {
			w.containerState(in, "State", cs.GetState())
			if cs.GetLastState().GetTerminated() != nil {
				w.containerState(in, "Last State", cs.GetLastState())
			}
			w.field(in, "Ready", boolString(cs.GetReady()))
			w.field(in, "Restart Count", fmt.Sprint(cs.GetRestartCount()))
		}
		w.resources(in, "Limits", c.GetResources().GetLimits())
		w.resources(in, "Requests", c.GetResources().GetRequests())
		if pr := c.GetLivenessProbe(); pr != nil {
			w.field(in, "Liveness", probe(pr))
		}
		if pr := c.GetReadinessProbe(); pr != nil {
			w.field(in, "Readiness", probe(pr))
		}
		if len(c.GetEnv()) == 0 {
			w.field(in, "Environment", "<none>")
		} else {
			w.write(in, "Environment:\n")
			for _, e := range c.GetEnv() {
				w.field(in+1, text(e.GetName()), text(e.GetValue()))
			}
		}
	}
}

// list writes label and then one item per line, as kubectl writes a
// command; nothing if there are no items.
func (w *describeWriter) list(level int, label string, items []string) {
	if len(items) == 0 {
		return
	}
	w.write(level, "%s:\n", label)
	for _, item := range items {
		w.write(level+1, "%s\n", text(item))
	}
}

func (w *describeWriter) ports(level int, ports []*capstanv1.ContainerPort) {
	var container, host []string
	for _, p := range ports {
		protocol := p.GetProtocol()
		if protocol == "" {
			protocol = "TCP"
		}
		port := fmt.Sprintf("%d/%s", p.GetContainerPort(), protocol)
		if p.GetName() != "" {
			port += " (" + p.GetName() + ")"
		}
		container = append(container, port)
		if p.GetHostPort() != 0 {
			host = append(host, fmt.Sprintf("%d/%s", p.GetHostPort(), protocol))
		}
	}
	label := "Port"
	if len(container) > 1 {
		label = "Ports"
	}
	w.field(level, label, orNone(strings.Join(container, ", ")))
	if len(host) > 0 {
		label = "Host Port"
		if len(host) > 1 {
			label = "Host Ports"
		}
		w.field(level, label, text(strings.Join(host, ", ")))
	}
}

func (w *describeWriter) containerState(level int, label string, s *capstanv1.ContainerState) {
	switch {
	case s.GetRunning() != nil:
		w.field(level, label, "Running")
		w.field(level+1, "Started", w.timestamp(s.GetRunning().GetStartedAt()))
	case s.GetTerminated() != nil:
		t := s.GetTerminated()
		w.field(level, label, "Terminated")
		if t.GetReason() != "" {
			w.field(level+1, "Reason", text(t.GetReason()))
		}
		if t.GetMessage() != "" {
			w.field(level+1, "Message", text(t.GetMessage()))
		}
		w.field(level+1, "Exit Code", fmt.Sprint(t.GetExitCode()))
		if t.GetSignal() != 0 {
			w.field(level+1, "Signal", fmt.Sprint(t.GetSignal()))
		}
		w.field(level+1, "Started", w.timestamp(t.GetStartedAt()))
		w.field(level+1, "Finished", w.timestamp(t.GetFinishedAt()))
	default:
		w.field(level, label, "Waiting")
		if r := s.GetWaiting().GetReason(); r != "" {
			w.field(level+1, "Reason", text(r))
		}
		if m := s.GetWaiting().GetMessage(); m != "" {
			w.field(level+1, "Message", text(m))
		}
	}
}

func (w *describeWriter) resources(level int, label string, list map[string]string) {
	if len(list) == 0 {
		return
	}
	w.write(level, "%s:\n", label)
	for _, name := range sortedKeys(list) {
		w.field(level+1, text(name), text(list[name]))
	}
}

// podTemplate writes a Deployment's or ReplicaSet's pod template.
func (w *describeWriter) podTemplate(t *capstanv1.PodTemplateSpec) {
	w.write(0, "Pod Template:\n")
	w.multiline(1, "Labels", keyValues(t.GetMetadata().GetLabels(), "="))
	if len(t.GetMetadata().GetAnnotations()) > 0 {
		w.multiline(1, "Annotations", keyValues(t.GetMetadata().GetAnnotations(), ": "))
	}
	w.containers(1, t.GetSpec().GetContainers(), nil)
	if len(t.GetSpec().GetNodeSelector()) > 0 {
		w.multiline(1, "Node-Selectors", keyValues(t.GetSpec().GetNodeSelector(), "="))
	}
	if len(t.GetSpec().GetTolerations()) > 0 {
		var tolerations []string
		for _, tol := range t.GetSpec().GetTolerations() {
			tolerations = append(tolerations, toleration(tol))
		}
		w.multiline(1, "Tolerations", tolerations)
	}
	w.flush()
}

// probe is kubectl's one-line summary of a probe.
func probe(p *capstanv1.Probe) string {
	orDefault := func(v, def int32) int32 {
		if v == 0 {
			return def
		}
		return v
	}
	attrs := fmt.Sprintf("delay=%ds timeout=%ds period=%ds #success=%d #failure=%d",
		p.GetInitialDelaySeconds(), orDefault(p.GetTimeoutSeconds(), defaultProbeTimeoutSeconds),
		orDefault(p.GetPeriodSeconds(), defaultProbePeriodSeconds),
		orDefault(p.GetSuccessThreshold(), defaultProbeSuccessThreshold), orDefault(p.GetFailureThreshold(), defaultProbeFailureThreshold))
	switch {
	case p.GetExec() != nil:
		return fmt.Sprintf("exec [%s] %s", text(strings.Join(p.GetExec().GetCommand(), " ")), attrs)
	case p.GetHttpGet() != nil:
		g := p.GetHttpGet()
		return fmt.Sprintf("http-get http://%s:%d%s %s", text(g.GetHost()), g.GetPort(), text(g.GetPath()), attrs)
	case p.GetTcpSocket() != nil:
		s := p.GetTcpSocket()
		return fmt.Sprintf("tcp-socket %s:%d %s", text(s.GetHost()), s.GetPort(), attrs)
	}
	return "unknown " + attrs
}

// toleration is kubectl's form: key=value:Effect op=Exists for 300s.
func toleration(t *capstanv1.Toleration) string {
	var b strings.Builder
	b.WriteString(t.GetKey())
	if t.GetValue() != "" {
		b.WriteString("=" + t.GetValue())
	}
	if t.GetEffect() != "" {
		b.WriteString(":" + t.GetEffect())
	}
	// An Exists toleration without a value tolerates every value of its
	// key (or, without a key, every taint).
	if t.GetOperator() == "Exists" && t.GetValue() == "" {
		if b.Len() > 0 {
			b.WriteString(" ")
		}
		b.WriteString("op=Exists")
	}
	if t.TolerationSeconds != nil {
		fmt.Fprintf(&b, " for %ds", t.GetTolerationSeconds())
	}
	return b.String()
}

func boolString(b bool) string {
	if b {
		return "True"
	}
	return "False"
}
