// Package testbroker runs an embedded MQTT 5 broker for tests and examples,
// built on mochi-mqtt/server/v2, with fault injection.
//
//	broker := testbroker.Start(t)              // 127.0.0.1, free port, closed at test end
//	broker.DropPublishes("mqttrpc/+/dev-1/#", 1) // lose the next request to dev-1
//	... connect clients to broker.URL() ...
//
// Every client is allowed to connect and to use every topic. Shared
// subscriptions ($share/group/filter) deliver each message to one member of
// the group. Sessions live in memory only: Restart and Close lose them.
//
// # Differences from stock mochi
//
// testbroker corrects what mochi v2.7.9 gets wrong for MQTT 5 clients:
//   - QoS 1 publishes are acknowledged with reason code 0x00; mochi sends
//     0x01, which is invalid in a PUBACK (mqtt.js rejects it).
//   - PUBACK, PUBREC, PUBREL and PUBCOMP carry no properties copied from the
//     PUBLISH; only a reason string on failures.
//   - Messages sent without a Message Expiry Interval reach subscribers
//     without one; mochi would add its 86400 s maximum.
//   - User properties reach subscribers that connected with Request Problem
//     Information 0 (autopaho sends that whenever SessionExpiryInterval is
//     set); mochi strips them from PUBLISH packets too.
//
// and avoids three mochi deadlocks: Close and Restart cut connections
// themselves, without DISCONNECT packets, as a crashing broker would; the
// broker does not enforce a client's own Receive Maximum (mochi's code for it
// can deadlock), leaving a slow client to TCP backpressure; and writes to a
// client never block. mochi writes to the network under the client's lock,
// which its reader of that client needs for every PUBACK and every publisher
// for every message to it, so a client that stopped reading for a moment
// stopped the broker reading it and its publishers, and large payloads at
// high concurrency wedged client and broker until the keepalive cut them.
// As Mosquitto does, testbroker queues what it cannot write yet, in memory
// (up to 1 GiB per client, past which it cuts the client), and keeps
// reading every client.
//
// It also closes a race between two connections with the same client ID.
// When a connection whose session ends with it (clean start, or Session
// Expiry Interval 0) closed just as a new one with its ID connected, or took
// it over, mochi's cleanup of the old connection, done by client ID, could
// remove the new one from the broker: it stayed connected but received
// nothing. testbroker makes the two steps take turns per client ID: the old
// connection finishes its cleanup before the new one looks for a session, or
// the new one takes the session over before the old one decides to clean up,
// which it then skips. Other client IDs never wait, and the closing of a
// persistent session makes nobody wait.
//
// It raises mochi's limits so that thousands of concurrent QoS 1 publishes
// from one client are never throttled or dropped: Receive Maximum announced to
// clients and maximum inflight messages per client 65535 (mochi: 1024 and
// 8192), 16384 packets queued per client writer (mochi: 8192), no maximum
// packet size (WithMaxPacketSize sets one, and announces it in CONNACK,
// which mochi does not) and no maximum message expiry. $SYS topics are
// refreshed hourly.
//
// Like mochi, and unlike Mosquitto, the broker never answers a publish with
// reason code 0x10 "no matching subscribers": it stands for brokers that do
// not report it. Use RejectPublishes(filter, n, 0x10) to simulate one that does.
//
// # Faults
//
// DropPublishes, DelayPublishes, DuplicatePublishes and RejectPublishes add
// rules that match publishes by topic filter (+ and # wildcards), affect the
// next n matching publishes (or all of them, for n <= 0) and then disappear.
// Rules apply to publishes from clients, oldest rule first, one rule per
// publish; an invalid topic filter panics. Disconnect cuts a client's
// connection; Restart restarts the broker on the same port. All of them are
// safe to call while clients are busy.
package testbroker
