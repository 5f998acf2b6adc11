package rpc

// Liveness of streams (docs/protocol.md, "Liveness"): each side sends a
// credit message with its count of messages sent when it has been quiet
// for the keepalive interval, and ends a stream whose peer it has not
// heard from for silenceFactor intervals (Unavailable), or one of whose
// messages has not come that long after the peer said it sent it
// (DataLoss).

import (
	"sync/atomic"
	"time"
)

const (
	// DefaultStreamKeepalive is the keepalive interval of streams unless
	// WithStreamKeepalive says otherwise.
	DefaultStreamKeepalive = 5 * time.Second
	// minStreamKeepalive bounds how often a server pings whatever the
	// client asks.
	minStreamKeepalive = 50 * time.Millisecond
	// silenceFactor: a peer not heard from for this many intervals is
	// gone.
	silenceFactor = 3
)

// liveness is one side's keepalive of one stream: a goroutine, owned by
// the stream, that pings when the side was quiet and calls silent once
// when the peer was.
type liveness struct {
	interval  time.Duration
	lastHeard atomic.Int64 // UnixNano
	lastSent  atomic.Int64
	stop      chan struct{}
	done      chan struct{}
}

// startLiveness starts the keepalive: ping publishes a keepalive message
// and check decides, from how long the peer has been silent, whether the
// stream is over (it ends it, and returns true); both run on the liveness
// goroutine with no lock held.
func startLiveness(interval time.Duration, ping func(), check func(silentFor time.Duration) (over bool)) *liveness {
	l := &liveness{interval: interval, stop: make(chan struct{}), done: make(chan struct{})}
	now := time.Now().UnixNano()
	l.lastHeard.Store(now)
	l.lastSent.Store(now)
	go l.run(ping, check)
	return l
}

func (l *liveness) run(ping func(), check func(time.Duration) bool) {
	defer close(l.done)
	ticker := time.NewTicker(max(l.interval/4, time.Millisecond))
	defer ticker.Stop()
	for {
		select {
		case <-l.stop:
			return
		case now := <-ticker.C:
			if check(now.Sub(time.Unix(0, l.lastHeard.Load()))) {
				return
			}
			if now.Sub(time.Unix(0, l.lastSent.Load())) >= l.interval {
				l.sent()
				ping()
			}
		}
	}
}

// heard records a message from the peer. A nil liveness is off.
func (l *liveness) heard() {
	if l != nil {
		l.lastHeard.Store(time.Now().UnixNano())
	}
}

// sent records a message to the peer.
func (l *liveness) sent() {
	if l != nil {
		l.lastSent.Store(time.Now().UnixNano())
	}
}

// close stops the keepalive and waits for its goroutine.
func (l *liveness) close() {
	if l == nil {
		return
	}
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}
