package testcluster

import capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"

// ReplicaSet is a ReplicaSet to create: replicas pods of spec, labelled
// app=<name> and selected by that label. It is how tests and benchmarks
// get pods that the control plane creates, schedules and replaces.
func ReplicaSet(namespace, name string, replicas int32, spec *capstanv1.PodSpec) *capstanv1.ReplicaSet {
	labels := map[string]string{"app": name}
	return &capstanv1.ReplicaSet{
		Metadata: &capstanv1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: &capstanv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &capstanv1.LabelSelector{MatchLabels: labels},
			Template: &capstanv1.PodTemplateSpec{Metadata: &capstanv1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}
}
