// Package app wires the scheduler: its options and flags, the elector
// (package leaderelection, through package component), and, while this
// replica leads, a Scheduler (services/scheduler/internal/scheduler) run
// with the leadership's fenced context. main only parses flags and calls
// Run; tests call Run in-process.
//
// Each leadership builds a new Scheduler, whose informers start with it and
// stop with it: a standby keeps no cache and no watches, and a new leader
// never binds from a cache (or an assume-cache) filled under an earlier
// leadership.
//
// Run blocks until its context ends. Options is plain data.
package app

import (
	"flag"
	"fmt"

	"github.com/capstan-dev/capstan/internal/leaderelection/component"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/scheduler/internal/scheduler"
)

// Name is the component name: in every log line, the API client's user
// agent and the source of its events.
const Name = "scheduler"

// DefaultMetricsListen is where /metrics and /healthz are served unless
// --metrics-listen says otherwise.
const DefaultMetricsListen = "127.0.0.1:10261"

// Options is everything the scheduler is configured with. Start from
// DefaultOptions: a zero Options does not validate.
type Options struct {
	// The flags every lease-gated binary has (--server, --identity,
	// --leader-lease, --lease-duration, --metrics-listen, --log-level,
	// --log-format, --health-probe).
	component.Options

	// MaxBindsInFlight bounds the BindPod calls running at once
	// (--max-binds-in-flight).
	MaxBindsInFlight int
}

// DefaultOptions are the flags' defaults.
func DefaultOptions() Options {
	return Options{
		Options:          component.DefaultOptions(wellknown.SchedulerLease, DefaultMetricsListen),
		MaxBindsInFlight: scheduler.DefaultMaxBindsInFlight,
	}
}

// AddFlags defines the flags on fs, with o's values as defaults, writing
// into o.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	o.Options.AddFlags(fs)
	fs.IntVar(&o.MaxBindsInFlight, "max-binds-in-flight", o.MaxBindsInFlight, "most BindPod calls running at once (decisions are made one pod at a time)")
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
	if o.MaxBindsInFlight < 1 || o.MaxBindsInFlight > 10000 {
		return fmt.Errorf("--max-binds-in-flight must be between 1 and 10000, not %d", o.MaxBindsInFlight)
	}
	return nil
}
