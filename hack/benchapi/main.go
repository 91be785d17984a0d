// Command benchapi measures the API server's write path against raw etcd on
// the same cluster: it starts three real apiserver replicas (embedded etcd)
// on free loopback ports (package testcluster), creates -n ConfigMaps at
// concurrency -c through one API replica, then puts as many values of the
// same size straight into etcd, and prints throughput, p50 and p99 of both
// and their ratio. `make bench-api` runs it; it is a benchmark, not a test,
// and asserts nothing.
//
//	benchapi [-n 2000] [-c 20] [-value-bytes 256] [-bin-dir bin] [-keep-state] [-v]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/latency"
	"github.com/capstan-dev/capstan/internal/testcluster"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "benchapi:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	n := flag.Int("n", 2000, "writes per measurement")
	concurrency := flag.Int("c", 20, "concurrent writers")
	valueBytes := flag.Int("value-bytes", 256, "size of each ConfigMap's data")
	var program testcluster.ProgramFlags
	program.AddFlags(flag.CommandLine)
	flag.Parse()

	cluster, err := program.Start(ctx, testcluster.Config{Name: "benchapi", APIServersOnly: true})
	if err != nil {
		return err
	}
	defer program.Close(cluster)

	api, err := cluster.NewClient(client.Config{Endpoints: cluster.APIAddresses()[:1], Logger: program.Logger()})
	if err != nil {
		return err
	}
	defer api.Close()
	etcd, err := clientv3.New(clientv3.Config{Endpoints: cluster.EtcdURLs(), Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer etcd.Close()

	data := map[string]string{"value": strings.Repeat("x", *valueBytes)}
	raw, err := proto.Marshal(&capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "bench-000000", Namespace: "bench"}, Data: data})
	if err != nil {
		return err
	}
	apiWrite := func(prefix string) func(ctx context.Context, i int) error {
		return func(ctx context.Context, i int) error {
			_, err := api.ConfigMaps().CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: &capstanv1.ConfigMap{
				Metadata: &capstanv1.ObjectMeta{Name: fmt.Sprintf("%s-%06d", prefix, i), Namespace: "bench"}, Data: data,
			}})
			return err
		}
	}
	etcdWrite := func(prefix string) func(ctx context.Context, i int) error {
		return func(ctx context.Context, i int) error {
			_, err := etcd.Put(ctx, fmt.Sprintf("/bench/%s/%06d", prefix, i), string(raw))
			return err
		}
	}

	// Warm both paths up (connections, etcd's first compaction-free writes).
	if _, err := measure(ctx, 200, *concurrency, apiWrite("warm")); err != nil {
		return err
	}
	if _, err := measure(ctx, 200, *concurrency, etcdWrite("warm")); err != nil {
		return err
	}
	etcdResult, err := measure(ctx, *n, *concurrency, etcdWrite("raw"))
	if err != nil {
		return err
	}
	apiResult, err := measure(ctx, *n, *concurrency, apiWrite("api"))
	if err != nil {
		return err
	}
	fmt.Printf("%d writes at concurrency %d, %d-byte values, 3 members on loopback\n", *n, *concurrency, len(raw))
	fmt.Printf("%-22s %10s %10s %10s\n", "", "writes/s", "p50 ms", "p99 ms")
	etcdResult.print("raw etcd Put")
	apiResult.print("API CreateConfigMap")
	fmt.Printf("API / etcd: throughput %.0f %%, p99 %.2fx\n",
		100*apiResult.perSecond/etcdResult.perSecond, apiResult.latency.P99.Seconds()/etcdResult.latency.P99.Seconds())
	return nil
}

type result struct {
	perSecond float64
	latency   latency.Summary
}

func (r result) print(name string) {
	fmt.Printf("%-22s %10.0f %10.2f %10.2f\n", name, r.perSecond, latency.Ms(r.latency.P50), latency.Ms(r.latency.P99))
}

// measure runs n writes from concurrency goroutines and reports throughput
// and latency percentiles. The first error stops it.
func measure(ctx context.Context, n, concurrency int, write func(ctx context.Context, i int) error) (result, error) {
	latencies := make([]time.Duration, n)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range concurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				if err := write(ctx, i); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				latencies[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return result{}, firstErr
	}
	return result{perSecond: float64(n) / elapsed.Seconds(), latency: latency.Summarize(latencies)}, nil
}
