package grpcserver

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Probe asks the server at addr (host:port) for its overall grpc.health.v1
// status and returns nil only if it is SERVING. It is what the binaries'
// --health-probe flag runs, because a FROM-scratch image has no shell and no
// grpc-health-probe. ctx bounds the whole check; without a deadline a
// server that accepts connections but never answers blocks Probe.
func Probe(ctx context.Context, addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("grpcserver: probe %s: %w", addr, err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
	if err != nil {
		return fmt.Errorf("grpcserver: probe %s: %w", addr, err)
	}
	if st := resp.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("grpcserver: probe %s: status %s", addr, st)
	}
	return nil
}
