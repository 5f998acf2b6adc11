package rpc

// What a Server counts: answers served and requests dropped or rejected,
// by reason.

import (
	"strconv"
	"sync/atomic"
)

// count records a dropped or rejected request in Stats and tells the drop
// hook.
func (s *Server) count(reason DropReason, topic string) {
	s.stats.add(reason)
	if s.cfg.dropHook != nil {
		s.cfg.dropHook(reason, topic)
	}
}

func (s *Server) drop(reason DropReason, topic, detail string) {
	s.count(reason, topic)
	s.cfg.logger.Warn("mqttrpc: request dropped", "reason", reason.String(), "topic", topic, "detail", detail)
}

// ServerStats counts what a server did with the requests it received.
type ServerStats struct {
	// Served counts answers published (OK or error).
	Served uint64
	// Dropped counts requests that got no answer or an early rejection, by reason.
	Dropped map[DropReason]uint64
	// Methods are the stats of each unary method, by procedure
	// ("/service/method"), as NATS micro's STATS has them.
	Methods map[string]MethodStats
}

// DropReason says why a request was dropped or rejected.
type DropReason int

// The reasons a server drops or rejects a request.
const (
	// DropExpired: the request's deadline passed before it could be answered.
	DropExpired DropReason = iota
	// DropNoResponseTopic: the request had no ResponseTopic to answer on.
	DropNoResponseTopic
	// DropResponseTopicPolicy: the ResponseTopic was outside the server's policy.
	DropResponseTopicPolicy
	// DropBadCorrelationData: the CorrelationData was too long to echo.
	DropBadCorrelationData
	// DropOverload: the server was over its concurrency and queue limits
	// (answered ResourceExhausted when possible).
	DropOverload
	// DropBadPayload: the payload did not decode (answered InvalidArgument).
	DropBadPayload
	// DropResponseFailed: the answer could not be published.
	DropResponseFailed
	// DropShuttingDown: the server was shutting down (answered Unavailable
	// when possible).
	DropShuttingDown
	// DropDuplicate: a duplicate of a request that already ran or is running
	// (QoS 1 redelivery, client retry); it was not executed again, and got
	// the original's answer.
	DropDuplicate
	// DropTooLarge: the request's payload was over the server's limit
	// (answered ResourceExhausted).
	DropTooLarge
	// DropBadResponseTopic: the ResponseTopic was no topic a server can
	// publish to (a wildcard, a control character): answering would get
	// the server disconnected.
	DropBadResponseTopic
	// DropUnanswered: the request was refused (see the other reasons) at a
	// moment when the server already had too many early answers queued, so
	// it got none.
	DropUnanswered
	// DropCanceled: the caller canceled the call (a cancel message) before
	// it was answered; the handler's context ended, or it never ran.
	DropCanceled
	// DropSilentPeer: the caller of a stream sent nothing, not even its
	// keepalive, for three keepalive intervals; the handler's context
	// ended with Unavailable.
	DropSilentPeer
	// DropBadChunk: the chunks of a request contradicted each other or
	// named no message (docs/protocol.md, "Chunking"); answered
	// InvalidArgument.
	DropBadChunk
	// DropIncomplete: a chunked request was still missing chunks at its
	// deadline, and was dropped unanswered.
	DropIncomplete
	numDropReasons
	statServed = numDropReasons
)

var dropReasonNames = [...]string{"expired", "no_response_topic", "response_topic_policy", "bad_correlation_data", "overload", "bad_payload", "response_failed", "shutting_down", "duplicate", "too_large", "bad_response_topic", "unanswered", "canceled", "silent_peer", "bad_chunk", "incomplete"}

// String returns the reason as a snake_case word, for logs and metrics.
func (r DropReason) String() string {
	if r >= 0 && r < numDropReasons {
		return dropReasonNames[r]
	}
	return "DropReason(" + strconv.Itoa(int(r)) + ")"
}

type serverCounters struct {
	counts [numDropReasons + 1]atomic.Uint64
}

func (c *serverCounters) add(r DropReason) { c.counts[r].Add(1) }

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() ServerStats {
	st := ServerStats{Served: s.stats.counts[statServed].Load(), Dropped: map[DropReason]uint64{}}
	for r := DropReason(0); r < numDropReasons; r++ {
		if n := s.stats.counts[r].Load(); n > 0 {
			st.Dropped[r] = n
		}
	}
	st.Methods = s.methodStats()
	return st
}
