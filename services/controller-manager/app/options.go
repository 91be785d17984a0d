// Package app wires the controller-manager: its options and flags, the
// elector (package leaderelection, through package component), and, while
// this replica leads, the informers and the controllers. main only parses
// flags and calls Run; tests call Run in-process.
//
// Informers are started fresh on every leadership and stopped with it: a
// standby keeps no cache and no watches, so three replicas cost the API
// servers one set of watches, and a new leader never acts on a cache filled
// under an earlier leadership. The price is one List per kind at takeover,
// milliseconds for a cluster of this size; the controllers wait for the
// caches to sync before they act.
//
// Run blocks until its context ends. Options is plain data.
package app

import (
	"flag"
	"fmt"
	"time"

	"github.com/capstan-dev/capstan/internal/leaderelection/component"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/controller-manager/internal/nodelifecycle"
)

// Name is the component name: in every log line, the API client's user
// agent and the source of its events.
const Name = "controller-manager"

// DefaultMetricsListen is where /metrics and /healthz are served unless
// --metrics-listen says otherwise.
const DefaultMetricsListen = "127.0.0.1:10251"

// Options is everything the controller-manager is configured with. Start
// from DefaultOptions: a zero Options does not validate.
type Options struct {
	// The flags every lease-gated binary has (--server, --identity,
	// --leader-lease, --lease-duration, --metrics-listen, --log-level,
	// --log-format, --health-probe).
	component.Options

	// PodEvictionTimeout is how long a node may stay unreachable before
	// its pods are deleted so their owners replace them elsewhere
	// (--pod-eviction-timeout).
	PodEvictionTimeout time.Duration
	// NodeStartupGrace is the grace every node gets after this replica
	// becomes the leader, before its lease is judged
	// (--node-startup-grace): node agents whose renewals went to an API
	// server during the failover must not be evicted for it.
	NodeStartupGrace time.Duration
	// Workers is the number of reconcile workers of each controller
	// (--workers).
	Workers int
}

// DefaultOptions are the flags' defaults.
func DefaultOptions() Options {
	return Options{
		Options:            component.DefaultOptions(wellknown.ControllerManagerLease, DefaultMetricsListen),
		PodEvictionTimeout: nodelifecycle.DefaultPodEvictionTimeout,
		NodeStartupGrace:   nodelifecycle.DefaultStartupGrace,
		Workers:            4,
	}
}

// AddFlags defines the flags on fs, with o's values as defaults, writing
// into o.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	o.Options.AddFlags(fs)
	fs.DurationVar(&o.PodEvictionTimeout, "pod-eviction-timeout", o.PodEvictionTimeout, "how long a node may be unreachable before its pods are deleted and replaced elsewhere")
	fs.DurationVar(&o.NodeStartupGrace, "node-startup-grace", o.NodeStartupGrace, "grace every node gets after this replica becomes the leader before its lease is judged")
	fs.IntVar(&o.Workers, "workers", o.Workers, "reconcile workers per controller")
}

// ParseFlags parses the command line (without the program name) into
// DefaultOptions. Like the flag package, it prints a parse error and the
// usage to stderr before returning the error (flag.ErrHelp for -h). It does
// not validate: Run does.
func ParseFlags(args []string) (Options, error) {
	o := DefaultOptions()
	if err := component.ParseFlags(Name, args, o.AddFlags); err != nil {
		return Options{}, err
	}
	return o, nil
}

// Validate reports the first invalid option, naming its flag.
func (o Options) Validate() error {
	if err := o.Options.Validate(); err != nil {
		return err
	}
	if o.HealthProbe != "" {
		return nil
	}
	if o.PodEvictionTimeout <= 0 {
		return fmt.Errorf("--pod-eviction-timeout must be positive, not %v", o.PodEvictionTimeout)
	}
	if o.NodeStartupGrace <= 0 {
		return fmt.Errorf("--node-startup-grace must be positive, not %v", o.NodeStartupGrace)
	}
	if o.Workers < 1 || o.Workers > 256 {
		return fmt.Errorf("--workers must be between 1 and 256, not %d", o.Workers)
	}
	return nil
}
