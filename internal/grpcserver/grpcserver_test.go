package grpcserver

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testService is the subject's stand-in for real handlers: GetConfigMap
// behaves according to the requested name.
type testService struct {
	capstanv1.UnimplementedConfigMapServiceServer
}

func (testService) GetConfigMap(ctx context.Context, req *capstanv1.GetConfigMapRequest) (*capstanv1.GetConfigMapResponse, error) {
	switch req.GetName() {
	case "panic":
		panic("test panic")
	case "block":
		// Like a storage call to etcd without quorum: no answer until the
		// context ends, then the translated context error.
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	cm := &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: req.GetName(), Annotations: map[string]string{}}}
	if d, ok := ctx.Deadline(); ok {
		cm.Metadata.Annotations["deadline"] = d.Format(time.RFC3339Nano)
	}
	return &capstanv1.GetConfigMapResponse{ConfigMap: cm}, nil
}

func (testService) CreateConfigMap(_ context.Context, req *capstanv1.CreateConfigMapRequest) (*capstanv1.CreateConfigMapResponse, error) {
	return &capstanv1.CreateConfigMapResponse{ConfigMap: req.GetConfigMap()}, nil
}

func (testService) WatchConfigMaps(_ *capstanv1.WatchConfigMapsRequest, stream grpc.ServerStreamingServer[capstanv1.WatchConfigMapsResponse]) error {
	if err := stream.Send(&capstanv1.WatchConfigMapsResponse{Type: capstanv1.WatchEventType_WATCH_EVENT_TYPE_BOOKMARK}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return status.FromContextError(stream.Context().Err()).Err()
}

// syncBuffer collects log output written from gRPC's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type harness struct {
	srv    *Server
	addr   string
	logs   *syncBuffer
	client capstanv1.ConfigMapServiceClient
	conn   *grpc.ClientConn
}

func start(t *testing.T, opts Options) *harness {
	t.Helper()
	logs := &syncBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := New(opts)
	capstanv1.RegisterConfigMapServiceServer(srv, testService{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(8<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &harness{srv: srv, addr: lis.Addr().String(), logs: logs, client: capstanv1.NewConfigMapServiceClient(conn), conn: conn}
}

func TestRecoveryTurnsPanicIntoInternal(t *testing.T) {
	h := start(t, Options{})
	ctx := t.Context()
	_, err := h.client.GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Name: "panic"})
	if got := status.Code(err); got != codes.Internal {
		t.Fatalf("panicking handler: got %v (%v), want INTERNAL", got, err)
	}
	if strings.Contains(err.Error(), "test panic") || strings.Contains(err.Error(), "goroutine") {
		t.Errorf("the panic leaked to the caller: %v", err)
	}
	if !strings.Contains(h.logs.String(), "handler panicked") || !strings.Contains(h.logs.String(), "test panic") {
		t.Errorf("no log line for the panic; logs:\n%s", h.logs)
	}
	// The server survived.
	if _, err := h.client.GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Name: "ok"}); err != nil {
		t.Fatalf("call after the panic: %v", err)
	}
}

func TestCallLogLine(t *testing.T) {
	h := start(t, Options{})
	if _, err := h.client.GetConfigMap(t.Context(), &capstanv1.GetConfigMapRequest{Name: "ok"}); err != nil {
		t.Fatal(err)
	}
	// The line is written after the answer is sent: poll for it.
	want := []string{"method=GetConfigMap", "service=capstan.v1.ConfigMapService", "code=OK", "duration="}
	deadline := time.Now().Add(5 * time.Second)
	for {
		logs := h.logs.String()
		missing := ""
		for _, w := range want {
			if !strings.Contains(logs, w) {
				missing = w
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("log has no %q; logs:\n%s", missing, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDeadlineCap(t *testing.T) {
	tests := []struct {
		name           string
		requestTimeout time.Duration
		callerTimeout  time.Duration // 0: no deadline
		wantBefore     time.Duration // the handler's deadline is earlier than start + this
	}{
		{name: "caller deadline shorter than the cap", requestTimeout: time.Minute, callerTimeout: 3 * time.Second, wantBefore: 3 * time.Second},
		{name: "no caller deadline", requestTimeout: 2 * time.Second, wantBefore: 2 * time.Second},
		{name: "caller deadline longer than the cap", requestTimeout: 2 * time.Second, callerTimeout: time.Hour, wantBefore: 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, Options{RequestTimeout: tt.requestTimeout})
			ctx := t.Context()
			if tt.callerTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.callerTimeout)
				defer cancel()
			}
			start := time.Now()
			resp, err := h.client.GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Name: "deadline"})
			if err != nil {
				t.Fatal(err)
			}
			raw, ok := resp.GetConfigMap().GetMetadata().GetAnnotations()["deadline"]
			if !ok {
				t.Fatal("the handler's context has no deadline")
			}
			got, err := time.Parse(time.RFC3339Nano, raw)
			if err != nil {
				t.Fatal(err)
			}
			if limit := start.Add(tt.wantBefore); !got.Before(limit) {
				t.Errorf("handler deadline %v is not before %v", got, limit)
			}
		})
	}
}

