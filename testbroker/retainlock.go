package testbroker

import (
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// retainLock serialises mochi's writes of retained messages with its scans
// of them for a new subscription. mochi 2.7.9 writes a topic's retain path
// under the topic's lock and reads it without (TopicsIndex.scanMessages,
// mochi-mqtt/server issue 200), a data race that the race detector reports
// whenever a retained message arrives while a client subscribes with a
// wildcard. The hook takes the lock when it reads a SUBSCRIBE or a
// retained PUBLISH that mochi will process (the same validation as
// mochi's), and when a retained Will is about to be published, and lets
// go when mochi is done with it.
type retainLock struct {
	mu      sync.Mutex // held while mochi processes one such packet or Will
	heldMu  sync.Mutex
	holders map[*mqtt.Client]int // packets (1) and Wills (2) holding mu, by client
}

func (l *retainLock) take(cl *mqtt.Client, kind int) {
	l.mu.Lock()
	l.heldMu.Lock()
	if l.holders == nil {
		l.holders = map[*mqtt.Client]int{}
	}
	l.holders[cl] |= kind
	l.heldMu.Unlock()
}

func (l *retainLock) release(cl *mqtt.Client, kind int) {
	l.heldMu.Lock()
	held := l.holders[cl]&kind != 0
	if held {
		l.holders[cl] &^= kind
		if l.holders[cl] == 0 {
			delete(l.holders, cl)
		}
	}
	l.heldMu.Unlock()
	if held {
		l.mu.Unlock()
	}
}

const (
	retainHeldPacket = 1
	retainHeldWill   = 2
)

// OnPacketRead runs on the client's goroutine right before mochi
// processes pk; OnPacketProcessed right after, unless validation fails
// first, which is why the lock is only taken for packets that validate.
func (h *faultHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Subscribe:
		if pk.SubscribeValidate() == packets.CodeSuccess {
			h.retain.take(cl, retainHeldPacket)
		}
	case packets.Publish:
		if pk.FixedHeader.Retain && pk.PublishValidate(h.server.Options.Capabilities.TopicAliasMaximum) == packets.CodeSuccess {
			h.retain.take(cl, retainHeldPacket)
		}
	}
	return pk, nil
}

// OnPacketProcessed lets go of the lock OnPacketRead took.
func (h *faultHook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, err error) {
	h.retain.release(cl, retainHeldPacket)
}

// OnWillSent lets go of the lock OnWill took for a retained Will.
func (h *faultHook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	h.retain.release(cl, retainHeldWill)
}
