package testbroker

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// faultKind says what a fault rule does to a matching publish.
type faultKind int

const (
	faultDrop faultKind = iota + 1
	faultDelay
	faultDuplicate
	faultReject
)

func (k faultKind) String() string {
	switch k {
	case faultDrop:
		return "drop"
	case faultDelay:
		return "delay"
	case faultDuplicate:
		return "duplicate"
	case faultReject:
		return "reject"
	}
	return "unknown"
}

// faultRule is one fault registered by a test.
type faultRule struct {
	kind      faultKind
	filter    string
	remaining int // publishes left to affect; 0 means until cleared
	delay     time.Duration
	reason    byte
}

// faultTable holds the broker's fault rules. It outlives restarts.
type faultTable struct {
	mu    sync.Mutex
	rules []*faultRule
	count atomic.Int32 // len(rules), read without the lock on every publish
}

func (t *faultTable) add(rule faultRule) {
	if !validFilter(rule.filter) {
		panic(fmt.Sprintf("testbroker: invalid topic filter %q for a %s fault", rule.filter, rule.kind))
	}
	if rule.remaining < 0 {
		rule.remaining = 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rules = append(t.rules, &rule)
	t.count.Store(int32(len(t.rules)))
}

// take returns the oldest rule matching topic and counts it down, removing it
// when it is used up. At most one rule applies to a publish.
func (t *faultTable) take(topic string) (faultRule, bool) {
	if t.count.Load() == 0 {
		return faultRule{}, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, rule := range t.rules {
		if !matchTopic(rule.filter, topic) {
			continue
		}
		applied := *rule
		if rule.remaining > 0 {
			rule.remaining--
			if rule.remaining == 0 {
				t.rules = slices.Delete(t.rules, i, i+1)
				t.count.Store(int32(len(t.rules)))
			}
		}
		return applied, true
	}
	return faultRule{}, false
}

func (t *faultTable) clear() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rules = nil
	t.count.Store(0)
}

// DropPublishes makes the broker swallow the next n publishes whose topic
// matches filter (n <= 0: every one until ClearFaults). The sender gets its
// normal PUBACK or PUBREC, but no subscriber receives the message.
//
// Fault rules apply to publishes from network clients, oldest rule first, and
// at most one rule applies to a publish. An invalid filter panics.
func (b *Broker) DropPublishes(filter string, n int) {
	b.faults.add(faultRule{kind: faultDrop, filter: filter, remaining: n})
}

// DelayPublishes holds the next n publishes whose topic matches filter (n <= 0:
// every one until ClearFaults) for d before delivering them. The sender is
// acknowledged at once, and neither its connection nor other traffic waits.
// The delayed message keeps all its properties; its Message Expiry Interval
// is reduced by the time it was held, and a message that expires while held
// is discarded, as MQTT requires. Delayed messages still pending are lost when
// the broker closes or restarts.
func (b *Broker) DelayPublishes(filter string, n int, d time.Duration) {
	b.faults.add(faultRule{kind: faultDelay, filter: filter, remaining: n, delay: d})
}

// DuplicatePublishes delivers each of the next n publishes whose topic
// matches filter (n <= 0: every one until ClearFaults) twice to every
// matching subscriber. The second copy follows the first, like a redelivery:
// same properties, and the DUP flag set when it is delivered at QoS 1 or 2.
func (b *Broker) DuplicatePublishes(filter string, n int) {
	b.faults.add(faultRule{kind: faultDuplicate, filter: filter, remaining: n})
}

// RejectPublishes answers the next n publishes whose topic matches filter
// (n <= 0: every one until ClearFaults) with reason as the reason code of the
// PUBACK (QoS 1) or PUBREC (QoS 2). A reason of 0x80 or more is a failure and
// the message is not delivered (a QoS 0 message is dropped silently). A reason
// below 0x80, such as 0x10 "no matching subscribers", is delivered as usual;
// its ack also carries a reason string, without which mochi would leave the
// code out. Reason codes reach MQTT 5 clients only.
func (b *Broker) RejectPublishes(filter string, n int, reason byte) {
	b.faults.add(faultRule{kind: faultReject, filter: filter, remaining: n, reason: reason})
}

// ClearFaults removes every fault rule. Delayed messages already held are
// still delivered.
func (b *Broker) ClearFaults() {
	b.faults.clear()
}
