package reconcile

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/util/workqueue"
)

// Metrics are the Prometheus metrics of the loops of one process, labelled
// with each loop's name: queue depth, adds, time in the queue, sync
// duration, retries, and syncs by outcome. Make them once per registry with
// NewMetrics and give them to every Loop. One loop of a name should run at
// a time: a loop that stops sets its depth back to 0. A nil *Metrics
// records nothing.
type Metrics struct {
	depth         *prometheus.GaugeVec
	adds          *prometheus.CounterVec
	queueDuration *prometheus.HistogramVec
	workDuration  *prometheus.HistogramVec
	unfinished    *prometheus.GaugeVec
	longest       *prometheus.GaugeVec
	retries       *prometheus.CounterVec
	syncs         *prometheus.CounterVec
}

// NewMetrics registers the loops' metrics with reg, or takes them from reg
// if an earlier call registered them there (every leadership builds its
// loops again).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	buckets := prometheus.ExponentialBuckets(0.0001, 4, 10) // 100 µs to about 26 s
	byName := []string{"name"}
	var err error
	m := &Metrics{
		depth: register(reg, &err, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "capstan_workqueue_depth", Help: "Keys waiting in a loop's queue.",
		}, byName)),
		adds: register(reg, &err, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "capstan_workqueue_adds_total", Help: "Keys added to a loop's queue.",
		}, byName)),
		queueDuration: register(reg, &err, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "capstan_workqueue_queue_duration_seconds", Help: "How long a key waited in the queue before a worker took it.", Buckets: buckets,
		}, byName)),
		workDuration: register(reg, &err, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "capstan_workqueue_work_duration_seconds", Help: "How long one sync of a key took.", Buckets: buckets,
		}, byName)),
		unfinished: register(reg, &err, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "capstan_workqueue_unfinished_work_seconds", Help: "Seconds of syncs in progress not yet counted in work_duration: a large value is a stuck sync.",
		}, byName)),
		longest: register(reg, &err, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "capstan_workqueue_longest_running_processor_seconds", Help: "How long the longest sync in progress has been running.",
		}, byName)),
		retries: register(reg, &err, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "capstan_workqueue_retries_total", Help: "Keys requeued with back-off after a failed sync.",
		}, byName)),
		syncs: register(reg, &err, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "capstan_reconcile_syncs_total", Help: "Syncs by outcome: done, raced (met a newer version), unreachable (no API replica answered), failed, lease-lost, stopping.",
		}, []string{"name", "outcome"})),
	}
	if err != nil {
		return nil, fmt.Errorf("reconcile: metrics: %w", err)
	}
	return m, nil
}

// register registers c with reg and returns it, or the collector reg
// already has under its name; the first failure is kept in *errp.
func register[C prometheus.Collector](reg prometheus.Registerer, errp *error, c C) C {
	if err := reg.Register(c); err != nil {
		var already prometheus.AlreadyRegisteredError
		if errors.As(err, &already) {
			if existing, ok := already.ExistingCollector.(C); ok {
				return existing
			}
		}
		if *errp == nil {
			*errp = err
		}
	}
	return c
}

// synced counts one sync's outcome.
func (m *Metrics) synced(name string, out outcome) {
	if m != nil {
		m.syncs.WithLabelValues(name, string(out)).Inc()
	}
}

// stopped resets the gauges of a loop that stopped: its queue is gone.
func (m *Metrics) stopped(name string) {
	if m != nil {
		m.depth.WithLabelValues(name).Set(0)
		m.unfinished.WithLabelValues(name).Set(0)
		m.longest.WithLabelValues(name).Set(0)
	}
}

// The workqueue.MetricsProvider methods: the queue calls them once, when
// it is made, with the loop's name.

func (m *Metrics) NewDepthMetric(name string) workqueue.GaugeMetric {
	return m.depth.WithLabelValues(name)
}

func (m *Metrics) NewAddsMetric(name string) workqueue.CounterMetric {
	return m.adds.WithLabelValues(name)
}

func (m *Metrics) NewLatencyMetric(name string) workqueue.HistogramMetric {
	return m.queueDuration.WithLabelValues(name)
}

func (m *Metrics) NewWorkDurationMetric(name string) workqueue.HistogramMetric {
	return m.workDuration.WithLabelValues(name)
}

func (m *Metrics) NewUnfinishedWorkSecondsMetric(name string) workqueue.SettableGaugeMetric {
	return m.unfinished.WithLabelValues(name)
}

func (m *Metrics) NewLongestRunningProcessorSecondsMetric(name string) workqueue.SettableGaugeMetric {
	return m.longest.WithLabelValues(name)
}

func (m *Metrics) NewRetriesMetric(name string) workqueue.CounterMetric {
	return m.retries.WithLabelValues(name)
}
