// Package e2e tests Capstan's real binaries end to end: a cluster of three
// masters, each an apiserver embedding an etcd member, a controller-manager
// and a scheduler, and three workers, real node agents — started as
// separate processes on free loopback ports by package testcluster — and
// driven with real signals (SIGKILL, SIGTERM, SIGSTOP, SIGCONT) while real
// clients talk to them.
//
// The tests of the API servers (apiserver_test.go, failover_test.go,
// compaction_test.go) drive ConfigMaps, which no controller touches. The
// tests of the lease-gated components (controlplane_test.go, leases_test.go)
// find the active controller-manager and scheduler from their leases, and
// check what they did from independent watches that record every change of
// the objects involved, so that an invariant is checked at every moment the
// store passed through, not only at the end: how each way a leader can go
// hands its lease over (SIGKILL, SIGTERM, SIGSTOP, a network cut, each
// transition an Event on the Lease), and that faults of API replicas move
// no lease. The node agent is not their subject: their pods run on pools of
// hollow nodes of their own (the real node agent in --hollow-nodes mode,
// which runs no processes and reports every pod Running and Ready at once).
// The node agent's tests (nodeagent_test.go, nodelease_test.go) run real
// pods, processes, on the real workers.
//
// The package holds only tests and their glue over testcluster. They share
// one cluster, started on first use and stopped by TestMain; the tests run
// one after another (none is parallel), each in its own namespace and with
// its own nodes, and a test that disturbs the cluster restores it in its
// cleanup, so each test starts with every process running and ready. Every
// process is stopped by its pid, also when a test fails, and the logs and
// data are kept then.
package e2e
