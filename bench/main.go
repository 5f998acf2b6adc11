// Command bench measures mqttrpc against raw MQTT 5 request/response with
// paho.golang, paho's autopaho/extensions/rpc, NATS request-reply and
// gRPC-Go unary, all over loopback on this machine. Run it from this
// directory:
//
//	go run .                 # the full table (about 6 minutes)
//	go run . -quick          # a subset in under a minute, ending with "ratio c=16: X.XX"
//	go run . -targets        # the ratio targets, in alternating rounds (about 4 minutes)
//	go run . -scale          # 10,000 calls in flight; 1,000 servers on one broker
//	go run . -only 'testbroker/mqttrpc/64B/c16' -cpuprofile cpu.out
//
// Every call is a closed loop: each of c callers starts its next call when
// the previous one returned. Brokers and servers bind 127.0.0.1 only.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"regexp"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"time"
)

var (
	quick       = flag.Bool("quick", false, "run a subset in under a minute; the last line is `ratio c=16: X.XX`")
	targets     = flag.Bool("targets", false, "check the ratio targets: raw paho, mqttrpc and mqttrpc without coalescing in alternating rounds, 64 B, on each broker")
	rounds      = flag.Int("rounds", 5, "-targets: rounds per cell")
	scale       = flag.Bool("scale", false, "run the scale measurements instead of the table")
	fleetFlag   = flag.Bool("fleet", false, "run the fleet measurements on Mosquitto (presence at scale) instead of the table")
	cancelFlag  = flag.Bool("cancel", false, "measure how long a caller's cancel takes to end the handler's context (unary and stream) instead of the table")
	streams     = flag.Bool("streams", false, "run the stream throughput measurements (server and client streams next to raw paho) instead of the table")
	duration    = flag.Duration("duration", 3*time.Second, "measured time per row")
	warmup      = flag.Duration("warmup", 500*time.Millisecond, "unmeasured time before each row")
	cpuProfile  = flag.String("cpuprofile", "", "write a CPU profile of the measured rows to this file")
	traceFile   = flag.String("trace", "", "write an execution trace of the measured rows to this file (go tool trace; goroutine wake-ups per call)")
	only        = flag.String("only", "", "run only rows whose key (target/impl/payload/c, e.g. testbroker/mqttrpc/64B/c16; with -streams broker/impl/cell, e.g. mosquitto/mqttrpc/server stream 64 B) matches this regexp")
	noMosquitto = flag.Bool("no-mosquitto", false, "skip the Mosquitto rows")
	scaleCalls  = flag.Int("scale-calls", 10000, "-scale: calls in flight at once from one client")
	scaleSrv    = flag.Int("scale-servers", 1000, "-scale: device servers on one broker")
	memProfile  = flag.String("memprofile", "", "-scale: write a heap profile with the 1,000 servers up to this file; -streams: an allocation profile of the whole run")
	child       = flag.String("child", "", "internal: run as the holding server of -scale on this broker")
)

func main() {
	flag.Parse()
	log.SetFlags(0)
	if *child != "" {
		runHoldingServer(*child)
		return
	}
	if *fleetChild != "" {
		runFleetChild(*fleetChild)
		return
	}
	if *quick || *targets {
		// Shorter rows, unless the flags say otherwise.
		explicit := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
		if !explicit["duration"] {
			*duration = 2 * time.Second
		}
		if !explicit["warmup"] {
			*warmup = 300 * time.Millisecond
		}
	}
	printMachine()
	var err error
	switch {
	case *scale:
		err = runScale()
	case *streams:
		err = runStreams()
	case *cancelFlag:
		err = runCancel()
	case *fleetFlag:
		err = runFleet()
	case *quick:
		err = runQuick()
	case *targets:
		err = runTargets()
	default:
		err = runTable()
	}
	if err != nil {
		log.Fatal(err)
	}
}

var payloadSizes = []int{64, 4096}
var concurrencies = []int{1, 16, 256}

// row is one measurement.
type row struct {
	target, impl string
	payload, c   int
	res          result
	ratio        float64 // calls/s ÷ raw paho's on the reference target; 0 if none
	ratioRef     string
}

