package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/testcluster"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

var (
	podKind        = resource.MustLookup("Pod")
	replicaSetKind = resource.MustLookup("ReplicaSet")
	deploymentKind = resource.MustLookup("Deployment")
	leaseKind      = resource.MustLookup("Lease")
)

// The workloads the run scales and rolls out: a Deployment (maxSurge 1)
// and a ReplicaSet of echo pods.
const (
	deploymentName = "web"
	replicaSetName = "steady"
	maxSurge       = 1
	// boundWindow: after a scale-down, the pods above the new size go
	// only when a controller manager deletes them, which a fault can
	// delay; the bound is the largest size asked for within this window.
	boundWindow = 60 * time.Second
)

func echoSpec(command string, version int) *capstanv1.PodSpec {
	return &capstanv1.PodSpec{
		TerminationGracePeriodSeconds: proto.Int64(2),
		Containers: []*capstanv1.Container{{
			Name: "echo", Command: []string{command},
			Env:            []*capstanv1.EnvVar{{Name: "VERSION", Value: fmt.Sprint(version)}},
			Ports:          []*capstanv1.ContainerPort{{ContainerPort: 8080}},
			ReadinessProbe: &capstanv1.Probe{HttpGet: &capstanv1.HttpGetAction{Path: "/healthz", Port: 8080}, PeriodSeconds: 1},
			Resources:      &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": "50m", "memory": "16Mi"}},
		}},
	}
}

// desiredLog is the sizes asked of one workload, with when.
type desiredLog struct {
	mu      sync.Mutex
	changes []desiredChange
}

type desiredChange struct {
	at       time.Time
	replicas int32
}

func (d *desiredLog) set(at time.Time, n int32) {
	d.mu.Lock()
	d.changes = append(d.changes, desiredChange{at, n})
	d.mu.Unlock()
}

// bound is the most replicas asked for at any moment of [at-window, at].
func (d *desiredLog) bound(at time.Time) int32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b int32
	for i, c := range d.changes {
		end := at
		if i+1 < len(d.changes) {
			end = d.changes[i+1].at
		}
		if c.at.After(at) {
			break
		}
		if end.After(at.Add(-boundWindow)) {
			b = max(b, c.replicas)
		}
	}
	return b
}

// workloads creates the Deployment and the ReplicaSet and changes them at
// random while the run lasts.
type workloads struct {
	c       *client.Client
	ns      string
	echo    string
	rng     *rand.Rand
	stats   *opStats
	web     desiredLog
	steady  desiredLog
	version int
	// Counts of what was asked.
	scales, rollouts int
}

func (w *workloads) create(ctx context.Context) error {
	labels := map[string]string{"app": deploymentName}
	// The sizes are noted before the creates are sent: the pod watch may
	// see the first pods before a create's answer arrives.
	now := time.Now()
	w.web.set(now, 3)
	w.steady.set(now, 3)
	if _, err := w.c.Create(ctx, &capstanv1.Deployment{
		Metadata: &capstanv1.ObjectMeta{Namespace: w.ns, Name: deploymentName},
		Spec: &capstanv1.DeploymentSpec{
			Replicas: proto.Int32(3),
			Selector: &capstanv1.LabelSelector{MatchLabels: labels},
			Template: &capstanv1.PodTemplateSpec{Metadata: &capstanv1.ObjectMeta{Labels: labels}, Spec: echoSpec(w.echo, 0)},
			Strategy: &capstanv1.DeploymentStrategy{Type: "RollingUpdate", RollingUpdate: &capstanv1.RollingUpdateDeployment{MaxSurge: fmt.Sprint(maxSurge), MaxUnavailable: "1"}},
		},
	}); err != nil {
		return fmt.Errorf("create deployment: %w", err)
	}
	if _, err := w.c.Create(ctx, testcluster.ReplicaSet(w.ns, replicaSetName, 3, echoSpec(w.echo, 0))); err != nil {
		return fmt.Errorf("create replicaset: %w", err)
	}
	return nil
}

// run changes a workload every 5-10 s until ctx ends.
func (w *workloads) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(5*time.Second + rand.N(5*time.Second)):
		}
		switch w.rng.IntN(3) {
		case 0:
			n := int32(2 + w.rng.IntN(5))
			w.update(ctx, deploymentKind, deploymentName, "scale", func(obj resource.Object) {
				obj.(*capstanv1.Deployment).Spec.Replicas = &n
			}, func(at time.Time) { w.web.set(at, n) })
		case 1:
			w.version++
			v := w.version
			w.update(ctx, deploymentKind, deploymentName, "rollout", func(obj resource.Object) {
				obj.(*capstanv1.Deployment).Spec.Template.Spec = echoSpec(w.echo, v)
			}, nil)
		case 2:
			n := int32(2 + w.rng.IntN(4))
			w.update(ctx, replicaSetKind, replicaSetName, "scale", func(obj resource.Object) {
				obj.(*capstanv1.ReplicaSet).Spec.Replicas = &n
			}, func(at time.Time) { w.steady.set(at, n) })
		}
	}
}

// update reads, changes and writes the object, once; a size is noted
// before the write is sent (it may land even if the call fails).
func (w *workloads) update(ctx context.Context, kind *resource.Kind, name, what string, change func(resource.Object), noteAt func(time.Time)) {
	callCtx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	obj, err := w.c.Get(callCtx, kind, w.ns, name)
	if err != nil {
		w.stats.add(what+" "+kind.Resource, err)
		return
	}
	obj = resource.Clone(obj)
	change(obj)
	if noteAt != nil {
		noteAt(time.Now())
	}
	_, err = w.c.Update(callCtx, obj)
	w.stats.add(what+" "+kind.Resource, err)
	if err == nil {
		if what == "rollout" {
			w.rollouts++
		} else {
			w.scales++
		}
	}
}

