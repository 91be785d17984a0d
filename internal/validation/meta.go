package validation

import (
	k8sresource "k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/api/validate/content"
	k8svalidation "k8s.io/apimachinery/pkg/util/validation"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/resource"
)

// TotalAnnotationSizeLimit is the most bytes (keys and values together) an
// object's annotations may hold, as in Kubernetes.
const TotalAnnotationSizeLimit = 256 << 10

func validateName(kind *resource.Kind, p fieldPath, name string) error {
	if name == "" {
		return invalid(p, "required: every %s has a name", kindName(kind))
	}
	return checkFormat(p, kindName(kind)+" name", name, k8svalidation.IsDNS1123Subdomain(name))
}

func kindName(kind *resource.Kind) string {
	if kind == nil {
		return "object"
	}
	return kind.Name
}

// validateObjectMeta checks what a client may set in metadata. The fields
// the server sets (uid, resource_version, generation, times) are overwritten
// by it and not checked here.
func validateObjectMeta(kind *resource.Kind, meta *capstanv1.ObjectMeta, p fieldPath) error {
	if err := validateName(kind, p.child("name"), meta.GetName()); err != nil {
		return err
	}
	if ns := meta.GetNamespace(); ns != "" {
		if !kind.Namespaced {
			return invalid(p.child("namespace"), "must be empty: %s is not namespaced", kind.Name)
		}
		if err := checkFormat(p.child("namespace"), "namespace", ns, k8svalidation.IsDNS1123Label(ns)); err != nil {
			return err
		}
	}
	if err := validateLabels(meta.GetLabels(), p.child("labels")); err != nil {
		return err
	}
	if err := validateAnnotations(meta.GetAnnotations(), p.child("annotations")); err != nil {
		return err
	}
	return validateOwnerReferences(meta.GetOwnerReferences(), p.child("owner_references"))
}

// validateLabels checks a map with the label rules: keys are qualified names
// ("app", "capstan.dev/role"), values at most 63 characters of [-._a-zA-Z0-9]
// starting and ending alphanumeric, or empty. Node selectors and the
// match_labels of a selector follow the same rules.
func validateLabels(labels map[string]string, p fieldPath) error {
	for _, k := range sortedKeys(labels) {
		if err := checkFormat(p.key(k), "key", k, content.IsLabelKey(k)); err != nil {
			return err
		}
		if err := checkFormat(p.key(k), "value", labels[k], content.IsLabelValue(labels[k])); err != nil {
			return err
		}
	}
	return nil
}

func validateAnnotations(annotations map[string]string, p fieldPath) error {
	total := 0
	for _, k := range sortedKeys(annotations) {
		if err := checkFormat(p.key(k), "key", k, content.IsLabelKey(k)); err != nil {
			return err
		}
		total += len(k) + len(annotations[k])
	}
	if total > TotalAnnotationSizeLimit {
		return invalid(p, "annotations take %d bytes, more than the limit of %d", total, TotalAnnotationSizeLimit)
	}
	return nil
}

func validateOwnerReferences(refs []*capstanv1.OwnerReference, p fieldPath) error {
	controller := -1
	for i, ref := range refs {
		rp := p.index(i)
		switch {
		case ref.GetKind() == "":
			return required(rp.child("kind"))
		case ref.GetName() == "":
			return required(rp.child("name"))
		case ref.GetUid() == "":
			return required(rp.child("uid"))
		}
		if ref.GetController() {
			if controller >= 0 {
				return invalid(rp.child("controller"), "only one owner reference may be the controller, and %s already is", p.index(controller))
			}
			controller = i
		}
	}
	return nil
}

// validateResourceList checks a map of resource quantities (requests,
// limits, node capacity): names are "cpu", "memory" or other qualified names,
// values parse as Kubernetes quantities and are not negative. It returns the
// parsed quantities.
func validateResourceList(list map[string]string, p fieldPath) (map[string]k8sresource.Quantity, error) {
	parsed := make(map[string]k8sresource.Quantity, len(list))
	for _, name := range sortedKeys(list) {
		ep := p.key(name)
		if name != "cpu" && name != "memory" {
			if err := checkFormat(ep, "resource name", name, content.IsLabelKey(name)); err != nil {
				return nil, err
			}
		}
		q, err := k8sresource.ParseQuantity(list[name])
		if err != nil {
			return nil, invalid(ep, "invalid quantity %s: %v (examples: \"500m\", \"2\", \"64Mi\", \"1G\")", quote(list[name]), err)
		}
		if q.Sign() < 0 {
			return nil, invalid(ep, "must be non-negative, not %s", list[name])
		}
		parsed[name] = q
	}
	return parsed, nil
}
