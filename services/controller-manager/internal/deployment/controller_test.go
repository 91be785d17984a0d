package deployment

import (
	"fmt"
	"sync"
	"testing"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

const rolloutTimeout = 30 * time.Second

func TestCreateMakesOneReplicaSet(t *testing.T) {
	e := startEnv(t, nil)
	for _, tc := range []struct {
		name     string
		replicas *int32
		want     int32
	}{
		{"unset-means-one", nil, 1},
		{"three", new(int32(3)), 3},
		{"zero", new(int32(0)), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := e.createDeployment(newDeployment(tc.name, tc.replicas, nil, "/bin/sleep", "3600"))
			e.waitFor("the rollout", rolloutTimeout, func() (bool, string) { return e.rolledOut(tc.name) })

			rss := e.replicaSetsOf(d)
			if len(rss) != 1 {
				t.Fatalf("replica sets: %s, want one", describe(rss))
			}
			rs := rss[0]
			hash := templateHash(d.GetSpec().GetTemplate())
			meta := rs.GetMetadata()
			if want := tc.name + "-" + hash; meta.GetName() != want {
				t.Errorf("name %q, want %q", meta.GetName(), want)
			}
			if got := replicasOf(rs); got != tc.want {
				t.Errorf("spec.replicas %d, want %d", got, tc.want)
			}
			for what, labels := range map[string]map[string]string{
				"labels":          meta.GetLabels(),
				"selector":        rs.GetSpec().GetSelector().GetMatchLabels(),
				"template labels": rs.GetSpec().GetTemplate().GetMetadata().GetLabels(),
			} {
				if labels[wellknown.LabelPodTemplateHash] != hash || labels["app"] != tc.name {
					t.Errorf("%s %v, want app=%s and %s=%s", what, labels, tc.name, wellknown.LabelPodTemplateHash, hash)
				}
			}
			ref := controllerOf(meta)
			if ref.GetKind() != "Deployment" || ref.GetName() != tc.name || ref.GetUid() != d.GetMetadata().GetUid() {
				t.Errorf("controller reference %v, want deployment %s uid %s", ref, tc.name, d.GetMetadata().GetUid())
			}
			if rev := meta.GetAnnotations()[wellknown.AnnotationRevision]; rev != "1" {
				t.Errorf("revision %q, want 1", rev)
			}
		})
	}
}