func (r row) key() string {
	return fmt.Sprintf("%s/%s/%s/c%d", r.target, r.impl, sizeName(r.payload), r.c)
}

func sizeName(n int) string {
	if n >= 1024 {
		return fmt.Sprintf("%dKiB", n/1024)
	}
	return fmt.Sprintf("%dB", n)
}

// impl is one way of making a call, connected and ready.
type impl struct {
	name  string
	call  func(ctx context.Context, payload []byte) error
	close func()
}

// target is where impls run: a broker, or plain loopback for the peers.
type target struct {
	name     string
	ratioRef string // target whose raw paho rows are the reference
	impls    []impl
	stop     func()
}

func (t *target) close() {
	for _, im := range t.impls {
		im.close()
	}
	if t.stop != nil {
		t.stop()
	}
}

// subset returns a target with the named impls of t, in that order; it
// shares t's connections (close t, not the subset).
func (t *target) subset(names ...string) *target {
	sub := &target{name: t.name, ratioRef: t.ratioRef}
	for _, n := range names {
		for _, im := range t.impls {
			if im.name == n {
				sub.impls = append(sub.impls, im)
			}
		}
	}
	return sub
}

// Impl names.
const (
	implRaw         = "raw paho"
	implRawProps    = "raw paho + mqttrpc's properties"
	implMQTTRPC     = "mqttrpc"
	implNoCoalesce  = "mqttrpc, no coalescing"
	implNoQuickAck  = "mqttrpc, no quickack"
	implNoTransport = "mqttrpc, no transport"
	implPahoRPC     = "paho extensions/rpc"
	implNATS        = "NATS request-reply"
	implGRPC        = "gRPC-Go unary"
)

// runCells measures every impl of t over payloads × concurrencies, raw paho
// first in each cell so that ratios compare neighbours in time.
func runCells(t *target, payloads, cs []int, refs map[string]float64, rows *[]row, filter *regexp.Regexp) {
	for _, size := range payloads {
		payload := make([]byte, size)
		for i := range payload {
			payload[i] = byte(i)
		}
		for _, c := range cs {
			for _, im := range t.impls {
				r := row{target: t.name, impl: im.name, payload: size, c: c}
				if filter != nil && !filter.MatchString(r.key()) {
					continue
				}
				call := im.call
				r.res = measure(c, *warmup, *duration, func(ctx context.Context, _ int) error { return call(ctx, payload) })
				refKey := fmt.Sprintf("%s/%d/%d", t.ratioRef, size, c)
				if im.name == implRaw {
					refs[refKey] = r.res.rate()
				}
				if ref := refs[refKey]; ref > 0 {
					r.ratio, r.ratioRef = r.res.rate()/ref, t.ratioRef
				}
				log.Printf("%-58s %7.0f calls/s  p50 %-9v p99 %-9v cpu/call %-7v errors %d", r.key(), r.res.rate(), r.res.p50.Round(time.Microsecond), r.res.p99.Round(time.Microsecond), r.res.cpuPerCall().Round(time.Microsecond), r.res.errors)
				*rows = append(*rows, r)
			}
		}
	}
}

func runTable() error {
	var filter *regexp.Regexp
	if *only != "" {
		var err error
		if filter, err = regexp.Compile(*only); err != nil {
			return err
		}
	}
	stopProfile, err := startProfile()
	if err != nil {
		return err
	}
	defer stopProfile()
	refs := map[string]float64{}
	var rows []row
	run := func(setup func() (*target, error)) error {
		t, err := setup()
		if err != nil {
			return err
		}
		if t == nil {
			return nil
		}
		defer t.close()
		runCells(t, payloadSizes, concurrencies, refs, &rows, filter)
		return nil
	}
	mqttImpls := []string{implRaw, implMQTTRPC, implNoCoalesce, implPahoRPC}
	testbrokerImpls := append(append([]string{implRaw, implRawProps}, mqttImpls[1:]...), implNoQuickAck, implNoTransport)
	if err := run(func() (*target, error) { return testbrokerTarget(testbrokerImpls) }); err != nil {
		return err
	}
	if err := run(func() (*target, error) { return peersTarget() }); err != nil {
		return err
	}
	if bin := findMosquitto(); bin != "" && !*noMosquitto {
		if err := run(func() (*target, error) { return mosquittoTarget(bin, true, append(mqttImpls, implNoQuickAck)) }); err != nil {
			return err
		}
		stockImpls := []string{implRaw, implMQTTRPC, implNoQuickAck}
		if err := run(func() (*target, error) { return mosquittoTarget(bin, false, stockImpls) }); err != nil {
			return err
		}
	} else {
		log.Printf("mosquitto not found or -no-mosquitto: its rows are skipped")
	}
	printTable(rows)
	return nil
}

