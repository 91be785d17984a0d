// Package e2e tests Capstan's real binaries end to end: package
// localcluster's ControlPlane topology — three masters, each an apiserver
// embedding an etcd member, a controller-manager and a scheduler, and the
// workers that topology adds — started as separate processes on free
// loopback ports, and driven with real signals (SIGKILL, SIGTERM, SIGSTOP,
// SIGCONT) while real clients talk to them.
//
// The tests of the API servers (apiserver_test.go, failover_test.go,
// compaction_test.go) drive ConfigMaps, which no controller touches. The
// tests of the lease-gated components (controlplane_test.go) find the active
// controller-manager and scheduler from their leases, and check what they
// did from independent watches that record every change of the objects
// involved, so that an invariant is checked at every moment the store
// passed through, not only at the end. The node agent is not their subject:
// they register their own nodes through the API (their pods select them),
// hold the nodes' leases, and play the node agent's part for the pods bound
// to them (controlplane_harness_test.go).
//
// The package holds only tests. They share one cluster, started on first
// use and stopped by TestMain; the tests run one after another (none is
// parallel), each in its own namespace and with its own nodes, and a test
// that disturbs the cluster restores it in its cleanup, so each test starts
// with every process running and ready. Every process is stopped by its pid
// through the cluster's Down, also when a test fails.
package e2e
