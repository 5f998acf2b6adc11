package testbroker

import (
	"bytes"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Fault tags mark packets the hook must recognise later. They ride in
// Packet.Connect.WillTopic, a field that mochi copies along with a PUBLISH
// (into every subscriber's copy) but never encodes.
const (
	tagDuplicateOriginal = "\x00testbroker:duplicate-original"
	tagDuplicateCopy     = "\x00testbroker:duplicate-copy"
)

// faultHook is the mochi hook that applies fault rules to publishes and
// corrects mochi's acknowledgements (see encode.go). One exists per running
// mochi server; the fault table is shared across restarts.
type faultHook struct {
	mqtt.HookBase
	server     *mqtt.Server
	faults     *faultTable
	wills      *willHolds
	retain     retainLock   // see retainlock.go
	injector   *mqtt.Client // publishes delayed and duplicated copies
	deliveries *deliveryScheduler
	// maxPacketSize is announced in CONNACK, which mochi leaves out; 0:
	// no limit.
	maxPacketSize uint32

	ackReasonsMu      sync.Mutex
	ackReasons        map[ackKey]byte // reason codes < 0x80 to put on the next ack
	ackReasonsPending atomic.Int32    // len(ackReasons), read without the lock
}

// ackKey names the PUBACK or PUBREC owed to a client for one packet ID.
type ackKey struct {
	client   *mqtt.Client
	packetID uint16
}

func newFaultHook(server *mqtt.Server, faults *faultTable) *faultHook {
	// An inline client bypasses ACLs and never receives acks. It is not
	// registered with the server, so it never shows up as a connected client.
	injector := server.NewClient(nil, mqtt.LocalListener, "testbroker-injector", true)
	injector.Properties.ProtocolVersion = 5
	return &faultHook{
		server:     server,
		faults:     faults,
		injector:   injector,
		deliveries: newDeliveryScheduler(),
		ackReasons: make(map[ackKey]byte),
	}
}

// ID identifies the hook in mochi's logs.
func (h *faultHook) ID() string { return "testbroker-faults" }

// Provides tells mochi which hook methods to call.
func (h *faultHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPublish, mqtt.OnPublished, mqtt.OnPacketEncode, mqtt.OnSessionEstablished, mqtt.OnWill, mqtt.OnWillSent, mqtt.OnPacketRead, mqtt.OnPacketProcessed}, []byte{b})
}

// stop cancels delayed deliveries still pending and waits for running ones.
func (h *faultHook) stop() { h.deliveries.stop() }

// OnPublish applies the first fault rule matching the publish, after mochi
// validated it and before it is acknowledged and delivered.
func (h *faultHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl == h.injector {
		pk.Origin = pk.Connect.ClientIdentifier // the real sender, for No Local subscriptions
		return pk, nil
	}
	rule, ok := h.faults.take(pk.TopicName)
	if !ok {
		return pk, nil
	}
	h.Log.Debug("fault applied", "fault", rule.kind.String(), "filter", rule.filter, "topic", pk.TopicName, "client", cl.ID)
	switch rule.kind {
	case faultDrop:
		return pk, packets.CodeSuccessIgnore // acknowledged, never delivered
	case faultDelay:
		held := injectable(pk, "")
		received := time.Now()
		h.deliveries.after(rule.delay, func() { h.deliverDelayed(held, received) })
		return pk, packets.CodeSuccessIgnore
	case faultDuplicate:
		pk.Connect.WillTopic = tagDuplicateOriginal // OnPublished sends the copy
		return pk, nil
	case faultReject:
		return h.reject(cl, pk, rule.reason)
	}
	return pk, nil
}

// OnPublished runs after mochi delivered a publish to its subscribers.
func (h *faultHook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if cl == h.injector {
		return
	}
	if pk.FixedHeader.Qos > 0 {
		h.takeAckReason(cl, pk.PacketID) // normally taken by the ack already; never leave it behind
	}
	if pk.Connect.WillTopic == tagDuplicateOriginal {
		dup := injectable(pk, tagDuplicateCopy)
		dup.FixedHeader.Retain = false // the original was retained already
		h.inject(dup)
	}
}

// reject answers a publish with reason. A failure code (>= 0x80) stops delivery.
func (h *faultHook) reject(cl *mqtt.Client, pk packets.Packet, reason byte) (packets.Packet, error) {
	if reason < 0x80 {
		if pk.FixedHeader.Qos > 0 {
			h.setAckReason(cl, pk.PacketID, reason)
		}
		return pk, nil
	}
	if pk.FixedHeader.Qos > 0 {
		ackType := packets.Puback
		if pk.FixedHeader.Qos == 2 {
			ackType = packets.Pubrec // mochi's own rejection path would send a PUBACK here
		}
		err := cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: ackType},
			PacketID:    pk.PacketID,
			ReasonCode:  reason,
			Properties:  packets.Properties{ReasonString: "rejected by testbroker fault injection"},
		})
		if err != nil {
			h.Log.Debug("writing rejection failed", "client", cl.ID, "error", err)
		}
	}
	return pk, packets.ErrRejectPacket // mochi sends nothing further and delivers nothing
}

// deliverDelayed publishes a held message, with its expiry reduced by the
// time it was held; a message that expired meanwhile is discarded.
func (h *faultHook) deliverDelayed(pk packets.Packet, received time.Time) {
	if expiry := pk.Properties.MessageExpiryInterval; expiry > 0 {
		left := time.Duration(expiry)*time.Second - time.Since(received)
		if left <= 0 {
			h.Log.Debug("delayed message expired", "topic", pk.TopicName)
			return
		}
		pk.Properties.MessageExpiryInterval = uint32((left + time.Second - 1) / time.Second)
	}
	h.inject(pk)
}

// inject delivers pk to subscribers as if its original sender published it again.
func (h *faultHook) inject(pk packets.Packet) {
	if err := h.server.InjectPacket(h.injector, pk); err != nil {
		h.Log.Warn("injecting publish failed", "topic", pk.TopicName, "error", err)
	}
}

// injectable returns a copy of a received publish that InjectPacket accepts.
func injectable(pk packets.Packet, tag string) packets.Packet {
	out := pk.Copy(false)
	out.Connect.ClientIdentifier = pk.Origin
	out.Connect.WillTopic = tag
	out.Properties.TopicAlias, out.Properties.TopicAliasFlag = 0, false // the topic name is resolved
	out.Properties.SubscriptionIdentifier = nil
	out.Created, out.Expiry = 0, 0 // recomputed from the properties on injection
	if out.FixedHeader.Qos > 0 {
		out.PacketID = 1 // validation wants one; the injector's publishes are never acknowledged
	}
	return out
}

func (h *faultHook) setAckReason(cl *mqtt.Client, packetID uint16, reason byte) {
	h.ackReasonsMu.Lock()
	defer h.ackReasonsMu.Unlock()
	h.ackReasons[ackKey{cl, packetID}] = reason
	h.ackReasonsPending.Store(int32(len(h.ackReasons)))
}

func (h *faultHook) takeAckReason(cl *mqtt.Client, packetID uint16) (byte, bool) {
	if h.ackReasonsPending.Load() == 0 {
		return 0, false
	}
	h.ackReasonsMu.Lock()
	defer h.ackReasonsMu.Unlock()
	key := ackKey{cl, packetID}
	reason, ok := h.ackReasons[key]
	delete(h.ackReasons, key)
	h.ackReasonsPending.Store(int32(len(h.ackReasons)))
	return reason, ok
}
