package testbroker

import (
	"sync"
	"time"
)

// deliveryScheduler runs delayed deliveries on timers, so nothing sleeps in
// mochi's read loops, and cancels or waits for them when the broker stops.
type deliveryScheduler struct {
	mu      sync.Mutex
	stopped bool
	timers  map[*time.Timer]struct{}
	running sync.WaitGroup // one per scheduled delivery until it ran or was cancelled
}

func newDeliveryScheduler() *deliveryScheduler {
	return &deliveryScheduler{timers: make(map[*time.Timer]struct{})}
}

// after runs deliver once d has passed, unless the scheduler stops first.
func (s *deliveryScheduler) after(d time.Duration, deliver func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.running.Add(1)
	var timer *time.Timer
	timer = time.AfterFunc(d, func() {
		defer s.running.Done()
		s.mu.Lock()
		_, pending := s.timers[timer]
		delete(s.timers, timer)
		s.mu.Unlock()
		if pending {
			deliver()
		}
	})
	s.timers[timer] = struct{}{}
}

// stop cancels pending deliveries and waits for running ones to finish.
func (s *deliveryScheduler) stop() {
	s.mu.Lock()
	s.stopped = true
	for timer := range s.timers {
		if timer.Stop() {
			s.running.Done()
		}
		delete(s.timers, timer)
	}
	s.mu.Unlock()
	s.running.Wait()
}
