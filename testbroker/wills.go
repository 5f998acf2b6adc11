package testbroker

import (
	"fmt"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// willHolds are the HoldWills rules of a broker. They outlive restarts.
type willHolds struct {
	mu    sync.Mutex
	holds []*willHold
}

// willHold keeps the Wills on topics matching filter until released.
type willHold struct {
	filter   string
	released chan struct{}
	once     sync.Once
	held     chan string // the topic of each Will held, for the test
}

// wait blocks until the hold is released if topic matches a hold.
func (w *willHolds) wait(topic string) {
	w.mu.Lock()
	var hold *willHold
	for _, h := range w.holds {
		if matchTopic(h.filter, topic) {
			hold = h
			break
		}
	}
	w.mu.Unlock()
	if hold == nil {
		return
	}
	select {
	case hold.held <- topic:
	default:
	}
	<-hold.released
}

// HoldWills holds back the Will messages on topics matching filter: a
// client whose connection ends without DISCONNECT has its Will published
// only once release is called, as a broker that notices a dead connection
// late (a half-open connection, a keepalive timeout) publishes it long
// after the client may have reconnected. held receives the topic of each
// Will as it is held (it keeps the first 16 unread). Release is
// idempotent; Close releases nothing, so call release before the test
// ends (t.Cleanup). An invalid filter panics.
func (b *Broker) HoldWills(filter string) (held <-chan string, release func()) {
	if !validFilter(filter) {
		panic(fmt.Sprintf("testbroker: invalid topic filter %q for HoldWills", filter))
	}
	h := &willHold{filter: filter, released: make(chan struct{}), held: make(chan string, 16)}
	b.wills.mu.Lock()
	b.wills.holds = append(b.wills.holds, h)
	b.wills.mu.Unlock()
	return h.held, func() {
		h.once.Do(func() {
			b.wills.mu.Lock()
			for i, x := range b.wills.holds {
				if x == h {
					b.wills.holds = append(b.wills.holds[:i], b.wills.holds[i+1:]...)
					break
				}
			}
			b.wills.mu.Unlock()
			close(h.released)
		})
	}
}

// OnWill holds a Will while a HoldWills rule matches its topic. mochi
// calls it on the goroutine of the client that has gone.
func (h *faultHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	h.wills.wait(will.TopicName)
	if will.Retain && will.WillDelayInterval == 0 {
		h.retain.take(cl, retainHeldWill) // released by OnWillSent (retainlock.go)
	}
	return will, nil
}
