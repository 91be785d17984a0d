// Package etcdendpoints keeps an API replica's etcd client pointed at the
// members that can serve right now.
//
// The client lists every member's client URL, so a replica whose own member
// is down still serves through the others. But a member that is frozen
// (SIGSTOP, docker pause) or cut off from its peers still accepts
// connections, and requests the client round-robins to it hang until their
// deadline. Track probes each member's /readyz (which etcd answers only with
// a leader and a working store) every Interval and gives the client only the
// ready ones; with none ready it gives it every member, so requests still
// go somewhere and fail with etcd's own error. Track owns the client's
// endpoint list: do not also set clientv3.Config.AutoSyncInterval.
package etcdendpoints

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Options configure Track.
type Options struct {
	// Interval between probes; default 500 ms.
	Interval time.Duration
	// Timeout of one probe; default 400 ms.
	Timeout time.Duration
	// MemberListInterval is how often the member list is re-read; default 5 s.
	MemberListInterval time.Duration
	// Logger receives one line per change of the endpoint list.
	Logger *slog.Logger
}

// Track runs until ctx ends.
func Track(ctx context.Context, client *clientv3.Client, opts Options) {
	if opts.Interval <= 0 {
		opts.Interval = 500 * time.Millisecond
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 400 * time.Millisecond
	}
	if opts.MemberListInterval <= 0 {
		opts.MemberListInterval = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	httpClient := &http.Client{Timeout: opts.Timeout}
	defer httpClient.CloseIdleConnections()

	all := slices.Clone(client.Endpoints())
	current := slices.Clone(all)
	var lastList time.Time
	ticker := time.NewTicker(opts.Interval)
	defer ticker.Stop()
	for {
		if time.Since(lastList) >= opts.MemberListInterval {
			if urls, err := memberURLs(ctx, client, opts.Timeout*2); err == nil && len(urls) > 0 {
				all = urls
				lastList = time.Now()
			}
		}
		ready := readyMembers(ctx, httpClient, all)
		next := ready
		if len(next) == 0 {
			next = all
		}
		if !slices.Equal(next, current) && ctx.Err() == nil {
			client.SetEndpoints(next...)
			opts.Logger.Info("etcd endpoints changed", "ready", ready, "etcd-endpoints", next)
			current = slices.Clone(next)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func memberURLs(ctx context.Context, client *clientv3.Client, timeout time.Duration) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := client.MemberList(ctx)
	if err != nil {
		return nil, err
	}
	var urls []string
	for _, m := range resp.Members {
		if !m.IsLearner {
			urls = append(urls, m.ClientURLs...)
		}
	}
	slices.Sort(urls)
	return slices.Compact(urls), nil
}

// readyMembers probes every URL at once and returns the ready ones, in
// the order of urls.
func readyMembers(ctx context.Context, httpClient *http.Client, urls []string) []string {
	ok := make([]bool, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok[i] = probe(ctx, httpClient, u)
		}()
	}
	wg.Wait()
	var ready []string
	for i, u := range urls {
		if ok[i] {
			ready = append(ready, u)
		}
	}
	return ready
}

func probe(ctx context.Context, httpClient *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(url, "/")+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
