package rpc

import (
	"fmt"
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

// connectionDown runs on autopaho's goroutine when a connection has ended,
// before it reconnects (after reconnectDelay). A connection the broker took
// over, or one that ended soon after it was made, counts as a takeover.
func (c *Conn) connectionDown() {
	reason, byBroker := c.session.disconnectReason()
	c.mu.Lock()
	c.up = false
	if c.genCancel != nil {
		c.genCancel()
		c.cancelOps()
	}
	c.genCtx, c.genCancel = nil, nil
	lived := time.Since(c.upSince)
	takenOver := byBroker && reason == 0x8E
	if lived >= healthyAfter {
		c.takeovers = 0
	}
	suspect := takenOver || lived < shortLived
	if suspect && !c.closed {
		c.takeovers++
	} else {
		c.takeovers = 0
	}
	n, closed := c.takeovers, c.closed
	c.wakeLocked()
	c.mu.Unlock()
	switch {
	case closed:
	case takenOver:
		c.logger.Warn("mqttrpc: the broker handed the session to another client with the same client ID (DISCONNECT 0x8E); reconnecting with backoff",
			"client_id", c.clientID, "broker", c.broker, "takeovers_in_a_row", n)
	case suspect && byBroker:
		c.logger.Warn("mqttrpc: the broker disconnected soon after connecting; reconnecting with backoff",
			"client_id", c.clientID, "broker", c.broker, "reason", fmt.Sprintf("0x%02x (%s)", reason, disconnectReasonText(reason)), "lived", lived, "in_a_row", n)
	case suspect:
		c.logger.Warn("mqttrpc: connection lost soon after it was made, likely taken over by another client with the same client ID; reconnecting with backoff",
			"client_id", c.clientID, "broker", c.broker, "lived", lived, "in_a_row", n)
	case byBroker:
		c.logger.Info("mqttrpc: the broker disconnected", "client_id", c.clientID, "reason", fmt.Sprintf("0x%02x (%s)", reason, disconnectReasonText(reason)))
	default:
		c.logger.Debug("mqttrpc: connection lost", "client_id", c.clientID)
	}
}
