package rpc

import (
	"math/rand/v2"
	"time"
)

// Takeover handling (see Conn).
const (
	shortLived      = time.Second            // a connection that ends sooner counts as a likely takeover
	takeoverBackoff = 250 * time.Millisecond // the delay after the first takeover, doubling
	takeoverMax     = 30 * time.Second       // the longest delay
	healthyAfter    = time.Minute            // a connection that lived this long forgets earlier takeovers
	connectWarnGap  = 5 * time.Second        // at most one connect-error warning per gap
)

// reconnectDelay is the ReconnectBackoff given to autopaho: the configured
// backoff, lengthened while connections end as takeovers.
func (c *Conn) reconnectDelay(attempt int) time.Duration {
	c.mu.Lock()
	n := c.takeovers
	c.mu.Unlock()
	d := c.backoff(attempt)
	if n > 0 {
		d = max(d, takeoverDelay(n))
	}
	return d
}

// takeoverDelay is the wait before reconnecting after the n-th takeover in
// a row: random in [d/2, d] with d = 250 ms · 2^(n-1), at most 30 s. The
// jitter keeps two processes with one ID from meeting in lockstep.
func takeoverDelay(n int) time.Duration {
	d := takeoverBackoff
	for i := 1; i < n && d < takeoverMax; i++ {
		d *= 2
	}
	d = min(d, takeoverMax)
	return d/2 + rand.N(d/2+1)
}
