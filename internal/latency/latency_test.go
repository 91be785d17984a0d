package latency_test

import (
	"testing"
	"time"

	"github.com/capstan-dev/capstan/internal/latency"
)

func TestPercentileIsNearestRank(t *testing.T) {
	var samples []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		samples = append(samples, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0.5, time.Millisecond}} {
		if got := latency.Percentile(samples, tc.p); got != tc.want {
			t.Errorf("p%v = %v, want %v", tc.p, got, tc.want)
		}
	}
	if samples[0] != 100*time.Millisecond {
		t.Error("Percentile sorted its argument")
	}
	if got := latency.Percentile(nil, 99); got != 0 {
		t.Errorf("p99 of nothing = %v", got)
	}
}

func TestSummarize(t *testing.T) {
	s := latency.Summarize([]time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond})
	want := latency.Summary{N: 3, Min: time.Millisecond, P50: 2 * time.Millisecond, P99: 3 * time.Millisecond, Max: 3 * time.Millisecond}
	if s != want {
		t.Fatalf("Summarize = %+v, want %+v", s, want)
	}
	if got := s.String(); got != "n=3 min 1.0 p50 2.0 p99 3.0 max 3.0 ms" {
		t.Errorf("String = %q", got)
	}
}
