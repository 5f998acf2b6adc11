package rpc_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/internal/rpctest"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// Many device servers on Mosquitto, each on its own connection: a caller
// that comes afterwards lists all of them within 1 s of asking, and a
// broadcast to them ends when the last one has answered, long before its
// deadline. 800, not the 1,000 of issue 16: a device (connection and
// server) takes 7 goroutines and 2 more while it answers, and the race
// detector allows 8,128 in the process; for that the test does not run in
// parallel with others. (1,000 passed when tried, at 7,004 goroutines.)
func TestFleetScaleManyServers(t *testing.T) {
	b := newMosquitto(t)
	const devices = 800
	ids := map[string]bool{}
	prefix := uniqueID("scale")
	for i := range devices {
		id := fmt.Sprintf("%s-%d", prefix, i)
		serveOn(t, dial(t, b.url, rpc.WithClientID(id)), rpc.WithServerID(id))
		ids[id] = true
	}
	const conns, perConn = 1, devices
	t.Logf("%d goroutines with %d device servers", runtime.NumGoroutine(), devices)

	conn := dial(t, b.url, rpc.WithClientID(uniqueID("caller")))
	start := time.Now()
	fleet, err := rpc.WatchFleet(testCtx(t), conn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fleet.Close(context.Background()) })
	listed := fleet.Servers(echoServiceName)
	took := time.Since(start)
	t.Logf("a new caller listed %d servers in %v", len(listed), took)
	if len(listed) != conns*perConn {
		t.Fatalf("listed %d servers, want %d", len(listed), conns*perConn)
	}
	for _, si := range listed {
		if !ids[si.ID] || !si.Online {
			t.Fatalf("unexpected %+v", si)
		}
	}
	if took > time.Second {
		t.Errorf("listing took %v, want at most 1 s", took)
	}

	client := rpc.NewClient(conn)
	t.Cleanup(func() { _ = client.Close(context.Background()) })
	start = time.Now()
	answered := map[string]bool{}
	for r := range rpc.Broadcast[wrapperspb.StringValue](shortCtx(t, 30*time.Second), client.Stub(&echoDesc, "Echo"), wrapperspb.String("all")) {
		if r.Err != nil {
			t.Fatalf("reply %+v", r)
		}
		answered[r.ServerID] = true
	}
	took = time.Since(start)
	t.Logf("a broadcast to %d servers ended after %v (deadline 30 s)", len(answered), took)
	if len(answered) != conns*perConn {
		t.Fatalf("%d answers, want %d", len(answered), conns*perConn)
	}
	if took > 15*time.Second {
		t.Errorf("the broadcast took %v: it should end when the last server answered", took)
	}
}

// 100 devices lose their network at once (no FIN, no RST: the link goes
// silent). Mosquitto notices at its keepalive timeout, 1.5 × keepalive,
// publishes their Wills, and a caller sees all 100 offline.
func TestFleetScaleSilentLossGoesOffline(t *testing.T) {
	t.Parallel()
	b := newMosquitto(t)
	const n = 100
	const keepAlive = 2 * time.Second
	_, fleet := watchFleet(t, b.url)
	proxy := rpctest.NewProxy(t, b.url)
	want := map[string]bool{}
	for i := range n {
		id := fmt.Sprintf("%s-%d", uniqueID("silent"), i)
		conn := dial(t, proxy.URL(), rpc.WithClientID(id), rpc.WithKeepAlive(keepAlive))
		srv := rpc.NewServer(conn, rpc.WithServerID(id))
		srv.RegisterService(&echoDesc, &echoService{})
		if err := srv.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		want[id] = true
	}
	awaitOnlineSet(t, fleet, want)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	events := fleet.Watch(ctx)
	proxy.Freeze()
	start := time.Now()
	offline := map[string]bool{}
	for ev, err := range events {
		if err != nil {
			t.Fatal(err)
		}
		if ev.Kind == rpc.ServerOffline && want[ev.Server.ID] {
			offline[ev.Server.ID] = true
			if len(offline) == n {
				break
			}
		}
	}
	took := time.Since(start)
	t.Logf("%d of %d servers offline %v after their link went silent (keepalive %v)", len(offline), n, took, keepAlive)
	if len(offline) != n {
		t.Fatalf("%d of %d offline within 20 s", len(offline), n)
	}
	// Mosquitto 2.0 notices a silent client at 1.5 × keepalive after its
	// last packet, checked on a timer of about a second; here all 100 were
	// offline after about 2 × keepalive (docs/benchmarks.md).
	if limit := 2*keepAlive + time.Second; took > limit {
		t.Errorf("all offline after %v, want within 2 × keepalive + 1 s = %v", took, limit)
	}
}