func TestRollingUpdateStaysWithinBounds(t *testing.T) {
	e := startEnv(t, nil)
	for i, tc := range []struct {
		replicas              int32
		surge, unavailable    string
		wantSurge, wantUnavai int32
	}{
		{replicas: 4, surge: "1", unavailable: "1", wantSurge: 1, wantUnavai: 1},
		{replicas: 10, wantSurge: 3, wantUnavai: 2}, // defaults 25%: surge rounds up, unavailable down
		{replicas: 5, surge: "0", unavailable: "2", wantSurge: 0, wantUnavai: 2},
		{replicas: 5, surge: "2", unavailable: "0", wantSurge: 2, wantUnavai: 0},
		{replicas: 3, surge: "100%", unavailable: "0%", wantSurge: 3, wantUnavai: 0},
		{replicas: 3, surge: "10%", unavailable: "10%", wantSurge: 1, wantUnavai: 0},
	} {
		name := fmt.Sprintf("rolling-%d", i)
		t.Run(fmt.Sprintf("replicas=%d,surge=%q,unavailable=%q", tc.replicas, tc.surge, tc.unavailable), func(t *testing.T) {
			strategy := &capstanv1.DeploymentStrategy{Type: wellknown.StrategyRollingUpdate}
			if tc.surge != "" || tc.unavailable != "" {
				strategy.RollingUpdate = &capstanv1.RollingUpdateDeployment{MaxSurge: tc.surge, MaxUnavailable: tc.unavailable}
			}
			d := e.createDeployment(newDeployment(name, new(tc.replicas), strategy, "/bin/sleep", "1"))
			if s, u := maxSurge(d), maxUnavailable(d); s != tc.wantSurge || u != tc.wantUnavai {
				t.Fatalf("resolved surge %d, unavailable %d; want %d, %d", s, u, tc.wantSurge, tc.wantUnavai)
			}
			e.waitFor("the first rollout", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
			first := e.replicaSetsOf(d)[0]

			b := e.watchBounds(d.GetMetadata().GetUid(), tc.replicas, tc.wantSurge, tc.wantUnavai)
			e.updateDeployment(name, setCommand("/bin/sleep", "2"))
			e.waitFor("the rolling update", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
			e.check(b, d)

			rss := e.replicaSetsOf(d)
			if len(rss) != 2 {
				t.Fatalf("replica sets %s, want the old and the new one", describe(rss))
			}
			for _, rs := range rss {
				want := "2"
				if rs.GetMetadata().GetUid() == first.GetMetadata().GetUid() {
					want = "1"
				}
				if got := rs.GetMetadata().GetAnnotations()[wellknown.AnnotationRevision]; got != want {
					t.Errorf("%s: revision %q, want %q", rs.GetMetadata().GetName(), got, want)
				}
			}
			e.waitFor("ScalingReplicaSet events", rolloutTimeout, func() (bool, string) {
				return e.hasEvent(d, reasonScalingReplicaSet)
			})
		})
	}
}

// hasEvent reports whether an event with reason is recorded about d.
func (e *env) hasEvent(d *capstanv1.Deployment, reason string) (bool, string) {
	res, err := e.client.ListAll(e.ctx, resource.MustLookup("Event"), client.ListOptions{Namespace: testNamespace})
	if err != nil {
		return false, err.Error()
	}
	var reasons []string
	for _, obj := range res.Items {
		ev := obj.(*capstanv1.Event)
		if ev.GetInvolvedObject().GetUid() != d.GetMetadata().GetUid() {
			continue
		}
		if ev.GetReason() == reason {
			return true, ""
		}
		reasons = append(reasons, ev.GetReason())
	}
	return false, fmt.Sprintf("reasons %v", reasons)
}

func TestRecreateStopsOldPodsBeforeStartingNew(t *testing.T) {
	e := startEnv(t, nil)
	const name = "recreate"
	d := e.createDeployment(newDeployment(name, new(int32(3)),
		&capstanv1.DeploymentStrategy{Type: wellknown.StrategyRecreate}, "/bin/sleep", "1"))
	e.waitFor("the first rollout", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
	first := e.replicaSetsOf(d)[0].GetMetadata().GetUid()

	// Every committed state: no pod of the new template while the old
	// ReplicaSet wants or has pods.
	var (
		mu         sync.Mutex
		violations []string
	)
	sw := e.watchStates(d.GetMetadata().GetUid(), func(revision int64, current map[string]*capstanv1.ReplicaSet) {
		var oldPods, newSize int32
		for uid, r := range current {
			if uid == first {
				oldPods = max(replicasOf(r), r.GetStatus().GetReplicas())
			} else {
				newSize += replicasOf(r)
			}
		}
		if oldPods > 0 && newSize > 0 {
			mu.Lock()
			defer mu.Unlock()
			violations = append(violations, fmt.Sprintf("at revision %d: new replica set wants %d pods while the old one has %d", revision, newSize, oldPods))
		}
	})
	e.updateDeployment(name, setCommand("/bin/sleep", "2"))
	e.waitFor("the recreate rollout", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
	e.caughtUp(sw, d)
	mu.Lock()
	defer mu.Unlock()
	for _, v := range violations {
		t.Error(v)
	}
}

func TestRevisionHistoryLimit(t *testing.T) {
	e := startEnv(t, nil)
	const name = "history"
	spec := newDeployment(name, new(int32(2)), nil, "/bin/sleep", "1")
	spec.Spec.RevisionHistoryLimit = new(int32(2))
	d := e.createDeployment(spec)
	e.waitFor("the first rollout", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
	for i := 2; i <= 5; i++ {
		e.updateDeployment(name, setCommand("/bin/sleep", fmt.Sprint(i)))
		e.waitFor(fmt.Sprintf("rollout %d", i), rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
	}
	e.waitFor("old replica sets beyond the limit deleted", rolloutTimeout, func() (bool, string) {
		rss := e.replicaSetsOf(d)
		revisions := map[string]bool{}
		for _, rs := range rss {
			revisions[rs.GetMetadata().GetAnnotations()[wellknown.AnnotationRevision]] = true
		}
		// The current revision 5 and the two before it.
		return len(rss) == 3 && revisions["3"] && revisions["4"] && revisions["5"], describe(rss)
	})
}

func TestRollbackReusesReplicaSet(t *testing.T) {
	e := startEnv(t, nil)
	const name = "rollback"
	d := e.createDeployment(newDeployment(name, new(int32(2)), nil, "/bin/sleep", "1"))
	e.waitFor("the first rollout", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
	original := e.replicaSetsOf(d)[0]

	e.updateDeployment(name, setCommand("/bin/sleep", "2"))
	e.waitFor("the rollout of template 2", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
	e.updateDeployment(name, setCommand("/bin/sleep", "1"))
	e.waitFor("the rollback", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })

	rss := e.replicaSetsOf(d)
	if len(rss) != 2 {
		t.Fatalf("replica sets %s, want the original and the second one", describe(rss))
	}
	newRS, _ := splitNewAndOld(e.getDeployment(name), rss)
	if newRS.GetMetadata().GetUid() != original.GetMetadata().GetUid() {
		t.Errorf("the rollback runs %s (uid %s), want the original %s (uid %s)", newRS.GetMetadata().GetName(),
			newRS.GetMetadata().GetUid(), original.GetMetadata().GetName(), original.GetMetadata().GetUid())
	}
	if rev := newRS.GetMetadata().GetAnnotations()[wellknown.AnnotationRevision]; rev != "3" {
		t.Errorf("revision of the re-used replica set %q, want 3", rev)
	}
}

func TestPausedDeploymentDoesNotRollOut(t *testing.T) {
	e := startEnv(t, nil)
	const name = "paused"
	d := e.createDeployment(newDeployment(name, new(int32(2)), nil, "/bin/sleep", "1"))
	e.waitFor("the first rollout", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })

	changed := e.updateDeployment(name, func(d *capstanv1.Deployment) {
		d.Spec.Paused = true
		d.Spec.Template.Spec.Containers[0].Command = []string{"/bin/sleep", "2"}
	})
	// The status's observed_generation says the controller has acted on
	// the paused spec.
	e.waitFor("the paused spec observed", rolloutTimeout, func() (bool, string) {
		cur := e.getDeployment(name)
		cond := findCondition(cur.GetStatus().GetConditions(), wellknown.DeploymentProgressing)
		return cur.GetStatus().GetObservedGeneration() >= changed.GetMetadata().GetGeneration() &&
			cond.GetStatus() == wellknown.ConditionUnknown && cond.GetReason() == reasonDeploymentPaused, fmt.Sprint(cur.GetStatus())
	})
	if rss := e.replicaSetsOf(d); len(rss) != 1 {
		t.Fatalf("replica sets %s while paused, want only the first", describe(rss))
	}

	e.updateDeployment(name, func(d *capstanv1.Deployment) { d.Spec.Paused = false })
	e.waitFor("the rollout after resuming", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
}

func TestScalingMidRolloutIsProportional(t *testing.T) {
	// Pods of the second template never become available, so the rollout
	// stops half-way.
	stuck := func(rs *capstanv1.ReplicaSet) bool {
		cmd := rs.GetSpec().GetTemplate().GetSpec().GetContainers()[0].GetCommand()
		return len(cmd) == 2 && cmd[1] == "stuck"
	}
	e := startEnv(t, stuck)
	const name = "scale"
	d := e.createDeployment(newDeployment(name, new(int32(4)), &capstanv1.DeploymentStrategy{
		RollingUpdate: &capstanv1.RollingUpdateDeployment{MaxSurge: "1", MaxUnavailable: "1"},
	}, "/bin/sleep", "1"))
	e.waitFor("the first rollout", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
	first := e.replicaSetsOf(d)[0].GetMetadata().GetUid()

	sizes := func() (oldSize, newSize int32, desc string) {
		rss := e.replicaSetsOf(d)
		for _, rs := range rss {
			if rs.GetMetadata().GetUid() == first {
				oldSize = replicasOf(rs)
			} else {
				newSize += replicasOf(rs)
			}
		}
		return oldSize, newSize, describe(rss)
	}
	// 4 replicas, surge 1, unavailable 1: the new ReplicaSet gets 2 pods
	// (total 5), the old one keeps the 3 that must stay available.
	e.updateDeployment(name, setCommand("/bin/sleep", "stuck"))
	e.waitFor("the stuck rollout", rolloutTimeout, func() (bool, string) {
		o, n, desc := sizes()
		return o == 3 && n == 2, desc
	})

	// 8 replicas: the maximum goes from 5 to 9 and each ReplicaSet grows in
	// proportion: old 3*9/5 = 5.4 -> 5, new 2*9/5 = 3.6 -> 4.
	e.updateDeployment(name, func(d *capstanv1.Deployment) { d.Spec.Replicas = new(int32(8)) })
	e.waitFor("the proportional scale", rolloutTimeout, func() (bool, string) {
		o, n, desc := sizes()
		return o == 5 && n == 4, desc
	})
}

func TestProgressDeadlineExceeded(t *testing.T) {
	e := startEnv(t, func(*capstanv1.ReplicaSet) bool { return true })
	const name = "deadline"
	spec := newDeployment(name, new(int32(1)), nil, "/bin/sleep", "1")
	spec.Spec.ProgressDeadlineSeconds = new(int32(1))
	e.createDeployment(spec)
	e.waitFor("Progressing=False ProgressDeadlineExceeded", rolloutTimeout, func() (bool, string) {
		d := e.getDeployment(name)
		cond := findCondition(d.GetStatus().GetConditions(), wellknown.DeploymentProgressing)
		available := findCondition(d.GetStatus().GetConditions(), wellknown.DeploymentAvailable)
		return cond.GetStatus() == wellknown.ConditionFalse && cond.GetReason() == reasonProgressDeadlineExceeded &&
			available.GetStatus() == wellknown.ConditionFalse && d.GetStatus().GetUnavailableReplicas() == 1, fmt.Sprint(d.GetStatus())
	})
}

func TestAdoptsMatchingOrphanReplicaSet(t *testing.T) {
	e := startEnv(t, nil)
	const name = "adopt"
	spec := newDeployment(name, new(int32(2)), nil, "/bin/sleep", "1")
	orphan := &capstanv1.ReplicaSet{
		Metadata: &capstanv1.ObjectMeta{Name: "orphan", Namespace: testNamespace, Labels: map[string]string{"app": name}},
		Spec: &capstanv1.ReplicaSetSpec{
			Replicas: new(int32(2)),
			Selector: spec.GetSpec().GetSelector(),
			Template: spec.GetSpec().GetTemplate(),
		},
	}
	resp, err := e.client.ReplicaSets().CreateReplicaSet(e.ctx, &capstanv1.CreateReplicaSetRequest{ReplicaSet: orphan})
	if err != nil {
		t.Fatalf("CreateReplicaSet: %v", err)
	}
	// Else the deployment may be synced before the cache shows the orphan,
	// and create its own ReplicaSet first (which the orphan, older and of
	// the same template, would then replace).
	e.waitFor("the orphan in the controller's cache", rolloutTimeout, func() (bool, string) {
		_, ok := e.replicaSets.Get(testNamespace, "orphan")
		return ok, "absent"
	})
	d := e.createDeployment(spec)
	e.waitFor("the rollout", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
	rss := e.replicaSetsOf(d)
	if len(rss) != 1 || rss[0].GetMetadata().GetUid() != resp.GetReplicaSet().GetMetadata().GetUid() {
		t.Fatalf("replica sets %s, want the adopted orphan only", describe(rss))
	}
}

func TestReleasesReplicaSetItNoLongerSelects(t *testing.T) {
	e := startEnv(t, nil)
	const name = "release"
	d := e.createDeployment(newDeployment(name, new(int32(1)), nil, "/bin/sleep", "1"))
	e.waitFor("the first rollout", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })
	e.updateDeployment(name, setCommand("/bin/sleep", "2"))
	e.waitFor("the second rollout", rolloutTimeout, func() (bool, string) { return e.rolledOut(name) })

	// Relabel the old ReplicaSet out of the selector.
	_, old := splitNewAndOld(e.getDeployment(name), e.replicaSetsOf(d))
	relabeled := resource.Clone(old[0])
	relabeled.Metadata.Labels = map[string]string{"app": "something-else"}
	relabeled.Metadata.ResourceVersion = 0
	if _, err := e.client.ReplicaSets().UpdateReplicaSet(e.ctx, &capstanv1.UpdateReplicaSetRequest{ReplicaSet: relabeled}); err != nil {
		t.Fatalf("UpdateReplicaSet: %v", err)
	}
	e.waitFor("the old replica set released", rolloutTimeout, func() (bool, string) {
		resp, err := e.client.ReplicaSets().GetReplicaSet(e.ctx, &capstanv1.GetReplicaSetRequest{Namespace: testNamespace, Name: relabeled.GetMetadata().GetName()})
		if err != nil {
			return false, err.Error()
		}
		return controllerOf(resp.GetReplicaSet().GetMetadata()) == nil, fmt.Sprint(resp.GetReplicaSet().GetMetadata().GetOwnerReferences())
	})
	if ok, state := e.rolledOut(name); !ok {
		t.Errorf("the deployment after the release: %s", state)
	}
}
