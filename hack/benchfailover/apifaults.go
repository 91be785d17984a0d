package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/capstan-dev/capstan/internal/latency"
	"github.com/capstan-dev/capstan/internal/testcluster"
)

// apiFaultResult is what an API-fault run saw.
type apiFaultResult struct {
	components []string
	faults     []testcluster.APIFault
	hold       time.Duration
	// holdings are each component's holdings during the run, the first
	// the one of its start; moved are the faults with which a component's
	// holding changed, with the holdings it went through.
	holdings map[string][]testcluster.Holding
	moved    []string
}

// apiFaultRun breaks API server processes, one at a time, faults times
// (testcluster.RunAPIFaults: kill, SIGTERM stop and SIGSTOP pause in turn,
// every other one on the etcd leader's replica, each lasting hold and then
// restored), and records every change of holding of the components'
// leases meanwhile.
func (b *bench) apiFaultRun(ctx context.Context, components []string, faults int, hold time.Duration) (apiFaultResult, error) {
	res := apiFaultResult{components: components, hold: hold, holdings: map[string][]testcluster.Holding{}}
	for _, name := range components {
		if _, err := b.cluster.WaitSettled(ctx, name, standbyTimeout); err != nil {
			return res, err
		}
	}
	log, err := b.cluster.RecordHoldings(ctx, components...)
	if err != nil {
		return res, err
	}
	defer log.Stop()
	fmt.Fprintf(os.Stderr, "API-fault run: %d faults of API servers, each held %v ...\n", faults, hold)
	res.faults, err = b.cluster.RunAPIFaults(ctx, testcluster.APIFaultRun{Faults: faults, Hold: hold, Holdings: log, Done: func(f testcluster.APIFault) error {
		if len(f.Moved) > 0 {
			res.moved = append(res.moved, f.String())
		}
		fmt.Fprintf(os.Stderr, "%v; restored in %.0f ms\n", f, latency.Ms(f.Restored))
		return nil
	}})
	if err != nil {
		return res, err
	}
	for _, name := range components {
		res.holdings[name] = log.Holdings(name)
	}
	if err := log.Stop(); err != nil {
		return res, err
	}
	return res, nil
}

func (r apiFaultResult) print(w io.Writer) {
	kinds, onLeader := map[testcluster.Fault]int{}, 0
	for _, f := range r.faults {
		kinds[f.Fault]++
		if f.EtcdLeader {
			onLeader++
		}
	}
	var mix []string
	for _, k := range testcluster.Faults {
		mix = append(mix, fmt.Sprintf("%d %s", kinds[k], k))
	}
	fmt.Fprintf(w, "\nAPI-fault run: %d faults of API server processes only (%s; %d on the replica whose etcd member led), each lasting %v, restored before the next\n",
		len(r.faults), strings.Join(mix, ", "), onLeader, r.hold)
	for _, name := range r.components {
		fmt.Fprintf(w, "  %-18s  transitions: %d in %d faults\n", name, len(r.holdings[name])-1, len(r.faults))
	}
	for _, m := range r.moved {
		fmt.Fprintf(w, "  moved at %s\n", m)
	}
}
