package main

import (
	"context"
	"fmt"
	"log"
	"slices"
	"time"
)

// runTargets checks the ratio targets with paired measurements: on
// each broker, at 64 bytes and each concurrency, raw paho, mqttrpc and
// mqttrpc without coalescing run one after the other in -rounds alternating
// rounds, so that a drift of the shared machine hits all three alike. It
// prints, per cell, the ratio of the summed calls/s to raw paho's and the
// median over the rounds of each round's p50 ratio.
func runTargets() error {
	stopProfile, err := startProfile()
	if err != nil {
		return err
	}
	defer stopProfile()
	impls := []string{implRaw, implMQTTRPC, implNoCoalesce}
	setups := []func() (*target, error){func() (*target, error) { return testbrokerTarget(impls) }}
	if bin := findMosquitto(); bin != "" && !*noMosquitto {
		setups = append(setups, func() (*target, error) { return mosquittoTarget(bin, true, impls) })
	}
	fmt.Printf("\npaired: %d alternating rounds of %v per implementation and cell, 64-byte payload\n\n", *rounds, *duration)
	fmt.Println("| broker | c | implementation | calls/s (sum of rounds) | × raw paho, calls/s | × raw paho, p50 (median of rounds) | CPU/call, median |")
	fmt.Println("|---|---:|---|---:|---:|---:|---:|")
	for _, setup := range setups {
		t, err := setup()
		if err != nil {
			return err
		}
		for _, c := range concurrencies {
			printPaired(t, c, pairedCell(t, c))
		}
		t.close()
	}
	return nil
}

// pairedCell runs t's impls in alternating rounds at concurrency c.
func pairedCell(t *target, c int) map[string][]result {
	payload := make([]byte, 64)
	out := map[string][]result{}
	for round := range *rounds {
		for _, im := range t.impls {
			call := im.call
			res := measure(c, *warmup, *duration, func(ctx context.Context, _ int) error { return call(ctx, payload) })
			log.Printf("%s/%s/64B/c%d round %d: %.0f calls/s p50 %v cpu/call %v errors %d", t.name, im.name, c, round+1, res.rate(), res.p50.Round(time.Microsecond), res.cpuPerCall().Round(time.Microsecond), res.errors)
			out[im.name] = append(out[im.name], res)
		}
	}
	return out
}

func printPaired(t *target, c int, res map[string][]result) {
	raw := res[implRaw]
	for _, im := range t.impls {
		rs := res[im.name]
		var sum, rawSum float64
		var p50Ratios []float64
		var cpus []time.Duration
		for i, r := range rs {
			sum += r.rate()
			rawSum += raw[i].rate()
			if raw[i].p50 > 0 {
				p50Ratios = append(p50Ratios, float64(r.p50)/float64(raw[i].p50))
			}
			cpus = append(cpus, r.cpuPerCall())
		}
		slices.Sort(p50Ratios)
		slices.Sort(cpus)
		fmt.Printf("| %s | %d | %s | %.0f | %.2f | %.2f | %v |\n", t.name, c, im.name, sum/float64(len(rs)), sum/rawSum, median(p50Ratios), cpus[len(cpus)/2].Round(time.Microsecond))
	}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return xs[len(xs)/2]
}
