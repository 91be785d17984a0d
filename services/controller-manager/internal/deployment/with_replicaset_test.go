package deployment

import (
	"fmt"
	"sync"
	"testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// With the real ReplicaSet controller making pods and the pods turning
// Ready, a rolling update keeps its bounds and ends with exactly the new
// template's pods.
func TestRollingUpdateWithReplicaSetController(t *testing.T) {
	e := startEnvWith(t, envOptions{realReplicaSets: true})
	const name = "web"
	d := e.createDeployment(newDeployment(name, new(int32(5)), &capstanv1.DeploymentStrategy{
		RollingUpdate: &capstanv1.RollingUpdateDeployment{MaxSurge: "1", MaxUnavailable: "1"},
	}, "/bin/sleep", "1"))
	e.waitFor("the first rollout", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })

	b := e.watchBounds(d.GetMetadata().GetUid(), 5, 1, 1)
	e.updateDeployment(name, setCommand("/bin/sleep", "2"))
	e.waitFor("the rolling update", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
	e.check(b, d)

	want := templateHash(e.getDeployment(name).GetSpec().GetTemplate())
	e.waitFor("only pods of the new template", rolloutTimeout, func() (bool, string) {
		hashes := e.podHashes(name)
		return len(hashes) == 1 && hashes[want] == 5, fmt.Sprint(hashes, " want ", want, " ", describe(e.replicaSetsOf(d)))
	})
}

// With real pods, Recreate never has a pod of the new template while one of
// the old template exists.
func TestRecreateWithReplicaSetController(t *testing.T) {
	e := startEnvWith(t, envOptions{realReplicaSets: true})
	const name = "batch"
	e.createDeployment(newDeployment(name, new(int32(3)),
		&capstanv1.DeploymentStrategy{Type: wellknown.StrategyRecreate}, "/bin/sleep", "1"))
	e.waitFor("the first rollout", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
	oldHash := templateHash(e.getDeployment(name).GetSpec().GetTemplate())

	var (
		mu         sync.Mutex
		violations []string
	)
	w := e.client.Watch(e.ctx, podKind, client.WatchOptions{Namespace: testNamespace, LabelSelector: "app=" + name})
	done := make(chan struct{})
	go func() {
		defer close(done)
		pods := map[string]string{} // name -> pod-template-hash
		for ev := range w.Events() {
			pod := ev.Object.(*capstanv1.Pod)
			if ev.Type == client.Deleted {
				delete(pods, pod.GetMetadata().GetName())
			} else {
				pods[pod.GetMetadata().GetName()] = pod.GetMetadata().GetLabels()[wellknown.LabelPodTemplateHash]
			}
			var oldPods, newPods int
			for _, h := range pods {
				if h == oldHash {
					oldPods++
				} else {
					newPods++
				}
			}
			if oldPods > 0 && newPods > 0 {
				mu.Lock()
				violations = append(violations, fmt.Sprintf("at revision %d: %d new pods while %d old ones exist", ev.ResourceVersion, newPods, oldPods))
				mu.Unlock()
			}
		}
	}()
	defer func() {
		w.Stop()
		<-done
	}()

	e.updateDeployment(name, setCommand("/bin/sleep", "2"))
	e.waitFor("the recreate rollout", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
	want := templateHash(e.getDeployment(name).GetSpec().GetTemplate())
	e.waitFor("only pods of the new template", rolloutTimeout, func() (bool, string) {
		hashes := e.podHashes(name)
		return len(hashes) == 1 && hashes[want] == 3, fmt.Sprint(hashes)
	})
	mu.Lock()
	defer mu.Unlock()
	for _, v := range violations {
		t.Error(v)
	}
}

// podHashes counts the pods of app=name by pod-template-hash.
func (e *env) podHashes(name string) map[string]int {
	e.t.Helper()
	res, err := e.client.ListAll(e.ctx, resource.MustLookup("Pod"), client.ListOptions{Namespace: testNamespace, LabelSelector: "app=" + name})
	if err != nil {
		e.t.Fatalf("list pods: %v", err)
	}
	hashes := map[string]int{}
	for _, obj := range res.Items {
		hashes[obj.GetMetadata().GetLabels()[wellknown.LabelPodTemplateHash]]++
	}
	return hashes
}