// runQuick measures raw paho and mqttrpc with its default options at
// concurrency 16 with 64-byte payloads on the embedded broker in three
// alternating rounds (the ratio is of the sums), plus concurrency 1 and the
// two diagnostic rows once.
func runQuick() error {
	stopProfile, err := startProfile()
	if err != nil {
		return err
	}
	defer stopProfile()
	t, err := testbrokerTarget([]string{implRaw, implMQTTRPC, implRawProps, implNoCoalesce})
	if err != nil {
		return err
	}
	defer t.close()
	pair, extra := t.subset(implRaw, implMQTTRPC), t.subset(implRawProps, implNoCoalesce)
	refs := map[string]float64{}
	var rows []row
	runCells(pair, []int{64}, []int{1}, refs, &rows, nil)
	var raw, ours float64
	for range 3 {
		before := len(rows)
		runCells(pair, []int{64}, []int{16}, refs, &rows, nil)
		for _, r := range rows[before:] {
			switch r.impl {
			case implRaw:
				raw += r.res.rate()
			case implMQTTRPC:
				ours += r.res.rate()
			}
		}
	}
	runCells(extra, []int{64}, []int{16}, refs, &rows, nil)
	printTable(rows)
	fmt.Printf("ratio c=16: %.2f\n", ours/raw)
	return nil
}

func startProfile() (func(), error) {
	var stops []func()
	stop := func() {
		for _, f := range stops {
			f()
		}
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		stops = append(stops, func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		})
	}
	if *traceFile != "" {
		f, err := os.Create(*traceFile)
		if err != nil {
			stop()
			return nil, err
		}
		if err := trace.Start(f); err != nil {
			stop()
			return nil, err
		}
		stops = append(stops, func() {
			trace.Stop()
			_ = f.Close()
		})
	}
	return stop, nil
}

func printTable(rows []row) {
	fmt.Println()
	fmt.Println("| broker | implementation | payload | c | calls/s | p50 | p99 | p99.9 | × raw paho | CPU/call | errors |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		ratio := "—"
		if r.ratio > 0 {
			ratio = fmt.Sprintf("%.2f", r.ratio)
			if r.ratioRef != r.target {
				ratio += " (vs " + r.ratioRef + ")"
			}
		}
		errs := fmt.Sprint(r.res.errors)
		if r.res.timedOut {
			errs += " (timeouts)"
		}
		fmt.Printf("| %s | %s | %s | %d | %.0f | %s | %s | %s | %s | %s | %s |\n",
			r.target, r.impl, sizeName(r.payload), r.c, r.res.rate(), fmtDur(r.res.p50), fmtDur(r.res.p99), fmtDur(r.res.p999), ratio, fmtDur(r.res.cpuPerCall()), errs)
	}
	fmt.Println()
}

func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "—"
	case d < time.Millisecond:
		return fmt.Sprintf("%d µs", d.Microseconds())
	default:
		return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
	}
}

func printMachine() {
	fmt.Printf("machine: %d cores (GOMAXPROCS %d), %s, %s %s/%s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), cpuModel(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Printf("modules: %s\n", moduleVersions())
	if bin := findMosquitto(); bin != "" {
		fmt.Printf("mosquitto: %s\n", mosquittoVersion(bin))
	}
	fmt.Printf("duration %v per row after %v warmup\n", *duration, *warmup)
}