// 100 device processes killed at once (kill -9): their kernels close the
// sockets, no DISCONNECT is sent, and the broker publishes their Wills as
// soon as it reads the end of each connection. Issue 16 asks that all 100
// show offline within 1.5 × keepalive; they do at once. The proxy resets
// every connection (as a killed process's kernel does with data unread)
// and refuses new ones, so the devices' reconnects cannot bring them back.
func TestFleetScaleKilledGoOffline(t *testing.T) {
	t.Parallel()
	b := newMosquitto(t)
	const n = 100
	const keepAlive = 2 * time.Second
	_, fleet := watchFleet(t, b.url)
	proxy := rpctest.NewProxy(t, b.url)
	want := map[string]bool{}
	for i := range n {
		id := fmt.Sprintf("%s-%d", uniqueID("killed"), i)
		conn := dial(t, proxy.URL(), rpc.WithClientID(id), rpc.WithKeepAlive(keepAlive))
		srv := rpc.NewServer(conn, rpc.WithServerID(id))
		srv.RegisterService(&echoDesc, &echoService{})
		if err := srv.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		want[id] = true
	}
	awaitOnlineSet(t, fleet, want)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	events := fleet.Watch(ctx)
	proxy.Refuse(true)
	start := time.Now()
	if cut := proxy.CutAll(); cut != n {
		t.Fatalf("cut %d connections, want %d", cut, n)
	}
	offline := map[string]bool{}
	for ev, err := range events {
		if err != nil {
			t.Fatal(err)
		}
		if want[ev.Server.ID] {
			switch ev.Kind {
			case rpc.ServerOffline:
				offline[ev.Server.ID] = true
			case rpc.ServerOnline:
				// The Watch begins with the servers it knows (each once);
				// one seen offline and then online has come back.
				if offline[ev.Server.ID] {
					t.Fatalf("%s came back online after its process was killed", ev.Server.ID)
				}
			}
			if len(offline) == n {
				break
			}
		}
	}
	took := time.Since(start)
	t.Logf("%d of %d killed servers offline after %v (keepalive %v)", len(offline), n, took.Round(time.Millisecond), keepAlive)
	if len(offline) != n {
		t.Fatalf("%d of %d offline within 20 s", len(offline), n)
	}
	if limit := keepAlive * 3 / 2; took > limit {
		t.Errorf("all offline after %v, want within 1.5 × keepalive = %v (the broker should publish the Wills when the connections close)", took, limit)
	}
	// The devices try to reconnect (backoff from 100 ms): after as many
	// refused attempts as devices, they are all still offline.
	waitFor(t, func() bool { return proxy.Refused() >= n })
	for id := range want {
		if si, ok := fleet.Server(id); !ok || si.Online {
			t.Errorf("after the kill, Server(%s) = %+v, %t; want it listed offline", id, si, ok)
		}
	}
	if got := len(fleet.Servers(echoServiceName)); got != 0 {
		t.Errorf("%d servers online after the kill, want none", got)
	}
}

// awaitOnlineSet waits until every id of want is online in the fleet.
func awaitOnlineSet(t *testing.T, f *rpc.Fleet, want map[string]bool) {
	t.Helper()
	var ids []string
	for id := range want {
		ids = append(ids, id)
	}
	awaitOnline(t, f, ids...)
}
