package rpc

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// The early-answer queue is bounded: with every worker stuck on a broker
// that does not acknowledge, it takes earlyAnswerLimit answers (and the
// ones its workers hold) and refuses the next without blocking; once the
// workers are free, every answer it took is published, and close waits
// for them. An answer whose deadline passed while
// queued is not published.
func TestEarlyAnswersOverflow(t *testing.T) {
	var q earlyAnswers
	release := make(chan struct{})
	var ran, late atomic.Int64
	deadline := time.Now().Add(time.Hour)
	accepted := 0
	for ; ; accepted++ {
		ok := q.add(context.Background(), earlyAnswer{deadline: deadline, answer: func(ctx context.Context) {
			<-release
			ran.Add(1)
		}})
		if !ok {
			break
		}
		if accepted > earlyAnswerLimit+earlyAnswerWorkers {
			t.Fatalf("the queue took %d answers; limit %d with %d workers", accepted, earlyAnswerLimit, earlyAnswerWorkers)
		}
	}
	if accepted < earlyAnswerLimit {
		t.Fatalf("the queue refused answer %d; it should take %d", accepted, earlyAnswerLimit)
	}
	close(release)
	q.close()
	if got := ran.Load(); got != int64(accepted) {
		t.Fatalf("%d answers published of %d taken", got, accepted)
	}
	if q.add(context.Background(), earlyAnswer{deadline: deadline, answer: func(context.Context) {}}) {
		t.Fatal("a closed queue took an answer")
	}

	var q2 earlyAnswers
	q2.add(context.Background(), earlyAnswer{deadline: time.Now().Add(-time.Millisecond), answer: func(context.Context) { late.Add(1) }})
	q2.close()
	if late.Load() != 0 {
		t.Fatal("an answer whose deadline had passed was published")
	}
}
