// Package taints matches pod tolerations against node taints with
// Kubernetes' rules; the scheduler and the node lifecycle controller share
// it so that "may run there" and "may stay there" never disagree.
package taints

import (
	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// Tolerates reports whether tol tolerates taint: the effect (empty matches
// every effect), then operator Exists (an empty key matches every key) or
// Equal, the default, on key and value.
func Tolerates(tol *capstanv1.Toleration, taint *capstanv1.Taint) bool {
	if tol.GetEffect() != "" && tol.GetEffect() != taint.GetEffect() {
		return false
	}
	switch tol.GetOperator() {
	case "Exists":
		return tol.GetKey() == "" || tol.GetKey() == taint.GetKey()
	case "", "Equal":
		return tol.GetKey() == taint.GetKey() && tol.GetValue() == taint.GetValue()
	}
	return false
}

// Tolerated reports whether one of tolerations tolerates taint.
func Tolerated(taint *capstanv1.Taint, tolerations []*capstanv1.Toleration) bool {
	for _, tol := range tolerations {
		if Tolerates(tol, taint) {
			return true
		}
	}
	return false
}
