package rpc

import (
	"context"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
)

// responseRouter is the Conn's one response subscription,
// mqttrpc/responses/<client ID>, shared by every Client on the Conn. It
// hands each response to the call its CorrelationData names, whichever
// Client made it: the broker delivers a PUBLISH on a topic once per
// connection, however many Clients wait on it.
type responseRouter struct {
	conn  *Conn
	topic string

	subscribeMu sync.Mutex // guards subscribed and subscribeDone; never held across a round trip
	subscribed  bool
	// subscribeDone is closed when the SUBSCRIBE or UNSUBSCRIBE in
	// progress ends; others wait for it under their own context.
	subscribeDone chan struct{}

	mu          sync.Mutex
	clients     int // open Clients; the subscription is dropped with the last
	removeRoute func()
	waiters     map[[16]byte]*responseWaiter
	// streams are the open streams: a map of their own, so that a unary
	// call's waiter stays as small as it was before streams.
	streams map[[16]byte]*clientStream
}

// responseWaiter is a call (or broadcast) waiting for its answers.
type responseWaiter struct {
	client    *Client
	ch        chan response
	broadcast bool // many replies, sent without blocking
}

// response is what a waiting call receives: an answer, or the error that
// ended it before the answer could be read (its chunks were refused).
type response struct {
	publish *paho.Publish
	err     *Error // nil: decode publish
}

// attach counts a new Client and, for the first, starts listening.
func (r *responseRouter) attach(conn *Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn == nil {
		r.conn = conn
		r.topic = DefaultResponsePrefix + conn.clientID
		r.waiters = map[[16]byte]*responseWaiter{}
		r.streams = map[[16]byte]*clientStream{}
	}
	r.clients++
	if r.removeRoute == nil {
		// addListener replays parked packets to the new listener, which
		// takes r.mu: listen from outside this critical section.
		r.removeRoute = func() {}
		r.mu.Unlock()
		remove := r.conn.addListener(r.handle)
		r.mu.Lock()
		r.removeRoute = remove
	}
}

// detach ends client's calls with Canceled and, when it was the last open
// Client, unsubscribes the response topic.
func (r *responseRouter) detach(ctx context.Context, client *Client) error {
	r.mu.Lock()
	var ended []*responseWaiter
	for id, w := range r.waiters {
		if w.client == client {
			ended = append(ended, w)
			delete(r.waiters, id)
		}
	}
	var streams []*clientStream
	for id, st := range r.streams {
		if st.client == client {
			streams = append(streams, st)
			delete(r.streams, id)
		}
	}
	r.clients--
	last := r.clients == 0
	var remove func()
	if last {
		remove, r.removeRoute = r.removeRoute, nil
	}
	r.mu.Unlock()
	for _, st := range streams {
		st.breakWith(Errorf(Canceled, "client closed"))
	}
	closed := map[chan response]bool{} // a broadcast's IDs share one channel
	for _, w := range ended {
		if !closed[w.ch] {
			closed[w.ch] = true
			close(w.ch)
		}
	}
	if !last {
		return nil
	}
	if remove != nil {
		remove()
	}
	for {
		r.subscribeMu.Lock()
		if done := r.subscribeDone; done != nil {
			// A SUBSCRIBE (or UNSUBSCRIBE) is in flight: the UNSUBSCRIBE
			// goes after it, or the subscription would outlive the Clients.
			r.subscribeMu.Unlock()
			select {
			case <-done:
				continue
			case <-ctx.Done():
				return contextError(ctx.Err(), "waiting to unsubscribe the response topic")
			}
		}
		r.mu.Lock()
		reopened := r.clients > 0 // a new Client came meanwhile: it keeps the subscription
		r.mu.Unlock()
		if reopened || !r.subscribed {
			r.subscribeMu.Unlock()
			return nil
		}
		r.subscribed = false
		done := make(chan struct{})
		r.subscribeDone = done // a new Client's first call subscribes after it
		r.subscribeMu.Unlock()

		err := r.conn.unsubscribe(ctx, []string{r.topic})

		r.subscribeMu.Lock()
		r.subscribeDone = nil
		r.subscribeMu.Unlock()
		close(done)
		return err
	}
}

// register makes a fresh correlation ID that routes responses to w.
func (r *responseRouter) register(w *responseWaiter) ([16]byte, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return id, Errorf(Internal, "making a correlation ID: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if w.client.closed.Load() {
		return id, Errorf(Canceled, "client closed")
	}
	r.waiters[id] = w
	return id, nil
}

func (r *responseRouter) forget(id [16]byte) {
	r.mu.Lock()
	delete(r.waiters, id)
	r.mu.Unlock()
}

// registerStream makes a fresh correlation ID that routes a stream's
// messages to st.
func (r *responseRouter) registerStream(st *clientStream) ([16]byte, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return id, Errorf(Internal, "making a correlation ID: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if st.client.closed.Load() {
		return id, Errorf(Canceled, "client closed")
	}
	r.streams[id] = st
	return id, nil
}