func TestHandlerTimeoutIsUnavailable(t *testing.T) {
	h := start(t, Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	_, err := h.client.GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Name: "block"})
	if got := status.Code(err); got != codes.Unavailable {
		t.Fatalf("handler out of time: got %v (%v), want UNAVAILABLE", got, err)
	}
	if r := apierrors.Reason(err); r != apierrors.ReasonNoQuorum {
		t.Errorf("reason %q, want %q", r, apierrors.ReasonNoQuorum)
	}
}

func TestDeadlineMargin(t *testing.T) {
	tests := []struct {
		remaining, want time.Duration
	}{
		{10 * time.Second, 500 * time.Millisecond},
		{2 * time.Second, 200 * time.Millisecond},
		{100 * time.Millisecond, 20 * time.Millisecond},
		{30 * time.Millisecond, 15 * time.Millisecond},
		{0, 0},
	}
	for _, tt := range tests {
		if got := deadlineMargin(tt.remaining); got != tt.want {
			t.Errorf("deadlineMargin(%v) = %v, want %v", tt.remaining, got, tt.want)
		}
	}
}

func TestOversizeRequestIsResourceExhausted(t *testing.T) {
	h := start(t, Options{})
	big := &capstanv1.ConfigMap{
		Metadata: &capstanv1.ObjectMeta{Name: "big"},
		Data:     map[string]string{"blob": strings.Repeat("x", DefaultMaxRequestBytes+1)},
	}
	_, err := h.client.CreateConfigMap(t.Context(), &capstanv1.CreateConfigMapRequest{ConfigMap: big})
	if got := status.Code(err); got != codes.ResourceExhausted {
		t.Fatalf("oversize request: got %v (%v), want RESOURCE_EXHAUSTED", got, err)
	}
	small := &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "small"}, Data: map[string]string{"blob": "x"}}
	if _, err := h.client.CreateConfigMap(t.Context(), &capstanv1.CreateConfigMapRequest{ConfigMap: small}); err != nil {
		t.Fatalf("small request after the big one: %v", err)
	}
}

func TestReflectionListsServices(t *testing.T) {
	h := start(t, Options{})
	stream, err := reflectionpb.NewServerReflectionClient(h.conn).ServerReflectionInfo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, s := range resp.GetListServicesResponse().GetService() {
		got[s.GetName()] = true
	}
	for _, want := range []string{"capstan.v1.ConfigMapService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !got[want] {
			t.Errorf("reflection does not list %s; it lists %v", want, got)
		}
	}
}

func TestProbe(t *testing.T) {
	h := start(t, Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := Probe(ctx, h.addr); err == nil {
		t.Fatal("Probe of a new server succeeded; it starts NOT_SERVING")
	}
	h.srv.SetServing(true)
	if err := Probe(ctx, h.addr); err != nil {
		t.Fatalf("Probe of a SERVING server: %v", err)
	}
	h.srv.SetServing(false)
	if err := Probe(ctx, h.addr); err == nil {
		t.Fatal("Probe of a NOT_SERVING server succeeded")
	}

	// Nothing listens on a port just released.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := lis.Addr().String()
	lis.Close()
	if err := Probe(ctx, closed); err == nil {
		t.Fatal("Probe of a closed port succeeded")
	}
}

func TestStopEndsStreamsWithUnavailable(t *testing.T) {
	h := start(t, Options{})
	h.srv.SetServing(true)
	stream, err := h.client.WatchConfigMaps(t.Context(), &capstanv1.WatchConfigMapsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("first event: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := h.srv.Stop(ctx); err != nil {
		t.Fatalf("Stop with an open stream: %v", err)
	}
	_, err = stream.Recv()
	if got := status.Code(err); got != codes.Unavailable || apierrors.Reason(err) != apierrors.ReasonShuttingDown {
		t.Fatalf("stream after Stop: got %v (%v), want UNAVAILABLE %s", got, err, apierrors.ReasonShuttingDown)
	}
	if err := Probe(ctx, h.addr); err == nil {
		t.Fatal("Probe after Stop succeeded")
	}
	h.srv.SetServing(true) // no effect after Stop, and no panic
}

// withCallerDeadline sends d as the absolute deadline a Capstan client sends.
func withCallerDeadline(ctx context.Context, d time.Time) context.Context {
	return metadata.AppendToOutgoingContext(ctx, wellknown.MetadataDeadline, strconv.FormatInt(d.UnixNano(), 10))
}

// A call whose caller's deadline has passed when the replica reads it — it
// sat in a frozen replica's socket — is refused before the handler runs.
func TestCallerDeadlinePassedIsRefused(t *testing.T) {
	h := start(t, Options{})
	ctx := withCallerDeadline(t.Context(), time.Now().Add(-time.Second))
	_, err := h.client.GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Name: "panic"}) // would panic if run
	if status.Code(err) != codes.DeadlineExceeded || apierrors.Reason(err) != apierrors.ReasonDeadlinePassed {
		t.Fatalf("expired caller deadline: %v, want DEADLINE_EXCEEDED (DEADLINE_PASSED)", err)
	}
	// Within the clock-skew allowance of the deadline counts as passed.
	ctx = withCallerDeadline(t.Context(), time.Now().Add(DefaultClockSkewAllowance/2))
	if _, err := h.client.GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Name: "panic"}); apierrors.Reason(err) != apierrors.ReasonDeadlinePassed {
		t.Fatalf("deadline within the skew allowance: %v, want DEADLINE_PASSED", err)
	}
}

