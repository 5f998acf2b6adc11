package rpc

// The server's workers: a request runs on a worker, which goes on with
// the requests queued meanwhile, and parks when there are none, to be
// handed the next one (admit in dispatch.go starts or hands over).

// methodLimit is how many handlers of one method may run at once, so that
// a slow method leaves workers for the others.
func (s *Server) methodLimit() int {
	if s.cfg.methodConcurrency > 0 {
		return s.cfg.methodConcurrency
	}
	return max(1, s.cfg.concurrency-s.cfg.concurrency/4)
}

// maxParkedWorkers bounds the workers that wait for the next request
// once they have none: enough for the calls in flight of a busy
// connection, few enough that an idle server holds little memory (a
// parked worker keeps the stack it grew).
const maxParkedWorkers = 16

// work runs req, then queued requests, until none may run; then it
// parks, and runs the next request it is handed.
func (s *Server) work(req *request) {
	defer s.workers.Done()
	for req != nil {
		s.serve(req)
		s.mu.Lock()
		req.method.running--
		req = s.nextQueued()
		park := false
		if req == nil {
			s.running--
			if s.running == 0 && s.idle != nil {
				close(s.idle)
			}
			if park = s.mayPark(); park {
				s.parked++
			}
		} else {
			req.method.running++
		}
		s.mu.Unlock()
		if park {
			req = s.park()
		}
	}
}

// mayPark reports whether a worker without requests may wait for the
// next. s.mu is held.
func (s *Server) mayPark() bool {
	// A Conn without a lifetime is one of the tests that run the request
	// path without a broker: nothing would end a parked worker.
	return !s.stopping && s.parked < min(maxParkedWorkers, s.cfg.concurrency) && s.conn != nil && s.conn.ctx != nil
}

// park waits for a request handed to this worker (counted in s.parked),
// and returns nil when the server stops taking calls or its connection
// closes first.
func (s *Server) park() *request {
	select {
	case req := <-s.handoff:
		return req
	case <-s.stopParks:
	case <-s.conn.ctx.Done():
	}
	// A request handed over before the stop is still served: each one
	// in the channel has a parked worker counted for it.
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case req := <-s.handoff:
		return req
	default:
		s.parked--
		return nil
	}
}

// stopTakingCalls marks the server stopping and ends its parked workers.
// s.mu is held.
func (s *Server) stopTakingCalls() {
	if !s.stopping {
		s.stopping = true
		close(s.stopParks)
	}
}

// nextQueued takes the next request round robin over the methods with
// waiting requests, skipping methods at their limit. s.mu is held.
func (s *Server) nextQueued() *request {
	limit := s.methodLimit()
	for i := range s.ready {
		idx := (s.nextReady + i) % len(s.ready)
		m := s.ready[idx]
		if m.running >= limit {
			continue
		}
		req := m.queue[0]
		m.queue[0] = nil
		m.queue = m.queue[1:]
		s.queued--
		if len(m.queue) == 0 {
			m.queue = nil
			s.ready = append(s.ready[:idx], s.ready[idx+1:]...)
			s.nextReady = idx
		} else {
			s.nextReady = idx + 1
		}
		return req
	}
	return nil
}
