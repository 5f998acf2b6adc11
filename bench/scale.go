package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqttrpc/mqttrpc/bench/benchv1"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

func runScale() error {
	if err := scaleInFlight(); err != nil {
		return err
	}
	return scaleServers()
}

// holdingServer holds every request whose payload starts with 1 until
// released, and answers the others at once.
type holdingServer struct {
	benchv1.UnimplementedEchoServer
	held    atomic.Int64
	release chan struct{}
}

func (h *holdingServer) Echo(ctx context.Context, req *benchv1.EchoRequest) (*benchv1.EchoResponse, error) {
	if p := req.GetPayload(); len(p) > 0 && p[0] == 1 {
		h.held.Add(1)
		select {
		case <-h.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &benchv1.EchoResponse{Payload: req.GetPayload()}, nil
}

// runHoldingServer is the child process of scaleInFlight: the broker and a
// server that holds the calls live here, so that the parent's heap is the
// client's alone. It prints "url URL", then "held N" once n calls are held,
// releases them when it reads "release" and exits at end of input.
func runHoldingServer(arg string) {
	var n int
	if _, err := fmt.Sscan(arg, &n); err != nil {
		log.Fatal(err)
	}
	b, err := testbroker.New()
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	conn, err := rpc.Dial(ctx, b.URL(), rpc.WithClientID("holding-server"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(context.Background())
	h := &holdingServer{release: make(chan struct{})}
	srv := rpc.NewServer(conn, rpc.WithServerID(benchServerID), rpc.WithConcurrency(n+16), rpc.WithMethodConcurrency(n+16), rpc.WithMaxTimeout(time.Minute))
	benchv1.RegisterEchoServer(srv, h)
	if err := srv.Start(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("url %s\n", b.URL())
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	reported := false
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				_ = srv.Shutdown(context.Background())
				return
			}
			if line == "release" {
				close(h.release)
			}
		case <-tick.C:
			if !reported && h.held.Load() >= int64(n) {
				fmt.Printf("held %d\n", h.held.Load())
				reported = true
			}
		}
	}
}

// scaleInFlight makes -scale-calls calls at once from one client to a
// server (in a child process) that holds them all, and reports the client's
// heap per call in flight.
func scaleInFlight() error {
	n := *scaleCalls
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, "-child", fmt.Sprint(n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	}()
	childLines := make(chan string, 4)
	go func() {
		defer close(childLines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			childLines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	next := func(prefix string, timeout time.Duration) (string, error) {
		select {
		case line, ok := <-childLines:
			if !ok {
				return "", fmt.Errorf("holding server exited")
			}
			if !strings.HasPrefix(line, prefix) {
				return "", fmt.Errorf("holding server said %q", line)
			}
			return strings.TrimSpace(strings.TrimPrefix(line, prefix)), nil
		case <-time.After(timeout):
			return "", fmt.Errorf("holding server did not say %q within %v", prefix, timeout)
		}
	}
	url, err := next("url ", setupTimeout)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := rpc.Dial(ctx, url, rpc.WithClientID("scale-caller"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	client := rpc.NewClient(conn)
	defer client.Close(context.Background())
	stub := benchv1.NewEchoClient(client, rpc.To(benchServerID))
	if _, err := stub.Echo(ctx, &benchv1.EchoRequest{}); err != nil { // subscribes the response topic
		return err
	}
	payload := make([]byte, 64)
	payload[0] = 1

	var before, during runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	goroutinesBefore := runtime.NumGoroutine()
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			callCtx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			if _, err := stub.Echo(callCtx, &benchv1.EchoRequest{Payload: payload}); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
		}()
	}
	if _, err := next("held ", time.Minute); err != nil {
		return err
	}
	allHeld := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&during)
	goroutinesDuring := runtime.NumGoroutine()
	release := time.Now()
	if _, err := io.WriteString(stdin, "release\n"); err != nil {
		return err
	}
	wg.Wait()
	drained := time.Since(release)

	heap := float64(during.HeapAlloc) - float64(before.HeapAlloc)
	stack := float64(during.StackInuse) - float64(before.StackInuse)
	fmt.Printf("\n## %d calls in flight from one client (testbroker and holding server in a child process)\n\n", n)
	fmt.Printf("- all %d sent and held by the server after %v; answered %v after release; failed: %d", n, allHeld.Round(time.Millisecond), drained.Round(time.Millisecond), failed.Load())
	if e := firstErr.Load(); e != nil {
		fmt.Printf(" (first: %v)", e)
	}
	fmt.Println()
	fmt.Printf("- client live heap per call in flight (after GC): %.0f B (%.1f MiB for %d)\n", heap/float64(n), heap/(1<<20), n)
	fmt.Printf("- plus goroutine stack per call (the caller's own goroutine, %d goroutines): %.0f B\n", goroutinesDuring-goroutinesBefore, stack/float64(n))
	if failed.Load() > 0 {
		return fmt.Errorf("%d of %d calls failed", failed.Load(), n)
	}
	return nil
}

// scaleServers starts -scale-servers device servers, each on its own
// connection, on one testbroker, then calls every one of them.
func scaleServers() error {
	n := *scaleSrv
	b, err := testbroker.New()
	if err != nil {
		return err
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	type device struct {
		conn *rpc.Conn
		srv  *rpc.Server
	}
	devices := make([]device, n)
	startTimes := make([]time.Duration, n)
	var runtimeBefore runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&runtimeBefore)
	const parallel = 32
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	var startErr atomic.Value
	begin := time.Now()
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			t0 := time.Now()
			id := fmt.Sprintf("device-%04d", i)
			conn, err := rpc.Dial(ctx, b.URL(), rpc.WithClientID(id))
			if err != nil {
				startErr.CompareAndSwap(nil, err)
				return
			}
			srv := rpc.NewServer(conn, rpc.WithServerID(id))
			benchv1.RegisterEchoServer(srv, echoServer{})
			if err := srv.Start(ctx); err != nil {
				startErr.CompareAndSwap(nil, err)
			}
			devices[i] = device{conn, srv}
			startTimes[i] = time.Since(t0)
		}()
	}
	wg.Wait()
	startup := time.Since(begin)
	defer func() {
		for _, d := range devices {
			if d.srv != nil {
				_ = d.srv.Shutdown(context.Background())
			}
			if d.conn != nil {
				_ = d.conn.Close(context.Background())
			}
		}
	}()
	if e := startErr.Load(); e != nil {
		return e.(error)
	}
	var runtimeAfter runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&runtimeAfter)
	if *memProfile != "" {
		f, err := os.Create(*memProfile)
		if err != nil {
			return err
		}
		err = pprof.WriteHeapProfile(f)
		_ = f.Close()
		if err != nil {
			return err
		}
	}

	conn, err := rpc.Dial(ctx, b.URL(), rpc.WithClientID("scale-fleet-caller"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	client := rpc.NewClient(conn)
	defer client.Close(context.Background())
	stub := benchv1.NewEchoClient(client)
	payload := make([]byte, 64)

	callAll := func(concurrency int) (time.Duration, []time.Duration, int) {
		lat := make([]time.Duration, n)
		var failed atomic.Int64
		sem := make(chan struct{}, concurrency)
		var wg sync.WaitGroup
		t0 := time.Now()
		for i := range n {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				s := time.Now()
				if _, err := stub.Echo(callCtx, &benchv1.EchoRequest{Payload: payload}, rpc.To(fmt.Sprintf("device-%04d", i))); err != nil {
					failed.Add(1)
					return
				}
				lat[i] = time.Since(s)
			}()
		}
		wg.Wait()
		total := time.Since(t0)
		slices.Sort(lat)
		return total, lat, int(failed.Load())
	}
	fmt.Printf("\n## %d device servers, each on its own connection, on one testbroker\n\n", n)
	slices.Sort(startTimes)
	fmt.Printf("- start-up (Dial + NewServer + Start, %d at a time): all %d in %v; per server p50 %v, p99 %v\n", parallel, n, startup.Round(time.Millisecond), percentile(startTimes, 0.5).Round(time.Microsecond), percentile(startTimes, 0.99).Round(time.Microsecond))
	fmt.Printf("- process heap per device (server connection, its broker session and its client) after GC: %.1f KiB\n", (float64(runtimeAfter.HeapAlloc)-float64(runtimeBefore.HeapAlloc))/float64(n)/1024)
	for _, c := range []int{1, 64, n} {
		total, lat, failed := callAll(c)
		answered := n - failed
		fmt.Printf("- one caller calls every device, %d at a time: %d/%d answered in %v (%.0f calls/s), p50 %v, p99 %v\n", c, answered, n, total.Round(time.Millisecond), float64(answered)/total.Seconds(), percentile(lat[failed:], 0.5).Round(time.Microsecond), percentile(lat[failed:], 0.99).Round(time.Microsecond))
		if failed > 0 {
			return fmt.Errorf("%d of %d devices did not answer", failed, n)
		}
	}
	return nil
}
