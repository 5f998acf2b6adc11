package rpc

// A connection's presence (docs/protocol.md, "Fleet"): the servers on it
// that announce themselves, the Will in every CONNECT, the retained record
// republished after each change and each reconnect, and the repair of a
// stale Will.

import (
	"context"
	"hash/maphash"
	"slices"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// presenceRetry is the wait before publishing a record again after a
// publish failed on a connection that is still up.
const presenceRetry = 500 * time.Millisecond

// connPresence is the presence of one Conn. Its publisher goroutine,
// started with the first server, is the only one that publishes records,
// so they go out in order; the Conn owns it and Close waits for it.
type connPresence struct {
	c     *Conn
	topic string
	seqs  birthSeq

	mu         sync.Mutex
	pendingSeq uint64    // seq of the last CONNECT built
	seq        uint64    // seq of the connection that is up; 0 while down
	since      time.Time // when that connection came up
	servers    []*Server // started servers that announce themselves
	rev        uint64    // bumped on every change of what the record says
	published  uint64    // rev last published on connection seq
	last       uint64    // maphash of the last record published (or being published) on connection seq; 0: none
	changed    chan struct{}
	schemaSeq  uint64    // connection the schemas were checked on
	schemaDone []*schema // schemas checked on schemaSeq (a few: a slice is smaller than a map)
	started    bool      // the publisher runs
	kick       chan struct{}
	done       chan struct{} // closed when the publisher has ended
}

func newConnPresence(c *Conn) *connPresence {
	return &connPresence{c: c, topic: presenceTopic(c.clientID), kick: make(chan struct{}, 1), changed: make(chan struct{}), done: make(chan struct{})}
}

// buildWill puts the Will into the CONNECT of the next connection attempt
// and gives it a fresh birth sequence.
func (p *connPresence) buildWill(cp *paho.Connect) {
	seq := p.seqs.next()
	p.mu.Lock()
	p.pendingSeq = seq
	offline := p.recordLocked(seq, stateOffline, time.Now())
	p.mu.Unlock()
	setWill(cp, p.c.clientID, seq, offline)
}

// disconnectPacket is the DISCONNECT that Conn.Close sends: reason 0x04
// (Disconnect with Will Message) while servers are on the connection, so
// that the broker marks them offline.
func (p *connPresence) disconnectPacket() *paho.Disconnect {
	p.mu.Lock()
	n := len(p.servers)
	p.mu.Unlock()
	if n > 0 {
		return &paho.Disconnect{ReasonCode: 0x04}
	}
	return &paho.Disconnect{ReasonCode: 0}
}

// up records that the connection built last is up; the publisher
// publishes the record once its subscriptions are restored.
func (p *connPresence) up() {
	p.mu.Lock()
	p.seq, p.since = p.pendingSeq, time.Now()
	p.published, p.last = 0, 0
	if len(p.servers) == 0 {
		p.published = p.rev // nothing to announce
	}
	p.mu.Unlock()
	p.poke()
}

// down records that the connection ended.
func (p *connPresence) down() {
	p.mu.Lock()
	p.seq = 0
	p.wakeLocked()
	p.mu.Unlock()
}

func (p *connPresence) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *connPresence) wakeLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// register adds a started server to the record and waits, as
// unregister does, until the record with it is published.
func (p *connPresence) register(ctx context.Context, s *Server) {
	p.mu.Lock()
	if slices.Contains(p.servers, s) {
		p.mu.Unlock()
		return
	}
	p.servers = append(p.servers, s)
	p.rev++
	rev := p.rev
	// Not after Close has cancelled c.ctx: Close waits for a publisher
	// that was started before (wait takes p.mu after the cancel).
	start := !p.started && p.c.ctx.Err() == nil
	p.started = p.started || start
	p.mu.Unlock()
	if start {
		// The publisher is owned by the Conn: it ends with c.ctx, and
		// Close waits for p.done.
		go p.run()
	}
	p.poke()
	p.awaitPublished(ctx, rev)
}

// update republishes the record: a server's health or labels changed.
func (p *connPresence) update() {
	p.mu.Lock()
	p.rev++
	p.mu.Unlock()
	p.poke()
}

// unregister removes a server from the record and waits until the record
// without it is published (the last server's removal publishes the record
// offline); see awaitPublished.
func (p *connPresence) unregister(ctx context.Context, s *Server) {
	p.mu.Lock()
	i := slices.Index(p.servers, s)
	if i < 0 {
		p.mu.Unlock()
		return
	}
	p.servers = slices.Delete(p.servers, i, i+1)
	p.rev++
	rev := p.rev
	p.mu.Unlock()
	p.poke()
	p.awaitPublished(ctx, rev)
}

// awaitPublished waits until revision rev of the record is published, the
// connection is down (the Will speaks for it then; the record is published
// when it is back) or ctx ends.
func (p *connPresence) awaitPublished(ctx context.Context, rev uint64) {
	for {
		p.mu.Lock()
		done := p.seq == 0 || p.published >= rev
		changed := p.changed
		p.mu.Unlock()
		if done {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		case <-p.done:
			return
		}
	}
}

