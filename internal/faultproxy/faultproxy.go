// Package faultproxy forwards TCP connections to one address and freezes
// them on demand, the way the network sees a frozen process (SIGSTOP,
// `docker pause`): the bytes already sent sit unread, nothing comes back,
// and when the process resumes everything is delivered, in order, however
// late. Tests use it to put a request in a replica's socket and let the
// replica read it after its caller has given up.
//
// Concurrency: a Proxy is safe for concurrent use. It runs two goroutines
// per connection and one accepting; Close stops them all.
package faultproxy

import (
	"net"
	"sync"
)

// Direction is the way bytes travel through the proxy.
type Direction int

// Directions.
const (
	// ToServer: from the client to the upstream address.
	ToServer Direction = 1 << iota
	// ToClient: from the upstream address back to the client.
	ToClient
	// Both directions: a frozen process neither reads nor answers.
	Both = ToServer | ToClient
)

// Options configure a Proxy.
type Options struct {
	// VanishingClients: when a client closes its connection, the upstream
	// side is not closed (until Close): to the server the client looks like
	// one whose machine died without a word, so whatever it sent before is
	// read and acted on, not cancelled by the closed connection.
	VanishingClients bool
}

// Proxy forwards connections to one upstream address. See the package doc.
type Proxy struct {
	lis      net.Listener
	upstream string
	opts     Options
	wg       sync.WaitGroup

	mu     sync.Mutex
	frozen Direction
	armed  bool          // freeze Both at the next bytes toward the server
	thawed chan struct{} // closed when the proxy thaws; replaced on freeze
	held   int           // chunks waiting on a freeze
	conns  map[net.Conn]struct{}
	closed bool
}

// Start listens on a free loopback port and forwards to upstream.
func Start(upstream string, opts Options) (*Proxy, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{lis: lis, upstream: upstream, opts: opts, thawed: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(p.thawed)
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the address clients dial.
func (p *Proxy) Addr() string { return p.lis.Addr().String() }

// Freeze stops forwarding in dir: bytes read from then on wait for Thaw.
func (p *Proxy) Freeze(dir Direction) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.freezeLocked(dir)
}

func (p *Proxy) freezeLocked(dir Direction) {
	if p.frozen == 0 {
		p.thawed = make(chan struct{})
	}
	p.frozen |= dir
}

// FreezeAtNextRequest freezes both directions as soon as any client sends
// bytes toward the server: the request those bytes begin is held.
func (p *Proxy) FreezeAtNextRequest() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.armed = true
}

// Thaw delivers everything held, in order, and forwards again. It reports
// how many chunks of bytes were held.
func (p *Proxy) Thaw() (held int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	held, p.held = p.held, 0
	p.armed = false
	if p.frozen != 0 {
		p.frozen = 0
		close(p.thawed)
	}
	return held
}

// Held is how many chunks of bytes wait on the freeze now.
func (p *Proxy) Held() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}

// Close stops accepting, thaws, and closes every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	err := p.lis.Close()
	p.Thaw()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	for {
		down, err := p.lis.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.upstream)
		if err != nil {
			down.Close()
			continue
		}
		if !p.track(down, up) {
			return
		}
		p.wg.Go(func() {
			p.pipe(up, down, ToServer)
			if !p.opts.VanishingClients {
				up.Close()
			}
		})
		p.wg.Go(func() {
			p.pipe(down, up, ToClient)
			down.Close()
		})
	}
}

// track records the connections so that Close can close them; false if the
// proxy is closed already.
func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

// pipe copies src to dst, each chunk waiting while dir is frozen.
func (p *Proxy) pipe(dst, src net.Conn, dir Direction) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if werr := p.forward(dst, buf[:n], dir); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a closed connection: the caller closes the other side
		}
	}
}

// forward writes one chunk once dir is not frozen.
func (p *Proxy) forward(dst net.Conn, chunk []byte, dir Direction) error {
	p.mu.Lock()
	if p.armed && dir == ToServer {
		p.armed = false
		p.freezeLocked(Both)
	}
	for p.frozen&dir != 0 && !p.closed {
		thawed := p.thawed
		p.held++
		p.mu.Unlock()
		<-thawed
		p.mu.Lock()
	}
	p.mu.Unlock()
	_, err := dst.Write(chunk)
	return err
}
