package rpc

import (
	"context"
	"sync"
	"time"
)

// Early answers are the ones a server gives without running a handler:
// rejections (overload, shutdown, too large), Unimplemented, and cached
// answers to duplicates. They must not wait behind the handlers, and they
// must not block paho's receive goroutine, so they go through a queue of
// their own, drained by a few goroutines. A burst of rejections is the
// moment a server most needs to shed load cheaply: a queued answer holds no
// request payload, and the queue is bounded.
const (
	earlyAnswerLimit   = 8192 // queued early answers; past it a request goes unanswered (counted)
	earlyAnswerWorkers = 16   // goroutines publishing early answers, each waiting for its PUBACK
)

// earlyAnswer is one queued early answer.
type earlyAnswer struct {
	deadline time.Time // the answer is worthless after it
	answer   func(ctx context.Context)
}

// earlyAnswers is the server's queue of early answers.
type earlyAnswers struct {
	mu      sync.Mutex
	queue   []earlyAnswer // FIFO; head at index 0
	workers int           // goroutines draining the queue
	closed  bool          // Shutdown has begun waiting for the workers
	wg      sync.WaitGroup
}

// add queues an answer and starts a worker if fewer than the limit run. It
// reports false, queueing nothing, when the queue is full or closed. It
// never blocks and may be called with Server.mu held.
func (q *earlyAnswers) add(baseCtx context.Context, a earlyAnswer) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || len(q.queue) >= earlyAnswerLimit {
		return false
	}
	q.queue = append(q.queue, a)
	if q.workers < earlyAnswerWorkers {
		q.workers++
		q.wg.Add(1)
		go q.work(baseCtx)
	}
	return true
}

// work publishes queued answers until the queue is empty.
func (q *earlyAnswers) work(baseCtx context.Context) {
	defer q.wg.Done()
	for {
		q.mu.Lock()
		if len(q.queue) == 0 {
			q.workers--
			q.queue = nil // let a burst's backing array go
			q.mu.Unlock()
			return
		}
		a := q.queue[0]
		q.queue[0] = earlyAnswer{}
		q.queue = q.queue[1:]
		q.mu.Unlock()
		if time.Now().Before(a.deadline) {
			ctx, cancel := context.WithDeadline(baseCtx, a.deadline)
			a.answer(ctx)
			cancel()
		}
	}
}

// close refuses new answers and waits for the queued ones to be published
// (each bounded by its deadline and by the server's base context).
func (q *earlyAnswers) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.wg.Wait()
}