// observe sees every message on the connection's own presence topic, on
// paho's receive goroutine: a record or removal with an older birth
// sequence than the connection's is a stale Will, and a record of this
// connection that is not the one it last published an older revision come
// back (a bridge resends its retained copy when it reconnects); both are
// repaired by publishing the record again.
func (p *connPresence) observe(pub *paho.Publish) {
	pp, ok, _ := parsePresence(pub)
	if !ok {
		return
	}
	p.mu.Lock()
	stale := p.seq != 0 && pp.seq != 0 && pp.seq < p.seq && len(p.servers) > 0
	if pp.removed && pp.seq == 0 && p.seq != 0 && len(p.servers) > 0 {
		stale = true // a removal that names no connection is not ours
	}
	if !pp.removed && pp.seq == p.seq && p.seq != 0 && len(p.servers) > 0 && p.last != 0 && recordSum(pub.Payload) != p.last {
		// Ours, but not the latest: an older revision, or the echo of one
		// published just before the latest (then the repair is needless,
		// and harmless).
		stale = true
	}
	if stale {
		// A new revision, not published = 0: a publish of the record in
		// flight now (its PUBACK not yet in) would mark the current
		// revision published when it returns, and the repair would be lost.
		p.rev++
	}
	p.mu.Unlock()
	if stale {
		p.c.logger.Info("mqttrpc: a stale presence record replaced ours; publishing it again", "topic", p.topic, "stale_seq", pp.seq)
		p.poke()
	}
}

// run is the publisher: it subscribes to the connection's own presence
// topic, then publishes the record whenever it is out of date.
func (p *connPresence) run() {
	defer close(p.done)
	ctx := p.c.ctx
	subscribed := false
	for {
		select {
		case <-p.kick:
		case <-ctx.Done():
			return
		}
		if !subscribed {
			// Recorded by the Conn and restored after reconnects; a
			// connection that is down subscribes when it is back.
			err := p.c.subscribe(ctx, []paho.SubscribeOptions{{Topic: p.topic, QoS: 1}})
			subscribed = err == nil || CodeOf(err) == Unavailable
			if !subscribed {
				p.c.logger.Warn("mqttrpc: subscribing to the own presence topic failed: stale wills are not repaired", "topic", p.topic, "error", err)
				subscribed = true // not retried: the broker refused it
			}
		}
		for p.publishOnce(ctx) {
		}
	}
}

// publishOnce publishes the record if it is out of date on the connection
// that is up, and reports whether to look again.
func (p *connPresence) publishOnce(ctx context.Context) bool {
	p.mu.Lock()
	seq, rev := p.seq, p.rev
	if seq == 0 || p.published >= rev {
		p.mu.Unlock()
		return false
	}
	state := stateOnline
	if len(p.servers) == 0 {
		state = stateOffline
	}
	rec := p.recordLocked(seq, state, p.since)
	p.mu.Unlock()
	if err := p.c.waitReady(ctx); err != nil {
		return false // poked again when the connection is up
	}
	if state == stateOnline {
		// Before the record: a record names only schemas the broker
		// retains, so whoever reads it can fetch them at once.
		p.ensureSchemas(ctx, seq)
	}
	pub := recordPublish(rec)
	p.mu.Lock()
	if p.seq == seq {
		p.last = recordSum(pub.Payload) // before the publish: its echo may come before its PUBACK
	}
	p.mu.Unlock()
	pubCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := p.c.publish(pubCtx, pub)
	cancel()
	if err != nil {
		p.c.logger.Warn("mqttrpc: publishing the presence record failed", "topic", p.topic, "error", err)
		timer := time.NewTimer(presenceRetry)
		defer timer.Stop()
		select {
		case <-timer.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	p.mu.Lock()
	if p.seq == seq && p.published < rev {
		p.published = rev
		p.wakeLocked()
	}
	p.mu.Unlock()
	return true
}

// recordLocked builds the record of the connection. p.mu is held; each
// server takes its own lock for its part.
func (p *connPresence) recordLocked(seq uint64, state string, since time.Time) *presenceRecord {
	r := &presenceRecord{V: recordVersion, ClientID: p.c.clientID, Seq: seq, State: state, Since: since.UTC(), Servers: make([]presenceServer, 0, len(p.servers))}
	// A broadcast reaches a connection once, and the first of its servers
	// that serves the service takes it: a later server of the same service
	// on the same connection does not take broadcasts.
	broadcastTaken := map[string]bool{}
	for _, s := range p.servers {
		e := s.presenceEntry()
		if e.ID != "" && e.takesBroadcasts() {
			shadowed := false
			for _, svc := range e.Services {
				shadowed = shadowed || broadcastTaken[svc.Name]
				broadcastTaken[svc.Name] = true
			}
			if shadowed {
				no := false
				e.Broadcast = &no
			}
		}
		r.Servers = append(r.Servers, e)
	}
	return r
}

// wait waits for the publisher to end; Close calls it after c.ctx ended.
func (p *connPresence) wait() {
	p.mu.Lock()
	started := p.started
	p.mu.Unlock()
	if started {
		<-p.done
	}
}

// recordSeed seeds recordSum for the process.
var recordSeed = maphash.MakeSeed()

// recordSum names a record's payload: the connection keeps it, not the
// payload, to tell its last record from an older one (a few hundred bytes
// less per device).
func recordSum(payload []byte) uint64 {
	if sum := maphash.Bytes(recordSeed, payload); sum != 0 {
		return sum
	}
	return 1 // 0 means none
}
