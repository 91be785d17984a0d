package app

import (
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/services/controller-manager/internal/deployment"
	"github.com/capstan-dev/capstan/services/controller-manager/internal/garbagecollector"
	"github.com/capstan-dev/capstan/services/controller-manager/internal/nodelifecycle"
	"github.com/capstan-dev/capstan/services/controller-manager/internal/replicaset"
)

// builders are the controllers the controller-manager runs while it leads,
// in the order they are built. Each is built anew for every leadership, on
// that leadership's informers.
var builders = []builder{
	{"replicaset", func(env buildEnv) (controller, error) {
		return replicaset.New(env.leadership.Client, env.recorder, replicaset.Options{
			ReplicaSets: env.informers.replicaSets,
			Pods:        env.informers.pods,
			Loop:        env.loop,
		})
	}},
	{"deployment", func(env buildEnv) (controller, error) {
		return deployment.New(env.leadership.Client, env.recorder, deployment.Options{
			Deployments: env.informers.deployments,
			ReplicaSets: env.informers.replicaSets,
			Pods:        env.informers.pods,
			Loop:        env.loop,
		})
	}},
	{"nodelifecycle", func(env buildEnv) (controller, error) {
		return nodelifecycle.New(env.leadership.Client, env.recorder, nodelifecycle.Options{
			Nodes:              env.informers.nodes,
			Leases:             env.informers.nodeLeases,
			PodEvictionTimeout: env.opts.PodEvictionTimeout,
			StartupGrace:       env.opts.NodeStartupGrace,
			Loop:               env.loop,
		})
	}},
	{"garbagecollector", func(env buildEnv) (controller, error) {
		inf := env.informers
		return garbagecollector.New(env.leadership.Client, garbagecollector.Options{
			Owners:     []*informer.Informer{inf.replicaSets.Informer, inf.deployments.Informer},
			Dependents: []*informer.Informer{inf.pods.Informer, inf.replicaSets.Informer},
			Loop:       env.loop,
		})
	}},
}
