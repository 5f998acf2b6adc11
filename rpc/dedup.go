package rpc

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// dedupCache makes sure that a request is executed once, however often it is
// delivered: QoS 1 redeliveries and client retries carry the same
// (ResponseTopic, CorrelationData). An entry lives until the request's
// deadline. The cache is bounded in entries and bytes; past a bound the
// oldest entries go first, so under extreme load a very late duplicate may
// run again rather than memory growing without end.
type dedupCache struct {
	maxEntries int
	maxBytes   int

	mu      sync.Mutex
	entries map[string]*dedupEntry
	order   dedupEntry // sentinel of the entries in arrival order: order.next is the oldest
	bytes   int
}

type dedupEntry struct {
	prev, next *dedupEntry // in the cache's order, in the entry's allocation
	key        string
	expires    time.Time
	done       bool
	response   *cachedResponse // set when done and the answer was published
	size       int
	// cancel ends the handler's context when the caller cancels (the
	// cancel message); canceled records a cancel that came first.
	cancel   context.CancelFunc
	canceled bool
}

// dedupState says what to do with a request.
type dedupState int

const (
	dedupNew     dedupState = iota // execute it
	dedupRunning                   // the original is running: its answer serves both
	dedupDone                      // already answered: send the cached answer again
)

func newDedupCache(maxEntries, maxBytes int) *dedupCache {
	c := &dedupCache{maxEntries: maxEntries, maxBytes: maxBytes, entries: map[string]*dedupEntry{}}
	c.order.prev, c.order.next = &c.order, &c.order
	return c
}

// dedupKey identifies a call. The NUL cannot occur in a topic.
func dedupKey(responseTopic string, correlationData []byte) string {
	return responseTopic + "\x00" + string(correlationData)
}

// requestDedupKey is the key that tells a request's copies apart, and
// whether the request is known to be no copy (fresh). A call with
// CorrelationData is keyed by it, so that a client's retry is recognised
// too. One without (mosquitto_rr sends none) can only be recognised as a
// QoS 1 or 2 redelivery: by its packet identifier on the server's session,
// where a copy has DUP set and a request without DUP is new even if it
// reuses the identifier of an older one. "" means no deduplication (QoS 0
// without CorrelationData).
func requestDedupKey(p *paho.Publish) (key string, fresh bool) {
	if len(p.Properties.CorrelationData) > 0 {
		return dedupKey(p.Properties.ResponseTopic, p.Properties.CorrelationData), false
	}
	if p.QoS == 0 || p.PacketID == 0 {
		return "", false
	}
	return p.Properties.ResponseTopic + "\x01" + strconv.Itoa(int(p.PacketID)), !p.Duplicate()
}

// begin records a request that arrived with key and deadline. For a
// duplicate it returns the state of the original and, when done, its answer.
func (c *dedupCache) begin(key string, deadline, now time.Time) (dedupState, *cachedResponse) {
	st, resp, _ := c.start(key, deadline, now, false)
	return st, resp
}

// start is begin that also returns the new entry, to finish or forget it
// by identity. With fresh, the request is known not to be a duplicate and
// replaces an entry of the same key (a reused packet identifier).
func (c *dedupCache) start(key string, deadline, now time.Time, fresh bool) (dedupState, *cachedResponse, *dedupEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[key]; ok {
		if now.Before(e.expires) && !fresh {
			if !e.done {
				return dedupRunning, nil, nil
			}
			return dedupDone, e.response, nil
		}
		c.remove(e)
	}
	e := &dedupEntry{key: key, expires: deadline, size: len(key) + entryOverhead}
	e.prev, e.next = c.order.prev, &c.order
	e.prev.next, c.order.prev = e, e
	c.entries[key] = e
	c.bytes += e.size
	c.evict(now)
	return dedupNew, nil, e
}

// entryOverhead approximates the bookkeeping bytes of an entry.
const entryOverhead = 128

// finish stores the answer of key's request (nil if none was published).
func (c *dedupCache) finish(key string, resp *cachedResponse) {
	c.mu.Lock()
	e := c.entries[key]
	c.mu.Unlock()
	if e != nil {
		c.finishEntry(e, resp)
	}
}

// finishEntry stores the answer of e's request, if e is still in the cache.
// It reports whether the caller canceled the call: then the answer is not
// kept, and should not be sent.
func (c *dedupCache) finishEntry(e *dedupEntry, resp *cachedResponse) (canceled bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.cancel = nil
	if e.canceled {
		resp = nil
	}
	if c.entries[e.key] != e {
		return e.canceled // evicted or replaced meanwhile
	}
	e.done = true
	if resp != nil {
		e.response = resp
		grow := len(resp.payload) + len(resp.topic) + len(resp.properties.correlationData) + len(resp.properties.contentType)
		for _, u := range resp.properties.user {
			grow += len(u.key) + len(u.value)
		}
		e.size += grow
		c.bytes += grow
	}
	c.evict(time.Time{})
	return e.canceled
}

// forget removes e: its request was not executed (rejected, expired
// unanswered), so a retry deserves a fresh chance. A nil e is ignored.
func (c *dedupCache) forget(e *dedupEntry) {
	if e == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[e.key] == e {
		c.remove(e)
	}
}

// evict drops expired entries from the front and the oldest ones while over
// a bound. A zero now skips the expiry check.
func (c *dedupCache) evict(now time.Time) {
	for e := c.order.next; e != &c.order; e = c.order.next {
		over := len(c.entries) > c.maxEntries || c.bytes > c.maxBytes
		expired := !now.IsZero() && !now.Before(e.expires)
		if !over && !expired {
			return
		}
		c.remove(e)
	}
}

func (c *dedupCache) remove(e *dedupEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	delete(c.entries, e.key)
	c.bytes -= e.size
}

// len returns the number of entries.
func (c *dedupCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// attachCancel gives e's running handler the function that cancels it. It
// reports false when the caller already canceled: the handler need not run.
func (c *dedupCache) attachCancel(e *dedupEntry, cancel context.CancelFunc) bool {
	if e == nil {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.canceled {
		return false
	}
	e.cancel = cancel
	return true
}

// cancelCall handles a cancel message for key: the handler's context ends;
// a request still queued will not run. It reports whether a call that had
// not finished was found.
func (c *dedupCache) cancelCall(key string) bool {
	c.mu.Lock()
	e, ok := c.entries[key]
	if !ok || e.done || e.canceled {
		c.mu.Unlock()
		return false
	}
	e.canceled = true
	cancel := e.cancel
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	return true
}