// The handler's context ends before the caller's absolute deadline less the
// clock-skew allowance, even when gRPC's own timeout is longer.
func TestCallerDeadlineBoundsTheHandler(t *testing.T) {
	h := start(t, Options{RequestTimeout: time.Minute})
	callerDeadline := time.Now().Add(3 * time.Second)
	ctx, cancel := context.WithTimeout(withCallerDeadline(t.Context(), callerDeadline), 30*time.Second)
	defer cancel()
	resp, err := h.client.GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Name: "deadline"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := time.Parse(time.RFC3339Nano, resp.GetConfigMap().GetMetadata().GetAnnotations()["deadline"])
	if err != nil {
		t.Fatal(err)
	}
	if limit := callerDeadline.Add(-DefaultClockSkewAllowance); got.After(limit) {
		t.Errorf("handler deadline %v is after the caller's deadline less the allowance, %v", got, limit)
	}
}

func TestMalformedCallerDeadlineIsInvalid(t *testing.T) {
	h := start(t, Options{})
	for _, bad := range []string{"soon", "-5", "1.5"} {
		ctx := metadata.AppendToOutgoingContext(t.Context(), wellknown.MetadataDeadline, bad)
		_, err := h.client.GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Name: "x"})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), wellknown.MetadataDeadline) {
			t.Errorf("deadline %q: %v, want INVALID_ARGUMENT naming %s", bad, err, wellknown.MetadataDeadline)
		}
	}
}

// A freeze of the process drops the calls it held: they answer
// UNAVAILABLE (REPLICA_PAUSED), so their callers retry elsewhere.
func TestPauseDropsHeldCalls(t *testing.T) {
	h := start(t, Options{})
	errc := make(chan error, 1)
	go func() {
		_, err := h.client.GetConfigMap(t.Context(), &capstanv1.GetConfigMapRequest{Name: "block"})
		errc <- err
	}()
	poll.For(t, 10*time.Second, "the call to be held", poll.True(func() bool {
		h.srv.pauses.mu.Lock()
		defer h.srv.pauses.mu.Unlock()
		return len(h.srv.pauses.calls) == 1
	}))
	h.srv.pauses.frozen(5 * time.Second) // what run does when it sees the gap
	select {
	case err := <-errc:
		if status.Code(err) != codes.Unavailable || apierrors.Reason(err) != apierrors.ReasonPaused {
			t.Fatalf("held call after a freeze: %v, want UNAVAILABLE (REPLICA_PAUSED)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held call was not dropped")
	}
}

// The watch sees a freeze as a gap of the monotonic clock above the
// threshold between two looks.
func TestPauseWatchSeesAGap(t *testing.T) {
	w := newPauseWatch(time.Millisecond, time.Second, slog.New(slog.DiscardHandler))
	ctx, release := w.admit(t.Context())
	defer release()
	looks := 0
	since := func(time.Time) time.Duration {
		looks++
		if looks == 3 {
			return 2 * time.Second // the process was stopped between two looks
		}
		return time.Millisecond
	}
	runCtx, stop := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.run(runCtx, since)
	}()
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a gap above the threshold did not drop the held call")
	}
	stop()
	<-done
	if cause, ok := context.Cause(ctx).(pausedError); !ok || cause.pause != 2*time.Second {
		t.Fatalf("cause %v, want a 2s pause", context.Cause(ctx))
	}
}

// frozenWithin: a freeze noticed within the window counts, an older one
// does not, and so does one the watch has yet to notice (it has not looked
// at the clock for longer than the threshold: the process only just runs
// again).
func TestFrozenWithin(t *testing.T) {
	w := newPauseWatch(100*time.Millisecond, time.Second, slog.New(slog.DiscardHandler))
	now := time.Now()
	if w.frozenWithin(now, 2*time.Second) {
		t.Fatal("frozen with no freeze noticed and no watch running")
	}
	w.lastLook = now.Add(-50 * time.Millisecond)
	if w.frozenWithin(now, 2*time.Second) {
		t.Fatal("frozen while the watch looks regularly and noticed nothing")
	}
	w.lastNoticed = now.Add(-time.Second)
	if !w.frozenWithin(now, 2*time.Second) {
		t.Fatal("a freeze noticed 1s ago is not within 2s")
	}
	w.lastNoticed = now.Add(-3 * time.Second)
	if w.frozenWithin(now, 2*time.Second) {
		t.Fatal("a freeze noticed 3s ago counts within 2s")
	}
	w.lastLook = now.Add(-5 * time.Second)
	if !w.frozenWithin(now, 2*time.Second) {
		t.Fatal("the watch last looked 5s ago (a freeze it has yet to notice), but not frozen")
	}
}
