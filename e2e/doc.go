// Package e2e tests the real apiserver binary end to end: three replicas,
// each embedding an etcd member, started as separate processes by package
// localcluster on free loopback ports, and driven with real signals
// (SIGKILL, SIGSTOP, SIGCONT) while real clients talk to them.
//
// The package holds only tests. They share one cluster, started on first
// use and stopped by TestMain; the tests run one after another (none is
// parallel), and a test that disturbs the cluster restores it in its
// cleanup, so each test starts with three SERVING replicas. Every process
// is stopped by its pid through the cluster's Down, also when a test fails.
package e2e
