package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestHandler(t *testing.T) {
	var logBuf bytes.Buffer
	h := newHandler("web-1", "node-a", slog.New(slog.NewTextHandler(&logBuf, nil)))
	tests := []struct {
		path       string
		wantStatus int
		wantBody   string
	}{
		{"/", http.StatusOK, "web-1 on node-a\n"},
		{"/any/path?x=1", http.StatusOK, "web-1 on node-a\n"},
		{"/healthz", http.StatusOK, "ok\n"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tt.path, nil))
			if rec.Code != tt.wantStatus || rec.Body.String() != tt.wantBody {
				t.Errorf("GET %s = %d %q, want %d %q", tt.path, rec.Code, rec.Body.String(), tt.wantStatus, tt.wantBody)
			}
		})
	}
	if got := strings.Count(logBuf.String(), "msg=request"); got != len(tests) {
		t.Errorf("%d request log lines, want %d:\n%s", got, len(tests), logBuf.String())
	}
	if !strings.Contains(logBuf.String(), "path=/healthz") {
		t.Errorf("log does not name the path:\n%s", logBuf.String())
	}
}

func TestIdentityFallsBackToHostname(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skip("no hostname:", err)
	}
	env := map[string]string{"CAPSTAN_POD_NAME": "web-1"}
	pod, node := identity(func(k string) string { return env[k] })
	if pod != "web-1" || node != host {
		t.Errorf("identity = %q, %q; want web-1, %q", pod, node, host)
	}
}

// syncBuffer is a bytes.Buffer safe for the server's and the test's
// goroutines.
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

// TestRunServesUntilCancelled: run listens on $HOST:$PORT, answers, and
// returns nil (exit 0) once its context ends, with the listener closed.
func TestRunServesUntilCancelled(t *testing.T) {
	env := map[string]string{"HOST": "127.0.0.1", "PORT": "0", "CAPSTAN_POD_NAME": "web-2", "CAPSTAN_NODE_NAME": "node-b"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrs := make(chan net.Addr, 1)
	var logs syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, func(k string) string { return env[k] }, &logs, func(a net.Addr) { addrs <- a })
	}()

	var addr net.Addr
	select {
	case addr = <-addrs:
	case err := <-done:
		t.Fatalf("run returned early: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not start listening")
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + addr.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "web-2 on node-b\n" {
		t.Errorf("body %q, want %q", body, "web-2 on node-b\n")
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after cancel: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if conn, err := net.Dial("tcp", addr.String()); err == nil {
		conn.Close()
		t.Error("listener still open after shutdown")
	}
	if !strings.Contains(logs.String(), "msg=request") || !strings.Contains(logs.String(), "msg=stopped") {
		t.Errorf("log:\n%s", logs.String())
	}
}
