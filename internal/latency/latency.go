// Package latency summarises measured durations the way Capstan's
// benchmarks report them: count, minimum, p50, p99 and maximum, with
// nearest-rank percentiles (the smallest sample that at least p % of the
// samples do not exceed), so every reported figure is one that was
// measured.
package latency

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Percentile is the nearest-rank p-th percentile (0 < p ≤ 100) of samples,
// which need not be sorted; 0 for no samples.
func Percentile(samples []time.Duration, p float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	return percentileOfSorted(sorted, p)
}

func percentileOfSorted(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// Summary is what a benchmark reports of a set of samples.
type Summary struct {
	N                  int
	Min, P50, P99, Max time.Duration
}

// Summarize sums samples up; the zero Summary for none.
func Summarize(samples []time.Duration) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	return Summary{
		N:   len(sorted),
		Min: sorted[0],
		P50: percentileOfSorted(sorted, 50),
		P99: percentileOfSorted(sorted, 99),
		Max: sorted[len(sorted)-1],
	}
}

// Ms is d in milliseconds, to a microsecond: the unit of every report.
func Ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// String is "n=10 min 1.0 p50 2.0 p99 3.0 max 3.0 ms".
func (s Summary) String() string {
	return fmt.Sprintf("n=%d min %.1f p50 %.1f p99 %.1f max %.1f ms", s.N, Ms(s.Min), Ms(s.P50), Ms(s.P99), Ms(s.Max))
}
