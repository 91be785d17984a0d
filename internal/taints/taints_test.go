package taints

import (
	"testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

func TestTolerates(t *testing.T) {
	taint := &capstanv1.Taint{Key: "k", Value: "v", Effect: "NoSchedule"}
	tests := []struct {
		name string
		tol  *capstanv1.Toleration
		want bool
	}{
		{"equal match", &capstanv1.Toleration{Key: "k", Value: "v"}, true},
		{"explicit Equal", &capstanv1.Toleration{Key: "k", Operator: "Equal", Value: "v", Effect: "NoSchedule"}, true},
		{"other value", &capstanv1.Toleration{Key: "k", Value: "w"}, false},
		{"other key", &capstanv1.Toleration{Key: "x", Value: "v"}, false},
		{"exists on key", &capstanv1.Toleration{Key: "k", Operator: "Exists"}, true},
		{"exists everything", &capstanv1.Toleration{Operator: "Exists"}, true},
		{"other effect", &capstanv1.Toleration{Key: "k", Operator: "Exists", Effect: "NoExecute"}, false},
		{"unknown operator", &capstanv1.Toleration{Key: "k", Operator: "Gt", Value: "v"}, false},
	}
	for _, tt := range tests {
		if got := Tolerates(tt.tol, taint); got != tt.want {
			t.Errorf("%s: Tolerates = %v, want %v", tt.name, got, tt.want)
		}
		if got := Tolerated(taint, []*capstanv1.Toleration{{Key: "unrelated"}, tt.tol}); got != tt.want {
			t.Errorf("%s: Tolerated = %v, want %v", tt.name, got, tt.want)
		}
	}
}
