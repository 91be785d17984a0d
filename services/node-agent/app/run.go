package app

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"time"

	k8sresource "k8s.io/apimachinery/pkg/api/resource"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/grpcserver"
	"github.com/capstan-dev/capstan/internal/logging"
	"github.com/capstan-dev/capstan/internal/version"
	"github.com/capstan-dev/capstan/services/node-agent/internal/agent"
	"github.com/capstan-dev/capstan/services/node-agent/internal/hollow"
	"github.com/capstan-dev/capstan/services/node-agent/internal/runtime"
)

// Timings of the node agent's own machinery.
const (
	// probeTimeout bounds --health-probe.
	probeTimeout = 3 * time.Second
	// grpcStopTimeout bounds the graceful stop of the NodeAgentService;
	// log streams are cut at once anyway.
	grpcStopTimeout = 5 * time.Second
)

// RuntimeProcess is node_info.runtime of a real node.
const RuntimeProcess = "process"

// Run runs the node agent until ctx ends: it registers the node, holds its
// lease, runs the pods bound to it and serves the NodeAgentService on
// --listen (SERVING once the node is registered; it stays SERVING while the
// API is away, since the agent keeps running the pods). When ctx ends it
// stops syncing, releases the node lease and returns nil, leaving the pods
// running for the next agent to adopt. In probe mode (--health-probe) it
// only checks that address's health.
func Run(ctx context.Context, opts Options) error {
	opts = opts.Complete()
	if err := opts.Validate(); err != nil {
		return fmt.Errorf("%s: %w", Name, err)
	}
	if opts.HealthProbe != "" {
		probeCtx, cancel := context.WithTimeout(ctx, probeTimeout)
		defer cancel()
		return grpcserver.Probe(probeCtx, opts.HealthProbe)
	}
	base, err := newLogger(opts)
	if err != nil {
		return err
	}
	logger := base.With("node", opts.NodeName)
	cpu, memory, err := machineResources(opts)
	if err != nil {
		return fmt.Errorf("%s: %w", Name, err)
	}
	endpoint, _ := opts.AgentEndpoint() // validated

	lis := opts.Listener
	if lis == nil {
		if lis, err = net.Listen("tcp", opts.Listen); err != nil {
			return fmt.Errorf("%s: --listen: %w", Name, err)
		}
	}
	c, err := client.New(client.Config{
		Endpoints: client.EndpointsFrom(opts.Server),
		Logger:    logger.With("subsystem", "client"),
		UserAgent: Name,
	})
	if err != nil {
		lis.Close()
		return fmt.Errorf("%s: %w", Name, err)
	}
	defer c.Close()
	srv := grpcserver.New(grpcserver.Options{Logger: logger.With("subsystem", "grpc")})

	// node runs the node (or the hollow nodes); registered is closed once
	// every node is registered.
	var node func(ctx context.Context) error
	var registered []<-chan struct{}
	var closeRuntime func()
	if opts.HollowNodes > 0 {
		nodes, err := hollow.New(hollow.Config{
			Client:        c,
			NamePrefix:    opts.NodeName,
			Count:         opts.HollowNodes,
			Address:       opts.Address,
			AgentEndpoint: endpoint,
			Labels:        opts.Labels,
			CPU:           cpu,
			Memory:        memory,
			MaxPods:       opts.MaxPods,
			LeaseDuration: opts.LeaseDuration,
			Logger:        base,
		})
		if err != nil {
			lis.Close()
			return fmt.Errorf("%s: %w", Name, err)
		}
		capstanv1.RegisterNodeAgentServiceServer(srv, agent.NewNodeAgentServer(fmt.Sprintf("%s-[0-%d]", opts.NodeName, opts.HollowNodes-1), nodes.LogSource(), ""))
		for _, a := range nodes.Agents() {
			registered = append(registered, a.Registered())
		}
		node = nodes.Run
		closeRuntime = func() {}
		logger.Info("hollow mode: simulating nodes that run no processes", "hollow-nodes", opts.HollowNodes,
			"first", opts.NodeName+"-0", "last", fmt.Sprintf("%s-%d", opts.NodeName, opts.HollowNodes-1))
	} else {
		nodePorts, _ := opts.nodePortRange() // validated
		rt, err := runtime.NewProcessRuntime(runtime.ProcessOptions{
			StateDir:      filepath.Join(opts.StateDir, "runtime"),
			NodeName:      opts.NodeName,
			Logger:        logger.With("subsystem", "runtime"),
			NodePortRange: nodePorts,
		})
		if err != nil {
			lis.Close()
			return fmt.Errorf("%s: %w", Name, err)
		}
		closeRuntime = func() {
			if err := rt.Close(); err != nil {
				logger.Warn("closing the runtime", "error", err)
			}
		}
		cfg := agent.Config{
			NodeName:      opts.NodeName,
			Client:        c,
			Runtime:       rt,
			RuntimeName:   RuntimeProcess,
			Address:       opts.Address,
			AgentEndpoint: endpoint,
			Labels:        opts.Labels,
			CPU:           cpu,
			Memory:        memory,
			MaxPods:       opts.MaxPods,
			LeaseDuration: opts.LeaseDuration,
			CheckpointDir: filepath.Join(opts.StateDir, "agent", "pods"),
			Logger:        logger,
		}
		if opts.Tune != nil {
			opts.Tune(&cfg)
		}
		a, err := agent.New(cfg)
		if err != nil {
			closeRuntime()
			lis.Close()
			return fmt.Errorf("%s: %w", Name, err)
		}
		capstanv1.RegisterNodeAgentServiceServer(srv, agent.NewNodeAgentServer(opts.NodeName, agent.RuntimeLogs(rt), opts.Address))
		registered = append(registered, a.Registered())
		node = a.Run
	}
	defer closeRuntime()

	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	logger.Info("starting", "listen", lis.Addr().String(), "agent-endpoint", endpoint, "address", opts.Address,
		"state-dir", opts.StateDir, "cpu", cpu, "memory", memory, "max-pods", opts.MaxPods, "node-port-range", opts.NodePortRange,
		"servers", c.Endpoints(), "version", version.Version)

	runCtx, stopNode := context.WithCancel(ctx)
	defer stopNode()
	nodeDone := make(chan error, 1)
	go func() { nodeDone <- node(runCtx) }()
	servingDone := make(chan struct{})
	go func() {
		defer close(servingDone)
		for _, ch := range registered {
			select {
			case <-ch:
			case <-runCtx.Done():
				return
			}
		}
		srv.SetServing(true)
		logger.Info("registered: SERVING")
	}()

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down: the pods keep running")
	case err := <-served:
		served <- err // for the wait below
		runErr = fmt.Errorf("%s: gRPC server stopped: %w", Name, err)
		logger.Error("gRPC server stopped on its own; shutting down", "error", err)
	case err := <-nodeDone:
		nodeDone <- err
		runErr = fmt.Errorf("%s: the agent stopped on its own: %w", Name, err)
		logger.Error("the agent stopped on its own; shutting down", "error", err)
	}
	stopNode()
	if err := <-nodeDone; err != nil && runErr == nil {
		runErr = fmt.Errorf("%s: %w", Name, err)
	}
	<-servingDone
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grpcStopTimeout)
	if err := srv.Stop(stopCtx); err != nil {
		logger.Warn("graceful gRPC stop timed out; remaining calls were cut off", "error", err)
	}
	cancel()
	if err := <-served; err != nil && runErr == nil {
		runErr = fmt.Errorf("%s: %w", Name, err)
	}
	if runErr == nil {
		logger.Info("stopped")
	}
	return runErr
}

// machineResources are --cpu and --memory, or the machine's CPUs and
// memory.
func machineResources(opts Options) (cpu, memory string, err error) {
	cpu, memory = opts.CPU, opts.Memory
	if cpu == "" {
		cpu = strconv.Itoa(goruntime.NumCPU())
	}
	if memory == "" {
		total, err := memTotal("/proc/meminfo")
		if err != nil {
			return "", "", fmt.Errorf("the machine's memory (set --memory): %w", err)
		}
		memory = k8sresource.NewQuantity(total, k8sresource.BinarySI).String()
	}
	return cpu, memory, nil
}

// memTotal reads MemTotal, in bytes, from a /proc/meminfo file.
func memTotal(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kib, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil || kib <= 0 {
				return 0, fmt.Errorf("%s: MemTotal %q", path, fields[1])
			}
			return kib * 1024, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New(path + ": no MemTotal line")
}

func newLogger(opts Options) (*slog.Logger, error) {
	log, err := logging.New(opts.LogOutput, opts.LogLevel, opts.LogFormat)
	if err != nil {
		return nil, err
	}
	return log.With("component", Name), nil
}
