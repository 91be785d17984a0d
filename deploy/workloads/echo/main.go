// Command echo is Capstan's demo workload: an HTTP server that answers
// every request with "<pod name> on <node name>\n", so that a client can
// see which replica served it.
//
//	PORT                port to listen on (default 8080); the node agent
//	                    sets it to the container's first declared port
//	HOST                address to listen on (default: every interface)
//	CAPSTAN_POD_NAME    the pod's name (default: the hostname)
//	CAPSTAN_NODE_NAME   the node's name (default: the hostname)
//
// GET /healthz answers 200 "ok" for probes. Each request is logged to
// stdout. On SIGTERM or SIGINT it closes its listener, lets requests in
// flight finish (up to 5 s) and exits 0.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const shutdownTimeout = 5 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stdout, nil); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

// run serves until ctx ends. listening, if not nil, is told the address
// once the listener is open.
func run(ctx context.Context, getenv func(string) string, logOut io.Writer, listening func(net.Addr)) error {
	port := getenv("PORT")
	if port == "" {
		port = "8080"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(getenv("HOST"), port))
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(logOut, nil))
	podName, nodeName := identity(getenv)
	srv := &http.Server{
		Handler:           newHandler(podName, nodeName, log),
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Info("listening", "addr", ln.Addr().String())
	if listening != nil {
		listening(ln.Addr())
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err = srv.Shutdown(shutdownCtx)
	if serveErr := <-served; !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
}

// identity returns the pod and node names from the environment, each
// falling back to the hostname.
func identity(getenv func(string) string) (podName, nodeName string) {
	host, _ := os.Hostname()
	podName, nodeName = getenv("CAPSTAN_POD_NAME"), getenv("CAPSTAN_NODE_NAME")
	if podName == "" {
		podName = host
	}
	if nodeName == "" {
		nodeName = host
	}
	return podName, nodeName
}

func newHandler(podName, nodeName string, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	answer := podName + " on " + nodeName + "\n"
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, answer)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		mux.ServeHTTP(rec, r)
		log.Info("request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "status", rec.status)
	})
}

// statusRecorder remembers the status a handler wrote, for the log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}
