package chaos

import (
	"sync"
	"time"

	"google.golang.org/grpc/status"
)

// opStats counts operations by kind and result code, and successful writes
// per second of the run.
type opStats struct {
	start time.Time
	mu    sync.Mutex
	codes map[string]map[string]int
	// writesOK[i] counts the writes acknowledged in second i of the run.
	writesOK []int
}

func newOpStats(start time.Time) *opStats {
	return &opStats{start: start, codes: map[string]map[string]int{}}
}

func (s *opStats) add(kind string, err error) {
	code := status.Code(err).String()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.codes[kind] == nil {
		s.codes[kind] = map[string]int{}
	}
	s.codes[kind][code]++
	if err == nil && kind != "get" && kind != "list" {
		sec := int(time.Since(s.start) / time.Second)
		for len(s.writesOK) <= sec {
			s.writesOK = append(s.writesOK, 0)
		}
		s.writesOK[sec]++
	}
}

// Availability is the share of the seconds of [from, to) (offsets from
// the start) in which at least one write was acknowledged, and the longest
// run of seconds without one.
func (s *opStats) availability(from, to time.Duration) (share float64, longestGap time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	first, last := int(from/time.Second), int(to/time.Second)
	if last <= first {
		return 1, 0
	}
	ok, gap, longest := 0, 0, 0
	for i := first; i < last; i++ {
		if i < len(s.writesOK) && s.writesOK[i] > 0 {
			ok++
			gap = 0
			continue
		}
		gap++
		longest = max(longest, gap)
	}
	return float64(ok) / float64(last-first), time.Duration(longest) * time.Second
}

func (s *opStats) snapshot() map[string]map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]map[string]int{}
	for k, m := range s.codes {
		out[k] = map[string]int{}
		for c, n := range m {
			out[k][c] = n
		}
	}
	return out
}
