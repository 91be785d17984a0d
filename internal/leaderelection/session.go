package leaderelection

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
)

// Holding names one holding of a lease: what a session is kept for.
type Holding struct {
	Namespace, Name string
	// Holder is the holder identity (HolderIdentity).
	Holder string
	Epoch  int64
}

// Timings of KeepSession.
const (
	// sessionOpenTimeout bounds the wait for a replica to record a
	// session: one that does not answer (it is frozen) is left for another.
	sessionOpenTimeout = 2 * time.Second
	// sessionCloseTimeout bounds a clean close: the replica acknowledges
	// that the holder ended the session, so it releases nothing.
	sessionCloseTimeout = time.Second
	// Back-off between attempts to open a session.
	sessionFirstBackoff = 50 * time.Millisecond
	sessionMaxBackoff   = 2 * time.Second
)

// KeepSession keeps a session (LeaseService/HoldLease) of the holding with
// one API replica until ctx ends, then closes it cleanly and returns. While
// it runs, the death of this process — the kernel closes its connections —
// makes the replica release the holding at once, so a standby takes over
// without waiting for the TTL. When the replica goes away (killed, stopped,
// no quorum), the session is opened again on another one; the holding is
// not affected, and an older session's end releases nothing. It returns
// early, without a session, if the holding is no longer held (the caller
// learns that from its renewals too). Failures are logged; none ends the
// holding.
//
// Close ends the session on purpose: a holder that gives its lease up
// should release it (ReleaseLease) before ctx ends, or after — either way
// the clean close releases nothing by itself.
func KeepSession(ctx context.Context, c *client.Client, h Holding, logger *slog.Logger) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	log := logger.With("epoch", h.Epoch)
	backoff := sessionFirstBackoff
	for ctx.Err() == nil {
		replica, err := holdSession(ctx, c, h, log)
		switch {
		case ctx.Err() != nil:
			return
		case apierrors.Is(err, apierrors.ReasonLeaseNotHeld):
			log.Info("no session: the lease is no longer held at this epoch")
			return
		case replica != "":
			// It was open: its replica went away. Open the next one at once.
			log.Info("lease session lost with its API replica; opening one on another", "replica", replica, "error", err)
			backoff = sessionFirstBackoff
			continue
		}
		log.Debug("opening a lease session failed; trying again", "error", err, "retry-in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, sessionMaxBackoff)
	}
}

// holdSession opens one session and holds it until it breaks (returning the
// replica it was open on, if it opened) or ctx ends (closing it cleanly).
func holdSession(ctx context.Context, c *client.Client, h Holding, log *slog.Logger) (replica string, err error) {
	// The stream's context is not ctx: ending ctx must close the session
	// cleanly (CloseSend), not cancel the stream, which the replica would
	// take for this holder's death.
	streamCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	// Opening the stream waits for a connection, which may never come (no
	// replica answers): that wait ends with ctx or the open timeout. It is
	// cancelled only while nothing has been sent on the stream, so no
	// replica can take the cancellation for this holder's death.
	openBy := time.Now().Add(sessionOpenTimeout)
	var mu sync.Mutex
	opening := true
	abortOpen := func() {
		mu.Lock()
		defer mu.Unlock()
		if opening {
			cancel()
		}
	}
	openTimer := time.AfterFunc(sessionOpenTimeout, abortOpen)
	stopOnEnd := context.AfterFunc(ctx, abortOpen)
	stream, err := c.Leases().HoldLease(streamCtx)
	mu.Lock()
	opening = false
	aborted := streamCtx.Err() != nil
	mu.Unlock()
	openTimer.Stop()
	stopOnEnd()
	switch {
	case aborted && ctx.Err() != nil:
		return "", ctx.Err()
	case aborted:
		return "", errors.New("no API replica opened the session stream in time")
	case err != nil:
		return "", err
	}
	if err := stream.Send(&capstanv1.HoldLeaseRequest{Namespace: h.Namespace, Name: h.Name, HolderIdentity: h.Holder, Epoch: h.Epoch}); err != nil {
		return "", err
	}
	answers := make(chan sessionAnswer, 2)
	go func() {
		for {
			resp, err := stream.Recv()
			answers <- sessionAnswer{resp, err}
			if err != nil {
				return
			}
		}
	}()
	// The first answer records the session; a replica that gives none in
	// time (frozen) is left for another.
	opened := time.NewTimer(time.Until(openBy))
	defer opened.Stop()
	var first sessionAnswer
	select {
	case first = <-answers:
	case <-opened.C:
		// Closed, not cancelled: a replica that is only slow records the
		// session, then reads the close and releases nothing.
		closeSession(stream, answers, cancel)
		return "", errors.New("the API replica did not record the session in time")
	case <-ctx.Done():
		closeSession(stream, answers, cancel)
		return "", ctx.Err()
	}
	if first.err != nil {
		return "", first.err
	}
	replica = first.resp.GetReplica()
	log.Debug("lease session open", "replica", replica, "session", first.resp.GetSession())
	select {
	case a := <-answers:
		// The replica ends sessions only when it goes away.
		if a.err == nil {
			a.err = errors.New("the replica sent an unexpected message")
			cancel()
			<-answers
		}
		return replica, a.err
	case <-ctx.Done():
		closeSession(stream, answers, cancel)
		return replica, nil
	}
}

// sessionAnswer is what one Recv of a session stream got.
type sessionAnswer struct {
	resp *capstanv1.HoldLeaseResponse
	err  error
}

// closeSession ends a session on purpose: CloseSend, and the replica ends
// the stream (Recv gets io.EOF) without releasing anything. If it does not
// answer in time the stream is cancelled anyway: a replica that does not
// answer (frozen) cannot act on the cancellation before it has read the
// close that precedes it.
func closeSession(stream interface{ CloseSend() error }, answers <-chan sessionAnswer, cancel context.CancelFunc) {
	_ = stream.CloseSend()
	t := time.NewTimer(sessionCloseTimeout)
	defer t.Stop()
	for {
		select {
		case a := <-answers:
			if a.err != nil {
				return // io.EOF: closed as asked; anything else: ended anyway
			}
		case <-t.C:
			cancel()
			return
		}
	}
}
