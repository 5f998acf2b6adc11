package testbroker

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// trackingListener is a mochi TCP listener that closes without races or
// deadlocks. mochi's listeners.TCP disconnects its clients before it stops
// accepting (a client reconnecting meanwhile, not yet registered, keeps the
// broker alive), and its client lookup read-locks the client map twice, which
// deadlocks when a client disconnects at the same moment. This one stops
// accepting, then closes every connection it accepted, without a DISCONNECT
// packet, and waits until mochi's goroutines for them have returned. It hands
// mochi each connection as a queuedConn, whose writes never block.
type trackingListener struct {
	id         string
	ln         net.Listener
	log        *slog.Logger
	done       func(net.Conn) // called once mochi is done with a connection; may be nil
	acceptDone chan struct{}

	mu       sync.Mutex
	closing  bool
	conns    map[*queuedConn]struct{}
	handlers sync.WaitGroup // one per accepted connection until mochi is done with it
}

var _ listeners.Listener = (*trackingListener)(nil)

// newTrackingListener wraps ln. done, if not nil, is called with each
// accepted connection once mochi's goroutine for it has returned.
func newTrackingListener(id string, ln net.Listener, done func(net.Conn)) *trackingListener {
	return &trackingListener{
		id:         id,
		ln:         ln,
		log:        slog.New(slog.DiscardHandler),
		done:       done,
		acceptDone: make(chan struct{}),
		conns:      make(map[*queuedConn]struct{}),
	}
}

// Init receives mochi's logger; the socket is already bound.
func (l *trackingListener) Init(log *slog.Logger) error {
	l.log = log
	return nil
}

// ID returns the listener's ID.
func (l *trackingListener) ID() string { return l.id }

// Address returns the bound address.
func (l *trackingListener) Address() string { return l.ln.Addr().String() }

// Protocol returns "tcp".
func (l *trackingListener) Protocol() string { return "tcp" }

// Serve accepts connections and hands each to mochi on its own goroutine
// until the listener is closed. mochi calls it on a goroutine of its own.
func (l *trackingListener) Serve(establish listeners.EstablishFn) {
	defer close(l.acceptDone)
	for {
		nc, err := l.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			l.log.Warn("accept failed", "error", err)
			time.Sleep(10 * time.Millisecond) // e.g. out of file descriptors: back off instead of spinning
			continue
		}
		conn := newQueuedConn(nc) // mochi never blocks writing to a client (queuedconn.go)
		if !l.track(conn) {
			conn.abort()
			return
		}
		go func() {
			defer l.handlers.Done()
			defer l.untrack(conn)
			if err := establish(l.id, conn); err != nil {
				l.log.Debug("client connection ended", "remote", conn.RemoteAddr().String(), "error", err)
			}
			if l.done != nil {
				l.done(conn)
			}
		}()
	}
}

// Close stops accepting, closes every connection and waits until mochi has let
// go of all of them. It does not use mochi's closeClients (see above).
func (l *trackingListener) Close(listeners.CloseFn) {
	l.mu.Lock()
	already := l.closing
	l.closing = true
	l.mu.Unlock()
	if already {
		return
	}
	_ = l.ln.Close()
	<-l.acceptDone
	l.mu.Lock()
	conns := make([]*queuedConn, 0, len(l.conns))
	for conn := range l.conns {
		conns = append(conns, conn)
	}
	l.mu.Unlock()
	for _, conn := range conns {
		conn.abort()
	}
	l.handlers.Wait()
}

func (l *trackingListener) track(conn *queuedConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return false
	}
	l.conns[conn] = struct{}{}
	l.handlers.Add(1)
	return true
}

// untrack forgets conn once mochi is done with it, and closes it: what mochi
// queued last, such as a CONNACK refusing the client, is written first.
func (l *trackingListener) untrack(conn *queuedConn) {
	l.mu.Lock()
	delete(l.conns, conn)
	l.mu.Unlock()
	_ = conn.Close()
}
