package rpc_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqttrpc/mqttrpc/internal/mosquittotest"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// Calls of every size, many at once, arrive intact through each transport
// setting on both brokers.
func TestTransportSettings(t *testing.T) {
	eachBroker(t, func(t *testing.T, b *broker) {
		for _, coalesce := range []bool{false, true} {
			for _, quickAck := range []bool{false, true} {
				t.Run(fmt.Sprintf("coalescing=%t,quickack=%t", coalesce, quickAck), func(t *testing.T) {
					opts := []rpc.ConnOption{rpc.WithWriteCoalescing(coalesce), rpc.WithTCPQuickAck(quickAck)}
					serverConn := dial(t, b.url, append(opts, rpc.WithClientID(uniqueID("server")))...)
					srv := rpc.NewServer(serverConn, rpc.WithServerID("dev-1"))
					srv.RegisterService(&echoDesc, &echoService{})
					if err := srv.Start(testCtx(t)); err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
					client := rpc.NewClient(dial(t, b.url, append(opts, rpc.WithClientID(uniqueID("caller")))...))
					t.Cleanup(func() { _ = client.Close(context.Background()) })

					var wg sync.WaitGroup
					for w := range 16 {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for i := range 20 {
								want := strings.Repeat(string(rune('a'+w)), (w*7919+i*104729)%70000)
								got, err := echo(testCtx(t), client, want, rpc.To("dev-1"))
								if err != nil {
									t.Error(err)
									return
								}
								if got != want {
									t.Errorf("echo of %d bytes came back as %d bytes", len(want), len(got))
									return
								}
							}
						}()
					}
					wg.Wait()
				})
			}
		}
	})
}

// On a Mosquitto with its stock configuration (Nagle's algorithm on), a
// call does not wait for a delayed ACK when both ends re-arm TCP_QUICKACK.
func TestQuickAckOnStockMosquitto(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("TCP_QUICKACK is Linux only")
	}
	mq := mosquittotest.Start(t, mosquittotest.WithNoDelay(false))
	median := func(t *testing.T, quickAck bool) (median time.Duration, slow int) {
		opt := rpc.WithTCPQuickAck(quickAck)
		conn := dial(t, mq.URL(), opt, rpc.WithClientID(uniqueID("server")))
		id := uniqueID("dev")
		srv := rpc.NewServer(conn, rpc.WithServerID(id))
		srv.RegisterService(&echoDesc, &echoService{})
		if err := srv.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
		client := rpc.NewClient(dial(t, mq.URL(), opt, rpc.WithClientID(uniqueID("caller"))))
		t.Cleanup(func() { _ = client.Close(context.Background()) })
		var took []time.Duration
		for range 21 {
			start := time.Now()
			if _, err := echo(testCtx(t), client, "x", rpc.To(id)); err != nil {
				t.Fatal(err)
			}
			took = append(took, time.Since(start))
		}
		for _, d := range took {
			if d > 30*time.Millisecond {
				slow++
			}
		}
		slices.Sort(took)
		return took[len(took)/2], slow
	}
	on, slowOn := median(t, true)
	off, slowOff := median(t, false)
	t.Logf("median call on stock Mosquitto: %v with TCP_QUICKACK (%d of 21 calls over 30 ms while both ends learn that the broker stalls), %v without (%d slow)", on, slowOn, off, slowOff)
	if on > 10*time.Millisecond {
		t.Fatalf("median call took %v with TCP_QUICKACK re-armed: the delayed ACK still holds answers back", on)
	}
	// Each end arms after the transport's stallsToArm (3) stalls; a call can
	// stall on both.
	if slowOn > 6 {
		t.Fatalf("%d of 21 calls took over 30 ms: the stall detection arms too late", slowOn)
	}
	if off < 30*time.Millisecond {
		t.Logf("without TCP_QUICKACK the median was %v: this Mosquitto does not stall (is Nagle off?)", off)
	}
}
