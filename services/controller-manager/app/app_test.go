package app_test

import (
	"context"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
	"github.com/capstan-dev/capstan/services/controller-manager/app"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseFlags(t *testing.T) {
	opts, err := app.ParseFlags([]string{"--identity=cm-1", "--server=127.0.0.1:1,127.0.0.1:2", "--lease-duration=5s",
		"--pod-eviction-timeout=30s", "--node-startup-grace=1m", "--workers=8", "--metrics-listen="})
	if err != nil {
		t.Fatal(err)
	}
	if opts.Identity != "cm-1" || opts.LeaseDuration != 5*time.Second || opts.PodEvictionTimeout != 30*time.Second ||
		opts.NodeStartupGrace != time.Minute || opts.Workers != 8 || opts.MetricsListen != "" ||
		opts.LeaderLease != "capstan-system/controller-manager" {
		t.Fatalf("options %+v", opts)
	}
	if err := opts.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := app.ParseFlags([]string{"--workers=0", "extra"}); err == nil {
		t.Fatal("ParseFlags accepted a positional argument")
	}
	if _, err := app.ParseFlags([]string{"-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--workers=0"}, "--workers must be between 1 and 256, not 0"},
		{[]string{"--pod-eviction-timeout=0s"}, "--pod-eviction-timeout must be positive"},
		{[]string{"--node-startup-grace=0s"}, "--node-startup-grace must be positive"},
		{[]string{"--lease-duration=1s"}, "--lease-duration must be whole seconds and at least 2s"},
	} {
		opts, err := app.ParseFlags(tc.args)
		if err != nil {
			t.Fatal(err)
		}
		if err := opts.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: Validate %v, want %q", tc.args, err, tc.want)
		}
	}
}

// The controller-manager, run in-process against real API servers, leads
// and runs its controllers: a ReplicaSet gets its pods.
func TestRunLeadsAndRunsTheControllers(t *testing.T) {
	api := apiservertest.Start(t, 2)
	opts := app.DefaultOptions()
	opts.Identity = "controller-manager-test"
	opts.Server = strings.Join(api.Addrs(), ",")
	opts.MetricsListen = ""
	opts.LogOutput = io.Discard
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- app.Run(ctx, opts) }()

	c, err := client.New(client.Config{Endpoints: api.Addrs()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	callCtx, cancelCalls := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancelCalls()
	replicas := int32(2)
	labels := map[string]string{"app": "web"}
	if _, err := c.Create(callCtx, &capstanv1.ReplicaSet{
		Metadata: &capstanv1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: &capstanv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &capstanv1.LabelSelector{MatchLabels: labels},
			Template: &capstanv1.PodTemplateSpec{
				Metadata: &capstanv1.ObjectMeta{Labels: labels},
				Spec:     &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "main", Command: []string{"/bin/sleep", "3600"}}}},
			},
		},
	}); err != nil {
		t.Fatal(err)
	}
	for {
		pods, err := c.List(callCtx, resource.MustLookup("Pod"), client.ListOptions{Namespace: "default", LabelSelector: "app=web"})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) == int(replicas) {
			break
		}
		select {
		case err := <-runDone:
			t.Fatalf("Run returned: %v", err)
		case <-callCtx.Done():
			t.Fatalf("the ReplicaSet has %d pods, want %d", len(pods.Items), replicas)
		case <-time.After(50 * time.Millisecond):
		}
	}

	cancel()
	select {
	case err := <-runDone:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}
