package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mqttrpc/mqttrpc/bench/benchv1"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// -fleet: the fleet at scale on Mosquitto (docs/benchmarks.md, "Fleet").
// A child process runs -fleet-servers device servers, each on its own
// connection with presence on (the default) and a short keepalive; the
// parent is a new caller. It measures how long WatchFleet takes to list
// them all, how long a broadcast to all of them takes (it ends when the
// last expected one answered), and, after the child is stopped with
// SIGSTOP (connections silent, as after a power loss), how long until the
// fleet shows every one offline (the broker publishes their Wills once it
// misses 1.5 keepalives; a killed process's sockets are closed by its
// kernel, and the broker learns of it at once). A second child
// run, with presence off, gives the heap that presence adds per idle
// server.

var (
	fleetServers   = flag.Int("fleet-servers", 1000, "-fleet: device servers in the child process")
	fleetKeepAlive = flag.Duration("fleet-keepalive", 4*time.Second, "-fleet: the device connections' MQTT keepalive")
	fleetChild     = flag.String("fleet-child", "", "internal: run as the device process of -fleet: URL,presence")
)

func runFleet() error {
	bin := findMosquitto()
	if bin == "" || *noMosquitto {
		return errors.New("-fleet runs on Mosquitto: install it (apt-get install mosquitto)")
	}
	m, err := startMosquitto(bin, true)
	if err != nil {
		return err
	}
	defer m.stop()
	n := *fleetServers
	fmt.Printf("\nfleet: %d device servers on Mosquitto in a child process, keepalive %v\n\n", n, *fleetKeepAlive)

	heapWith, child, err := startFleetChild(m.url(), true)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn, err := rpc.Dial(ctx, m.url(), rpc.WithClientID("fleet-caller"))
	if err != nil {
		child.kill()
		return err
	}
	defer conn.Close(context.Background())

	t0 := time.Now()
	fleet, err := rpc.WatchFleet(ctx, conn)
	if err != nil {
		child.kill()
		return err
	}
	defer fleet.Close(context.Background())
	listed := len(fleet.Servers(benchv1.EchoName))
	listTime := time.Since(t0)
	fmt.Printf("| list: a new caller's WatchFleet until complete | %v | %d of %d servers listed |\n", listTime.Round(time.Millisecond), listed, n)

	client := rpc.NewClient(conn)
	defer client.Close(context.Background())
	stub := client.Stub(&benchv1.EchoServiceDesc, "Echo")
	for round := 1; round <= 3; round++ {
		bctx, bcancel := context.WithTimeout(ctx, 30*time.Second)
		t1 := time.Now()
		answered, failed := 0, 0
		var last time.Duration
		for r := range rpc.Broadcast[benchv1.EchoResponse](bctx, stub, &benchv1.EchoRequest{Payload: []byte("ping")}) {
			if r.Err != nil {
				failed++
				continue
			}
			answered++
			last = time.Since(t1)
		}
		total := time.Since(t1)
		bcancel()
		fmt.Printf("| broadcast %d: until the loop ended (deadline 30 s) | %v | %d answered, %d failed; last answer at %v |\n", round, total.Round(time.Millisecond), answered, failed, last.Round(time.Millisecond))
	}

	// Silence the devices (SIGSTOP: their sockets stay open and quiet, as
	// after a power loss or a cut link), then see them go offline: the
	// broker publishes each Will once it misses 1.5 keepalives.
	offline := make(chan time.Duration, 1)
	var firstOffline atomic.Int64
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	var killedAt atomic.Int64
	go func() {
		down := map[string]bool{}
		for ev, err := range fleet.Watch(wctx) {
			if err != nil {
				return
			}
			if ev.Kind == rpc.ServerOffline && strings.HasPrefix(ev.Server.ID, "fleet-dev-") && killedAt.Load() != 0 {
				down[ev.Server.ID] = true
				firstOffline.CompareAndSwap(0, int64(time.Since(time.Unix(0, killedAt.Load()))))
				if len(down) == n {
					offline <- time.Since(time.Unix(0, killedAt.Load()))
					return
				}
			}
		}
	}()
	killedAt.Store(time.Now().UnixNano())
	if err := child.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		child.kill()
		return err
	}
	select {
	case d := <-offline:
		fmt.Printf("| the device process silenced (SIGSTOP): until all %d show offline | %v (the first at %v) | 1.5 × keepalive = %v |\n", n, d.Round(time.Millisecond), time.Duration(firstOffline.Load()).Round(time.Millisecond), time.Duration(1.5*float64(*fleetKeepAlive)))
	case <-time.After(10 * *fleetKeepAlive):
		fmt.Printf("| the device process silenced (SIGSTOP) | not all offline within %v | %d of %d servers still online |\n", 10**fleetKeepAlive, len(fleet.Servers(benchv1.EchoName)), n)
	}
	wcancel()
	child.kill()

	heapWithout, child2, err := startFleetChild(m.url(), false)
	if err != nil {
		return err
	}
	child2.kill()
	fmt.Printf("| heap per idle device server (child, after GC) | presence on %.1f KiB, off %.1f KiB | presence adds %.2f KiB |\n",
		float64(heapWith)/float64(n)/1024, float64(heapWithout)/float64(n)/1024, float64(heapWith-heapWithout)/float64(n)/1024)
	return nil
}

// fleetChildProc is the device process.
type fleetChildProc struct{ cmd *exec.Cmd }

func (p *fleetChildProc) kill() {
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}

// startFleetChild starts the device process and waits until its servers
// are up; it returns the heap they take (HeapAlloc after GC, over the
// process's heap before them).
func startFleetChild(url string, presence bool) (uint64, *fleetChildProc, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, nil, err
	}
	cmd := exec.Command(self, "-fleet-child", fmt.Sprintf("%s,%v", url, presence), "-fleet-servers", fmt.Sprint(*fleetServers), "-fleet-keepalive", fleetKeepAlive.String())
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, nil, err
	}
	if err := cmd.Start(); err != nil {
		return 0, nil, err
	}
	p := &fleetChildProc{cmd: cmd}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var heap uint64
		if _, err := fmt.Sscanf(sc.Text(), "ready heap %d", &heap); err == nil {
			go func() {
				for sc.Scan() {
				}
			}()
			return heap, p, nil
		}
	}
	p.kill()
	return 0, nil, errors.New("the device process ended before its servers were up")
}

// runFleetChild is the device process: -fleet-servers servers, each on its
// own connection, then "ready heap N" and it waits to be killed.
func runFleetChild(arg string) {
	url, presenceArg, _ := strings.Cut(arg, ",")
	presence := presenceArg == "true"
	n := *fleetServers
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	conns := make([]*rpc.Conn, n)
	servers := make([]*rpc.Server, n)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	var failed atomic.Value
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			id := fmt.Sprintf("fleet-dev-%04d", i)
			conn, err := rpc.Dial(ctx, url, rpc.WithClientID(id), rpc.WithKeepAlive(*fleetKeepAlive), rpc.WithPresence(presence))
			if err != nil {
				failed.CompareAndSwap(nil, err)
				return
			}
			srv := rpc.NewServer(conn, rpc.WithServerID(id))
			benchv1.RegisterEchoServer(srv, echoServer{})
			if err := srv.Start(ctx); err != nil {
				failed.CompareAndSwap(nil, err)
				return
			}
			conns[i], servers[i] = conn, srv
		})
	}
	wg.Wait()
	if e := failed.Load(); e != nil {
		log.Fatal(e)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	fmt.Printf("ready heap %d\n", after.HeapAlloc-before.HeapAlloc)
	select {} // until killed
}
