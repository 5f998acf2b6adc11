package main

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// callFunc makes one call; worker numbers the concurrent callers from 0.
type callFunc func(ctx context.Context, worker int) error

// result is what one measurement gives.
type result struct {
	calls    int
	errors   int
	elapsed  time.Duration
	p50      time.Duration
	p99      time.Duration
	p999     time.Duration
	timedOut bool          // at least one call ran into its deadline
	cpu      time.Duration // CPU time of the whole process (callers, servers, broker) in the measured window
}

// cpuPerCall is the process's CPU time per call: every part of the system
// under test runs in this process (except Mosquitto).
func (r result) cpuPerCall() time.Duration {
	if r.calls == 0 {
		return 0
	}
	return r.cpu / time.Duration(r.calls)
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (r result) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.calls) / r.elapsed.Seconds()
}

// callTimeout bounds every call of the closed loop.
const callTimeout = 2 * time.Second

// measure runs concurrency callers in a closed loop: each starts its next
// call when the previous one returns. Calls during warmup are not counted;
// then every call that ends within duration is. It returns when all callers
// have stopped (each within callTimeout of the end).
func measure(concurrency int, warmup, duration time.Duration, call callFunc) result {
	var recording, stop atomic.Bool
	var wg sync.WaitGroup
	lat := make([][]time.Duration, concurrency)
	errs := make([]int, concurrency)
	timeouts := make([]bool, concurrency)
	for w := range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			samples := make([]time.Duration, 0, 4096)
			for !stop.Load() {
				ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				start := time.Now()
				err := call(ctx, w)
				d := time.Since(start)
				if err != nil && ctx.Err() != nil {
					timeouts[w] = true
				}
				cancel()
				if !recording.Load() || stop.Load() {
					continue
				}
				if err != nil {
					errs[w]++
					continue
				}
				samples = append(samples, d)
			}
			lat[w] = samples
		}()
	}
	time.Sleep(warmup)
	recording.Store(true)
	begin, cpuBegin := time.Now(), processCPU()
	time.Sleep(duration)
	stop.Store(true)
	elapsed, cpu := time.Since(begin), processCPU()-cpuBegin
	wg.Wait()

	var all []time.Duration
	r := result{elapsed: elapsed, cpu: cpu}
	for w := range concurrency {
		all = append(all, lat[w]...)
		r.errors += errs[w]
		r.timedOut = r.timedOut || timeouts[w]
	}
	r.calls = len(all)
	slices.Sort(all)
	r.p50, r.p99, r.p999 = percentile(all, 0.50), percentile(all, 0.99), percentile(all, 0.999)
	return r
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
