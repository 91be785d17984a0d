package faultproxy_test

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/capstan-dev/capstan/internal/faultproxy"
	"github.com/capstan-dev/capstan/internal/poll"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echo serves a line echo on loopback until the test ends.
func echo(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { lis.Close(); <-done })
	return lis.Addr().String()
}

func TestFreezeHoldsBytesUntilThaw(t *testing.T) {
	p, err := faultproxy.Start(echo(t), faultproxy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	roundTrip := func(line string) string {
		t.Helper()
		if _, err := c.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
		got, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := roundTrip("one"); got != "one\n" {
		t.Fatalf("through the proxy: %q", got)
	}

	p.FreezeAtNextRequest()
	if _, err := c.Write([]byte("two\n")); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 10*time.Second, "the request to be held", poll.True(func() bool { return p.Held() > 0 }))
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if got, err := r.ReadString('\n'); err == nil {
		t.Fatalf("an answer came through a frozen proxy: %q", got)
	}
	_ = c.SetReadDeadline(time.Time{})
	if held := p.Thaw(); held == 0 {
		t.Fatal("Thaw reports nothing held")
	}
	got, err := r.ReadString('\n')
	if err != nil || got != "two\n" {
		t.Fatalf("after the thaw: %q, %v", got, err)
	}
}
