package validation

import (
	"strings"

	"k8s.io/apimachinery/pkg/api/validate/content"
	k8svalidation "k8s.io/apimachinery/pkg/util/validation"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// Values of the string enums of pod and node specs.
const (
	restartPolicyAlways    = "Always"
	restartPolicyOnFailure = "OnFailure"
	restartPolicyNever     = "Never"

	protocolTCP = "TCP"
	protocolUDP = "UDP"

	tolerationOpEqual  = "Equal"
	tolerationOpExists = "Exists"

	taintEffectNoSchedule       = "NoSchedule"
	taintEffectPreferNoSchedule = "PreferNoSchedule"
	taintEffectNoExecute        = "NoExecute"
)

// hostPort is a port on the node, which two containers can not both bind.
type hostPort struct {
	port     int32
	protocol string
}

func validatePodSpec(spec *capstanv1.PodSpec, p fieldPath) error {
	containers := spec.GetContainers()
	if len(containers) == 0 {
		return invalid(p.child("containers"), "required: a pod runs at least one container")
	}
	names := make(map[string]fieldPath, len(containers))
	hostPorts := make(map[hostPort]fieldPath)
	for i, c := range containers {
		if err := validateContainer(c, p.child("containers").index(i), names, hostPorts); err != nil {
			return err
		}
	}
	if err := checkEnum(p.child("restart_policy"), spec.GetRestartPolicy(), "", restartPolicyAlways, restartPolicyOnFailure, restartPolicyNever); err != nil {
		return err
	}
	if node := spec.GetNodeName(); node != "" {
		if err := checkFormat(p.child("node_name"), "Node name", node, k8svalidation.IsDNS1123Subdomain(node)); err != nil {
			return err
		}
	}
	if err := validateLabels(spec.GetNodeSelector(), p.child("node_selector")); err != nil {
		return err
	}
	for i, t := range spec.GetTolerations() {
		if err := validateToleration(t, p.child("tolerations").index(i)); err != nil {
			return err
		}
	}
	if spec.GetTerminationGracePeriodSeconds() != 0 {
		if err := nonNegative(p.child("termination_grace_period_seconds"), spec.GetTerminationGracePeriodSeconds()); err != nil {
			return err
		}
	}
	return nil
}

// validateContainer checks one container; names and hostPorts hold those of
// the containers before it, and it adds its own.
func validateContainer(c *capstanv1.Container, p fieldPath, names map[string]fieldPath, hostPorts map[hostPort]fieldPath) error {
	if c.GetName() == "" {
		return required(p.child("name"))
	}
	if err := checkFormat(p.child("name"), "container name", c.GetName(), k8svalidation.IsDNS1123Label(c.GetName())); err != nil {
		return err
	}
	if other, dup := names[c.GetName()]; dup {
		return invalid(p.child("name"), "duplicate container name %q: %s has it too", c.GetName(), other)
	}
	names[c.GetName()] = p
	// Capstan runs processes: without an image there is no entrypoint to
	// fall back on, so the command names the executable.
	if len(c.GetCommand()) == 0 {
		return invalid(p.child("command"), "required: the executable to run and its leading arguments")
	}
	if c.GetCommand()[0] == "" {
		return invalid(p.child("command").index(0), "the executable must not be empty")
	}
	for i, env := range c.GetEnv() {
		ep := p.child("env").index(i).child("name")
		if env.GetName() == "" {
			return required(ep)
		}
		if err := checkFormat(ep, "environment variable name", env.GetName(), k8svalidation.IsEnvVarName(env.GetName())); err != nil {
			return err
		}
	}
	for i, port := range c.GetPorts() {
		if err := validateContainerPort(port, p.child("ports").index(i), hostPorts); err != nil {
			return err
		}
	}
	if err := validateResources(c.GetResources(), p.child("resources")); err != nil {
		return err
	}
	if err := validateProbe(c.GetLivenessProbe(), p.child("liveness_probe")); err != nil {
		return err
	}
	return validateProbe(c.GetReadinessProbe(), p.child("readiness_probe"))
}

func validateContainerPort(port *capstanv1.ContainerPort, p fieldPath, hostPorts map[hostPort]fieldPath) error {
	if name := port.GetName(); name != "" {
		if err := checkFormat(p.child("name"), "port name", name, k8svalidation.IsValidPortName(name)); err != nil {
			return err
		}
	}
	if msgs := k8svalidation.IsValidPortNum(int(port.GetContainerPort())); len(msgs) > 0 {
		return invalid(p.child("container_port"), "invalid port %d: %s", port.GetContainerPort(), strings.Join(msgs, "; "))
	}
	if msgs := k8svalidation.IsInRange(int(port.GetHostPort()), 0, 65535); len(msgs) > 0 {
		return invalid(p.child("host_port"), "invalid port %d: %s (0 for none)", port.GetHostPort(), strings.Join(msgs, "; "))
	}
	if err := checkEnum(p.child("protocol"), port.GetProtocol(), "", protocolTCP, protocolUDP); err != nil {
		return err
	}
	if port.GetHostPort() == 0 {
		return nil
	}
	protocol := port.GetProtocol()
	if protocol == "" {
		protocol = protocolTCP
	}
	key := hostPort{port: port.GetHostPort(), protocol: protocol}
	if other, taken := hostPorts[key]; taken {
		return invalid(p.child("host_port"), "host port %d/%s is already used by %s", key.port, key.protocol, other)
	}
	hostPorts[key] = p
	return nil
}

func validateResources(res *capstanv1.ResourceRequirements, p fieldPath) error {
	requests, err := validateResourceList(res.GetRequests(), p.child("requests"))
	if err != nil {
		return err
	}
	limits, err := validateResourceList(res.GetLimits(), p.child("limits"))
	if err != nil {
		return err
	}
	for _, name := range sortedKeys(res.GetLimits()) {
		request, ok := requests[name]
		if !ok {
			continue
		}
		if limit := limits[name]; limit.Cmp(request) < 0 {
			return invalid(p.child("limits").key(name), "limit %s is less than the request %s", res.GetLimits()[name], res.GetRequests()[name])
		}
	}
	return nil
}

func validateProbe(probe *capstanv1.Probe, p fieldPath) error {
	if probe == nil {
		return nil
	}
	var handlers []string
	if probe.GetExec() != nil {
		handlers = append(handlers, "exec")
	}
	if probe.GetHttpGet() != nil {
		handlers = append(handlers, "http_get")
	}
	if probe.GetTcpSocket() != nil {
		handlers = append(handlers, "tcp_socket")
	}
	switch len(handlers) {
	case 0:
		return invalid(p, "exactly one of exec, http_get and tcp_socket must be set; none is")
	case 1:
	default:
		return invalid(p, "exactly one of exec, http_get and tcp_socket must be set, not %s", strings.Join(handlers, " and "))
	}
	switch {
	case probe.GetExec() != nil:
		if len(probe.GetExec().GetCommand()) == 0 || probe.GetExec().GetCommand()[0] == "" {
			return invalid(p.child("exec").child("command"), "required: the executable to run and its arguments")
		}
	case probe.GetHttpGet() != nil:
		if err := checkPort(p.child("http_get").child("port"), probe.GetHttpGet().GetPort()); err != nil {
			return err
		}
	case probe.GetTcpSocket() != nil:
		if err := checkPort(p.child("tcp_socket").child("port"), probe.GetTcpSocket().GetPort()); err != nil {
			return err
		}
	}
	// Zero means the default for every timing, so only negatives are wrong.
	for _, timing := range []struct {
		name  string
		value int32
	}{
		{"initial_delay_seconds", probe.GetInitialDelaySeconds()},
		{"period_seconds", probe.GetPeriodSeconds()},
		{"timeout_seconds", probe.GetTimeoutSeconds()},
		{"success_threshold", probe.GetSuccessThreshold()},
		{"failure_threshold", probe.GetFailureThreshold()},
	} {
		if err := nonNegative(p.child(timing.name), timing.value); err != nil {
			return err
		}
	}
	return nil
}

func checkPort(p fieldPath, port int32) error {
	if msgs := k8svalidation.IsValidPortNum(int(port)); len(msgs) > 0 {
		return invalid(p, "invalid port %d: %s", port, strings.Join(msgs, "; "))
	}
	return nil
}

func validateToleration(t *capstanv1.Toleration, p fieldPath) error {
	if key := t.GetKey(); key != "" {
		if err := checkFormat(p.child("key"), "key", key, content.IsLabelKey(key)); err != nil {
			return err
		}
	}
	if err := checkEnum(p.child("operator"), t.GetOperator(), "", tolerationOpEqual, tolerationOpExists); err != nil {
		return err
	}
	exists := t.GetOperator() == tolerationOpExists
	if t.GetKey() == "" && !exists {
		return invalid(p.child("operator"), "must be %q when key is empty (a toleration of every taint)", tolerationOpExists)
	}
	if exists && t.GetValue() != "" {
		return invalid(p.child("value"), "must be empty when operator is %q", tolerationOpExists)
	}
	return checkEnum(p.child("effect"), t.GetEffect(), "", taintEffectNoSchedule, taintEffectPreferNoSchedule, taintEffectNoExecute)
}

// validateTaint checks a node's taint; unlike a toleration's, its key and
// effect are required.
func validateTaint(t *capstanv1.Taint, p fieldPath) error {
	if t.GetKey() == "" {
		return required(p.child("key"))
	}
	if err := checkFormat(p.child("key"), "key", t.GetKey(), content.IsLabelKey(t.GetKey())); err != nil {
		return err
	}
	if t.GetEffect() == "" {
		return invalid(p.child("effect"), "required: one of %q, %q, %q", taintEffectNoSchedule, taintEffectPreferNoSchedule, taintEffectNoExecute)
	}
	return checkEnum(p.child("effect"), t.GetEffect(), taintEffectNoSchedule, taintEffectPreferNoSchedule, taintEffectNoExecute)
}