// podWatch follows the run's pods and checks, at every change, that no pod
// is bound twice or moved to another node (check 4) and that no workload
// has more active pods than its bound (check 5).
type podWatch struct {
	w        *workloads
	mu       sync.Mutex
	nodeOf   map[string]string // uid → node it was bound to
	current  map[string]*capstanv1.Pod
	rebinds  []string
	overs    []string
	maxSeen  map[string]int32
	events   int
	watchErr error
}

func newPodWatch(w *workloads) *podWatch {
	return &podWatch{w: w, nodeOf: map[string]string{}, current: map[string]*capstanv1.Pod{}, maxSeen: map[string]int32{}}
}

func (p *podWatch) run(ctx context.Context, c *client.Client) {
	watcher := c.Watch(ctx, podKind, client.WatchOptions{Namespace: p.w.ns})
	defer watcher.Stop()
	for ev := range watcher.Events() {
		pod, ok := ev.Object.(*capstanv1.Pod)
		if !ok {
			continue
		}
		p.observe(ev.Type, pod)
	}
	p.mu.Lock()
	p.watchErr = watcher.Err()
	p.mu.Unlock()
}

func (p *podWatch) observe(typ capstanv1.WatchEventType, pod *capstanv1.Pod) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events++
	uid, name := pod.GetMetadata().GetUid(), pod.GetMetadata().GetName()
	if node := pod.GetSpec().GetNodeName(); node != "" {
		if was, ok := p.nodeOf[uid]; ok && was != node {
			p.rebinds = append(p.rebinds, fmt.Sprintf("pod %s (uid %s) bound to %s, then to %s", name, uid, was, node))
		}
		p.nodeOf[uid] = node
	}
	if typ == client.Deleted {
		delete(p.current, uid)
	} else {
		p.current[uid] = pod
	}
	now := time.Now()
	for app, log := range map[string]*desiredLog{deploymentName: &p.w.web, replicaSetName: &p.w.steady} {
		var active int32
		var names []string
		for _, q := range p.current {
			if q.GetMetadata().GetLabels()["app"] == app && activePod(q) {
				active++
				names = append(names, fmt.Sprintf("%s (created %s, on %q)", q.GetMetadata().GetName(),
					q.GetMetadata().GetCreateTime().AsTime().Format(time.StampMilli), q.GetSpec().GetNodeName()))
			}
		}
		bound := log.bound(now)
		if app == deploymentName {
			bound += maxSurge
		}
		p.maxSeen[app] = max(p.maxSeen[app], active)
		if active > bound {
			slices.Sort(names)
			p.overs = append(p.overs, fmt.Sprintf("%s had %d active pods at %s, above its bound %d: %s", app, active, now.Format(time.StampMilli), bound, strings.Join(names, ", ")))
		}
	}
}

// activePod: not being deleted, not finished.
func activePod(p *capstanv1.Pod) bool {
	if p.GetMetadata().GetDeleteTime() != nil {
		return false
	}
	ph := p.GetStatus().GetPhase()
	return ph != wellknown.PodSucceeded && ph != wellknown.PodFailed
}

// converged reports whether both workloads have every replica updated and
// available.
func (w *workloads) converged(ctx context.Context) error {
	obj, err := w.c.Get(ctx, deploymentKind, w.ns, deploymentName)
	if err != nil {
		return err
	}
	d := obj.(*capstanv1.Deployment)
	want := d.GetSpec().GetReplicas()
	if st := d.GetStatus(); st.GetObservedGeneration() < d.GetMetadata().GetGeneration() || st.GetUpdatedReplicas() != want ||
		st.GetAvailableReplicas() != want || st.GetReplicas() != want {
		return fmt.Errorf("deployment %s: want %d, status %v", deploymentName, want, st)
	}
	obj, err = w.c.Get(ctx, replicaSetKind, w.ns, replicaSetName)
	if err != nil {
		return err
	}
	rs := obj.(*capstanv1.ReplicaSet)
	want = rs.GetSpec().GetReplicas()
	if st := rs.GetStatus(); st.GetObservedGeneration() < rs.GetMetadata().GetGeneration() || st.GetReadyReplicas() != want || st.GetReplicas() != want {
		return fmt.Errorf("replicaset %s: want %d, status %v", replicaSetName, want, st)
	}
	return nil
}

// restartedPods are the pods on nodes outside faulted whose containers
// restarted (check 6).
func (w *workloads) restartedPods(ctx context.Context, faulted map[string]bool) (checked int, restarted []string, err error) {
	res, err := w.c.ListAll(ctx, podKind, client.ListOptions{Namespace: w.ns})
	if err != nil {
		return 0, nil, err
	}
	for _, obj := range res.Items {
		pod := obj.(*capstanv1.Pod)
		node := pod.GetSpec().GetNodeName()
		if node == "" || faulted[node] {
			continue
		}
		checked++
		for _, cs := range pod.GetStatus().GetContainerStatuses() {
			if cs.GetRestartCount() > 0 {
				restarted = append(restarted, fmt.Sprintf("%s on %s: container %s restarted %d times", pod.GetMetadata().GetName(), node, cs.GetName(), cs.GetRestartCount()))
			}
		}
	}
	return checked, restarted, nil
}
