package validation

import (
	k8svalidation "k8s.io/apimachinery/pkg/util/validation"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// ConfigMapDataSizeLimit is the most bytes (keys and values together) a
// ConfigMap's data may hold, as in Kubernetes.
const ConfigMapDataSizeLimit = 1 << 20

// maxHolderIdentityLength bounds a lease holder's identity like an object
// name: it is a replica or node name, not free text.
const maxHolderIdentityLength = 253

// validateNode checks a node's taints and the resources its agent reports.
func validateNode(node *capstanv1.Node, p fieldPath) error {
	for i, t := range node.GetSpec().GetTaints() {
		if err := validateTaint(t, p.child("spec").child("taints").index(i)); err != nil {
			return err
		}
	}
	sp := p.child("status")
	if _, err := validateResourceList(node.GetStatus().GetCapacity(), sp.child("capacity")); err != nil {
		return err
	}
	_, err := validateResourceList(node.GetStatus().GetAllocatable(), sp.child("allocatable"))
	return err
}

func validateLeaseSpec(spec *capstanv1.LeaseSpec, p fieldPath) error {
	if len(spec.GetHolderIdentity()) > maxHolderIdentityLength {
		return invalid(p.child("holder_identity"), "%d bytes long, more than the limit of %d", len(spec.GetHolderIdentity()), maxHolderIdentityLength)
	}
	// 0 asks for the server's default duration.
	return nonNegative(p.child("lease_duration_seconds"), spec.GetLeaseDurationSeconds())
}

func validateEvent(event *capstanv1.Event, p fieldPath) error {
	op := p.child("involved_object")
	if event.GetInvolvedObject().GetKind() == "" {
		return required(op.child("kind"))
	}
	if event.GetInvolvedObject().GetName() == "" {
		return required(op.child("name"))
	}
	return checkEnum(p.child("type"), event.GetType(), "", "Normal", "Warning")
}

func validateConfigMap(cm *capstanv1.ConfigMap, p fieldPath) error {
	dp := p.child("data")
	total := 0
	for _, k := range sortedKeys(cm.GetData()) {
		if err := checkFormat(dp.key(k), "key", k, k8svalidation.IsConfigMapKey(k)); err != nil {
			return err
		}
		total += len(k) + len(cm.GetData()[k])
	}
	if total > ConfigMapDataSizeLimit {
		return invalid(dp, "data takes %d bytes, more than the limit of %d", total, ConfigMapDataSizeLimit)
	}
	return nil
}