func (r *responseRouter) forgetStream(id [16]byte) {
	r.mu.Lock()
	delete(r.streams, id)
	r.mu.Unlock()
}

// pending counts the calls, broadcasts and streams of client waiting for
// answers.
func (r *responseRouter) pending(client *Client) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, w := range r.waiters {
		if w.client == client {
			n++
		}
	}
	for _, st := range r.streams {
		if st.client == client {
			n++
		}
	}
	return n
}

// ensureSubscribed subscribes the response topic once; concurrent callers
// wait for the one SUBSCRIBE in flight, each under its own context.
func (r *responseRouter) ensureSubscribed(ctx context.Context) error {
	for {
		r.subscribeMu.Lock()
		if r.subscribed {
			r.subscribeMu.Unlock()
			return nil
		}
		if done := r.subscribeDone; done != nil {
			r.subscribeMu.Unlock()
			select {
			case <-done:
				continue // subscribed, or failed: look again
			case <-ctx.Done():
				return contextError(ctx.Err(), "subscribing to the response topic")
			}
		}
		done := make(chan struct{})
		r.subscribeDone = done
		r.subscribeMu.Unlock()

		err := r.conn.subscribe(ctx, []paho.SubscribeOptions{{Topic: r.topic, QoS: 2}})

		r.subscribeMu.Lock()
		r.subscribeDone = nil
		if err == nil {
			r.subscribed = true
		}
		r.subscribeMu.Unlock()
		close(done)
		return err
	}
}

// handle runs on paho's receive goroutine: it hands the response to its
// waiting call and never blocks.
func (r *responseRouter) handle(p *paho.Publish, ack func()) bool {
	if p.Topic != r.topic {
		return false
	}
	ack()
	var id [16]byte
	if p.Properties == nil || len(p.Properties.CorrelationData) != len(id) {
		r.conn.logger.Debug("mqttrpc: dropped a response without a valid correlation ID", "topic", p.Topic)
		return true
	}
	copy(id[:], p.Properties.CorrelationData)
	if isChunk(p) {
		r.chunk(p, id)
		return true
	}
	r.route(id, response{publish: p})
	return true
}

// route hands an answer (or a message of a stream) to the call, broadcast
// or stream of id.
func (r *responseRouter) route(id [16]byte, resp response) {
	p := resp.publish
	// Sends happen under the lock, so that detach cannot close a channel in
	// between; they never block (one buffered slot per unary call, a
	// select for broadcasts).
	r.mu.Lock()
	w, ok := r.waiters[id]
	delivered := true
	if !ok {
		if st := r.streams[id]; st != nil {
			// Outside the lock: the stream takes it without blocking.
			r.mu.Unlock()
			st.deliver(p)
			return
		}
	}
	if ok {
		if w.broadcast {
			select {
			case w.ch <- resp:
			default:
				delivered = false
			}
		} else {
			delete(r.waiters, id)
			w.ch <- resp
		}
	}
	r.mu.Unlock()
	switch {
	case !ok:
		// A late answer to a call that gave up, or a duplicate.
		r.conn.logger.Debug("mqttrpc: dropped a response to no pending call", "topic", p.Topic)
	case !delivered:
		w.client.logger.Warn("mqttrpc: dropped a broadcast reply: the reader is too slow", "topic", p.Topic)
	}
}

// chunk files a chunk of an answer with its call's Client, and routes the
// answer once it is complete, or the call's failure when it is refused
// (docs/protocol.md, "Reassembly"). A stream takes its chunks itself.
func (r *responseRouter) chunk(p *paho.Publish, id [16]byte) {
	r.mu.Lock()
	w, st := r.waiters[id], r.streams[id]
	r.mu.Unlock()
	switch {
	case st != nil:
		st.deliver(p)
		return
	case w == nil:
		r.conn.logger.Debug("mqttrpc: dropped a chunk of a response to no pending call", "topic", p.Topic)
		return
	}
	c := w.client
	h := readChunk(p)
	now := time.Now()
	// A broadcast's answers keep their keys: a copy of a chunk of an
	// answer it has must not open the answer again.
	res := c.chunks.add(chunkKey{call: string(id[:]), target: h.target, seq: -1}, p, h, now, chunkExpiry(now, p, c.timeout), w.broadcast)
	switch res.outcome {
	case chunkComplete:
		r.route(id, response{publish: res.message})
	case chunkRefused:
		err := res.err
		if err.Code() == InvalidArgument {
			err = Errorf(Internal, "the answer came in %s", err.Message())
		}
		r.route(id, response{publish: p, err: err}) // p names the answer's server (mqttrpc-target)
	}
}

// chunkExpiry is when a chunked message whose first chunk p arrived at
// now is dropped if incomplete: at p's MessageExpiryInterval, else after
// fallback.
func chunkExpiry(now time.Time, p *paho.Publish, fallback time.Duration) time.Time {
	if e := p.Properties.MessageExpiry; e != nil && *e > 0 {
		return now.Add(time.Duration(*e) * time.Second)
	}
	return now.Add(fallback)
}
