package api_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
)

// BenchmarkCreateConfigMap measures the create path (handler, registry,
// validation, storage Txn) through one in-process replica; `make bench-api`
// measures the real binaries against raw etcd.
func BenchmarkCreateConfigMap(b *testing.B) {
	e := newEnvB(b)
	cm := capstanv1.NewConfigMapServiceClient(e.conns[0])
	var n atomic.Int64
	b.SetParallelism(10)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_, err := cm.CreateConfigMap(context.Background(), &capstanv1.CreateConfigMapRequest{ConfigMap: &capstanv1.ConfigMap{
				Metadata: &capstanv1.ObjectMeta{Name: fmt.Sprintf("cm-%d", n.Add(1))}, Data: map[string]string{"k": "v"},
			}})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}
