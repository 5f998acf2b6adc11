package rpc

// Options of the fleet: presence, labels, fail fast, and how a broadcast
// ends.

import "maps"

// ConnServerOption is an option for both connections and Servers.
type ConnServerOption interface {
	ConnOption
	ServerOption
}

type presenceOption struct{ on bool }

func (o presenceOption) applyToConn(c *connConfig)     { c.presence = &o.on }
func (o presenceOption) applyToServer(c *serverConfig) { c.presence = &o.on }

// WithPresence turns presence (docs/protocol.md, "Fleet") on or off. On a
// connection (Dial, NewConnection) it decides whether CONNECT carries the
// Will that marks the connection's servers offline and whether its servers
// publish a presence record at all. On a Server it decides whether the
// server appears in its connection's record. Default: on for connections
// made by Dial, off for NewConnection (whose config, and handlers, belong
// to the application; never with a WillMessage of its own), and on for
// every Server (with an ID, a share group or as a gateway) on a connection
// with presence.
//
// Callers that watch the fleet (WatchFleet) fail calls to servers they do
// not see at once (WithFailFast): a server without presence is unreachable
// for them, by its ID or as the only share-group member of its service
// (ToAny), unless they turn that off.
func WithPresence(on bool) ConnServerOption { return presenceOption{on} }

// WithLabels sets application labels shown in the server's presence
// record (a device's model, firmware, site). Keys and values are free text.
// Default: none. Server.SetLabels changes them at run time.
func WithLabels(labels map[string]string) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.labels = maps.Clone(labels) })
}

// WithFailFast decides whether a Client fails a call at once with
// Unavailable, publishing nothing, when the Conn's Fleet (WatchFleet)
// knows presence complete and says nobody can take it: for a unicast call,
// the target is offline or unknown and no online gateway serves the
// service; for a call to ToAny, no online share-group member or gateway
// serves the service (docs/protocol.md, "What callers do with presence").
// Broadcasts are not affected. Turn it off when the Client calls servers
// that presence does not see: WithPresence(false), or other MQTT
// libraries. Default: on; it does nothing on a Conn without a Fleet.
func WithFailFast(on bool) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.noFailFast = !on })
}

// broadcastConfig says when a broadcast ends early.
type broadcastConfig struct {
	firstN int // end after this many replies; 0: no limit
	quorum int // end after this many OK replies; 0: no quorum
}

func (c *callConfig) broadcastOptions() *broadcastConfig {
	if c.broadcast == nil {
		c.broadcast = &broadcastConfig{}
	}
	return c.broadcast
}

// FirstN ends a broadcast after its first n replies, whatever their
// outcome; the members that did not answer yet are not reported. It
// applies to broadcasts only (Broadcast, Stub.Broadcast). n must be at
// least 1; 0 or less means no limit.
func FirstN(n int) CallOption {
	return callOptionFunc(func(c *callConfig) { c.broadcastOptions().firstN = max(n, 0) })
}

// Quorum ends a broadcast as soon as n members have answered OK. With
// presence it also ends, reporting the members that did not answer, as
// soon as n OK answers can no longer come (too many expected members
// failed or went offline). It applies to broadcasts only; 0 or less means
// no quorum.
func Quorum(n int) CallOption {
	return callOptionFunc(func(c *callConfig) { c.broadcastOptions().quorum = max(n, 0) })
}
