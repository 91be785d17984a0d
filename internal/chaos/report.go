package chaos

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

func jsonIndent(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }

// Text is the report for people: faults by kind, operations by kind and
// code, write availability, failovers, and each check.
func (r *Report) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "chaos on %s, seed %d, %v of faults\n\n", r.Target, r.Seed, r.Duration)
	fmt.Fprintf(&b, "faults: %d\n", len(r.Faults))
	for _, k := range slices.Sorted(maps.Keys(r.FaultsBy)) {
		fmt.Fprintf(&b, "  %-28s %d\n", k, r.FaultsBy[k])
	}
	fmt.Fprintf(&b, "\noperations by kind and code:\n")
	for _, k := range slices.Sorted(maps.Keys(r.Operations)) {
		var codes []string
		for _, c := range slices.Sorted(maps.Keys(r.Operations[k])) {
			codes = append(codes, fmt.Sprintf("%s %d", c, r.Operations[k][c]))
		}
		fmt.Fprintf(&b, "  %-20s %s\n", k, strings.Join(codes, ", "))
	}
	fmt.Fprintf(&b, "\nwrite availability during the faults: %.1f %% of seconds with an acknowledged write; longest gap %v\n",
		100*r.WriteAvail, r.LongestGap)
	var failovers []time.Duration
	for _, c := range r.LeaseMoves {
		if c.Fault != "" {
			failovers = append(failovers, c.After)
		}
	}
	slices.Sort(failovers)
	if n := len(failovers); n > 0 {
		fmt.Fprintf(&b, "lease changes after a fault of the holder: %d; from the fault to the change: min %v, p50 %v, max %v\n",
			n, failovers[0].Round(time.Millisecond), failovers[n/2].Round(time.Millisecond), failovers[n-1].Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "\nchecks:\n")
	for _, c := range r.Checks {
		verdict := "PASS"
		if !c.Pass {
			verdict = "FAIL"
		}
		fmt.Fprintf(&b, "  %s  %s: %s\n", verdict, c.Name, c.Counts)
		for _, e := range c.Errors {
			fmt.Fprintf(&b, "        %s\n", e)
		}
	}
	if r.Passed() {
		fmt.Fprintf(&b, "\nall checks passed (seed %d)\n", r.Seed)
	} else {
		fmt.Fprintf(&b, "\nFAILED: replay with SEED=%d", r.Seed)
		if r.HistoryHTML != "" {
			fmt.Fprintf(&b, "; history: %s", r.HistoryHTML)
		}
		b.WriteString("\n")
	}
	return b.String()
}
