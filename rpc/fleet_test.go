package rpc_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/internal/rpctest"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// startDevices starts n echo servers with IDs prefix-0…, each on its own
// connection, and returns their IDs.
func startDevices(t *testing.T, url, prefix string, n int, svc *echoService, opts ...rpc.ServerOption) []string {
	t.Helper()
	var ids []string
	for i := range n {
		id := uniqueID(prefix + "-" + string(rune('a'+i)))
		conn := dial(t, url, rpc.WithClientID(id))
		srv := rpc.NewServer(conn, append([]rpc.ServerOption{rpc.WithServerID(id)}, opts...)...)
		srv.RegisterService(&echoDesc, svc)
		if err := srv.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
		ids = append(ids, id)
	}
	return ids
}

// awaitOnline waits until the fleet lists every id online.
func awaitOnline(t *testing.T, f *rpc.Fleet, ids ...string) {
	t.Helper()
	missing := map[string]bool{}
	for _, id := range ids {
		if si, ok := f.Server(id); !ok || !si.Online {
			missing[id] = true
		}
	}
	if len(missing) == 0 {
		return
	}
	watchUntil(t, f, func(ev rpc.FleetEvent) bool {
		if ev.Kind == rpc.ServerOnline {
			delete(missing, ev.Server.ID)
		}
		return len(missing) == 0
	})
}

// Listing: every online server, or those of one service, with what their
// records say.
func TestFleetLists(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		prefix := uniqueID("list")
		ids := startDevices(t, b.url, prefix, 3, &echoService{}, rpc.WithLabels(map[string]string{"site": "north"}))
		gw := dial(t, b.url, rpc.WithClientID(uniqueID("gw")))
		serveOn(t, gw, rpc.WithGateway())
		// A caller that comes after the servers: WatchFleet returns with
		// all of them, from the retained records.
		_, fleet := watchFleet(t, b.url)
		all := fleet.Servers("")
		if len(all) != 4 {
			t.Fatalf("Servers(\"\") = %d servers, want 4: %+v", len(all), all)
		}
		var got []string
		for _, si := range fleet.Servers(echoServiceName) {
			if si.ID != "" {
				got = append(got, si.ID)
				if si.Labels["site"] != "north" || !si.Online || si.Health != rpc.HealthServing || !si.Serves(echoServiceName) {
					t.Errorf("server %+v", si)
				}
			} else if !si.Gateway {
				t.Errorf("server without ID that is no gateway: %+v", si)
			}
		}
		if !slices.Equal(got, ids) {
			t.Errorf("IDs = %v, want %v", got, ids)
		}
		if n := len(fleet.Servers("no.such.Service")); n != 0 {
			t.Errorf("Servers of an unknown service = %d", n)
		}
		if !fleet.Complete() {
			t.Error("not complete")
		}
	})
}

// Fail fast: with presence known complete, a call to a target that is
// offline or that nobody lists fails at once with Unavailable, nothing
// published; a call to an online target goes through.
func TestFleetFailFast(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		svc := &echoService{}
		ids := startDevices(t, b.url, uniqueID("ff"), 1, svc)
		conn, fleet := watchFleet(t, b.url)
		awaitOnline(t, fleet, ids...)
		client := rpc.NewClient(conn)
		t.Cleanup(func() { _ = client.Close(context.Background()) })

		if got, err := echo(testCtx(t), client, "hi", rpc.To(ids[0])); err != nil || got != "hi" {
			t.Fatalf("call to an online server: %q, %v", got, err)
		}
		start := time.Now()
		err := func() error {
			_, err := echo(shortCtx(t, 5*time.Second), client, "x", rpc.To("nobody-here"))
			return err
		}()
		wantCode(t, err, rpc.Unavailable)
		if d := time.Since(start); d > time.Second {
			t.Errorf("the call to an unknown target took %v; want it at once", d)
		}

		// An offline server: shut down, its record says so.
		offName := uniqueID("off")
		off := serveOn(t, dial(t, b.url, rpc.WithClientID(offName)), rpc.WithServerID(offName))
		awaitOnline(t, fleet, offName)
		if err := off.Shutdown(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		before := time.Now()
		ev := watchUntil(t, fleet, isEvent(rpc.ServerOffline, offName))
		// The event says when the server went offline (its Shutdown's
		// record), as a listing would.
		if ev.Server.Since.IsZero() || ev.Server.Since.After(time.Now()) || ev.Server.Since.Before(before.Add(-time.Minute)) {
			t.Errorf("offline event's Since = %v, want the time of the Shutdown (about %v)", ev.Server.Since, before)
		}
		calls := svc.calls.Load()
		start = time.Now()
		err = func() error { _, err := echo(shortCtx(t, 5*time.Second), client, "x", rpc.To(offName)); return err }()
		rpcErr := wantCode(t, err, rpc.Unavailable)
		if d := time.Since(start); d > time.Second || !contains(rpcErr.Message(), "offline") {
			t.Errorf("call to an offline server: %v after %v", err, d)
		}
		if svc.calls.Load() != calls {
			t.Error("a handler ran")
		}

		// WithFailFast(false): the call is published and waits.
		plain := rpc.NewClient(conn, rpc.WithFailFast(false))
		t.Cleanup(func() { _ = plain.Close(context.Background()) })
		_, err = echo(shortCtx(t, 300*time.Millisecond), plain, "x", rpc.To("nobody-here"))
		if b.mq == nil {
			wantCode(t, err, rpc.DeadlineExceeded) // mochi never answers PUBACK 0x10
		} else {
			wantCode(t, err, rpc.Unavailable) // Mosquitto does
		}
	})
}

// A gateway serves targets that presence does not list: calls to them are
// not failed.
func TestFleetFailFastSparesGateways(t *testing.T) {
	t.Parallel()
	b := newTestbroker(t)
	gw := dial(t, b.url, rpc.WithClientID(uniqueID("gw")))
	serveOn(t, gw, rpc.WithGateway())
	conn, fleet := watchFleet(t, b.url)
	if n := len(fleet.Servers(echoServiceName)); n != 1 {
		t.Fatalf("servers = %d", n)
	}
	client := rpc.NewClient(conn)
	t.Cleanup(func() { _ = client.Close(context.Background()) })
	if got, err := echo(testCtx(t), client, "via gateway", rpc.To("device-behind-gw")); err != nil || got != "via gateway" {
		t.Fatalf("call through the gateway: %q, %v", got, err)
	}
}

// A broadcast with presence ends as soon as every online member answered,
// long before its deadline; typed replies name their servers.
func TestBroadcastEndsWhenAllAnswered(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		ids := startDevices(t, b.url, uniqueID("bc"), 5, &echoService{})
		conn, fleet := watchFleet(t, b.url)
		awaitOnline(t, fleet, ids...)
		client := rpc.NewClient(conn)
		t.Cleanup(func() { _ = client.Close(context.Background()) })
		stub := client.Stub(&echoDesc, "Echo")

		start := time.Now()
		var got []string
		for r := range rpc.Broadcast[wrapperspb.StringValue](shortCtx(t, 10*time.Second), stub, wrapperspb.String("all")) {
			if r.Err != nil || r.Response.GetValue() != "all" {
				t.Fatalf("reply %+v", r)
			}
			got = append(got, r.ServerID)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("the broadcast took %v; want it to end when the 5 servers answered", d)
		}
		slices.Sort(got)
		if !slices.Equal(got, ids) {
			t.Fatalf("replies from %v, want %v", got, ids)
		}
	})
}

// The members that did not answer are reported at the deadline; FirstN
// and Quorum end earlier.
func TestBroadcastReportsMissingMembers(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		release := make(chan struct{})
		slow := &echoService{handle: func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil, ctx.Err()
		}}
		fast := startDevices(t, b.url, uniqueID("fast"), 3, &echoService{})
		silent := startDevices(t, b.url, uniqueID("slow"), 1, slow)
		t.Cleanup(func() { close(release) }) // before the servers shut down
		conn, fleet := watchFleet(t, b.url)
		awaitOnline(t, fleet, append(slices.Clone(fast), silent...)...)
		client := rpc.NewClient(conn)
		t.Cleanup(func() { _ = client.Close(context.Background()) })
		stub := client.Stub(&echoDesc, "Echo")

		var ok, missing []string
		start := time.Now()
		for r := range rpc.Broadcast[wrapperspb.StringValue](shortCtx(t, time.Second), stub, wrapperspb.String("x")) {
			switch {
			case r.Err == nil:
				ok = append(ok, r.ServerID)
			case rpc.CodeOf(r.Err) == rpc.DeadlineExceeded:
				missing = append(missing, r.ServerID)
			default:
				t.Errorf("reply %+v", r)
			}
		}
		if len(ok) != 3 || !slices.Equal(missing, silent) {
			t.Fatalf("ok %v, missing %v; want 3 ok and %v missing", ok, missing, silent)
		}
		if d := time.Since(start); d < 900*time.Millisecond {
			t.Errorf("ended after %v, before the deadline", d)
		}

		n := 0
		for r := range rpc.Broadcast[wrapperspb.StringValue](shortCtx(t, 10*time.Second), stub, wrapperspb.String("x"), rpc.FirstN(2)) {
			if r.Err != nil {
				t.Errorf("FirstN reply %+v", r)
			}
			n++
		}
		if n != 2 {
			t.Errorf("FirstN(2) yielded %d", n)
		}
		start = time.Now()
		n = 0
		for r := range rpc.Broadcast[wrapperspb.StringValue](shortCtx(t, 10*time.Second), stub, wrapperspb.String("x"), rpc.Quorum(3)) {
			if r.Err != nil {
				t.Errorf("Quorum reply %+v", r)
			}
			n++
		}
		if n != 3 || time.Since(start) > 5*time.Second {
			t.Errorf("Quorum(3) yielded %d after %v", n, time.Since(start))
		}
	})
}

// An expected member that goes offline during the broadcast is reported
// Unavailable at once, and the broadcast does not wait for it.
func TestBroadcastMemberGoesOffline(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		entered := make(chan struct{}, 1)
		hang := &echoService{handle: func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			select {
			case entered <- struct{}{}:
			default:
			}
			<-ctx.Done()
			return nil, ctx.Err()
		}}
		proxy := rpctest.NewProxy(t, b.url)
		id := uniqueID("leaving")
		conn := dial(t, proxy.URL(), rpc.WithClientID(id))
		srv := rpc.NewServer(conn, rpc.WithServerID(id))
		srv.RegisterService(&echoDesc, hang)
		if err := srv.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
		callerConn, fleet := watchFleet(t, b.url)
		awaitOnline(t, fleet, id)
		client := rpc.NewClient(callerConn)
		t.Cleanup(func() { _ = client.Close(context.Background()) })

		go func() {
			<-entered // the server has the broadcast: its connection dies now
			proxy.CutAll()
		}()
		start := time.Now()
		var replies []rpc.Reply[wrapperspb.StringValue]
		for r := range rpc.Broadcast[wrapperspb.StringValue](shortCtx(t, 10*time.Second), client.Stub(&echoDesc, "Echo"), wrapperspb.String("x")) {
			replies = append(replies, r)
		}
		if len(replies) != 1 || replies[0].ServerID != id || rpc.CodeOf(replies[0].Err) != rpc.Unavailable {
			t.Fatalf("replies = %+v, want one Unavailable from %s", replies, id)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("the broadcast took %v", d)
		}
	})
}

// Without presence a broadcast behaves as before: it collects answers
// until its deadline.
func TestBroadcastWithoutPresenceWaitsForDeadline(t *testing.T) {
	t.Parallel()
	b := newTestbroker(t)
	startDevices(t, b.url, uniqueID("np"), 2, &echoService{})
	client := newClient(t, b.url)
	start := time.Now()
	n := 0
	for r := range rpc.Broadcast[wrapperspb.StringValue](shortCtx(t, 700*time.Millisecond), client.Stub(&echoDesc, "Echo"), wrapperspb.String("x")) {
		if r.Err != nil {
			t.Errorf("reply %+v", r)
		}
		n++
	}
	if n != 2 || time.Since(start) < 650*time.Millisecond {
		t.Fatalf("%d replies after %v; want 2 at the deadline", n, time.Since(start))
	}
}

// Connection hooks: up after Dial's connection, down when it is lost, up
// again after the reconnect, in order, on the Conn's goroutine.
func TestConnectionHooks(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		proxy := rpctest.NewProxy(t, b.url)
		events := make(chan string, 16)
		var downErr atomic.Pointer[error]
		dial(t, proxy.URL(), rpc.WithClientID(uniqueID("hooks")),
			rpc.WithOnConnectionUp(func() { events <- "up" }),
			rpc.WithOnConnectionDown(func(err error) { downErr.Store(&err); events <- "down" }))
		next := func() string {
			select {
			case ev := <-events:
				return ev
			case <-time.After(20 * time.Second):
				t.Fatal("no connection event within 20s")
				return ""
			}
		}
		if ev := next(); ev != "up" {
			t.Fatalf("first event %q", ev)
		}
		proxy.CutAll()
		if ev := next(); ev != "down" {
			t.Fatalf("event after the cut %q", ev)
		}
		if err := *downErr.Load(); rpc.CodeOf(err) != rpc.Unavailable {
			t.Errorf("down error %v", err)
		}
		if ev := next(); ev != "up" {
			t.Fatalf("event after the reconnect %q", ev)
		}
	})
}

// Health: set at run time, shown in presence, checked and watched from the
// fleet with grpc.health.v1's semantics.
func TestHealthInPresence(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		id := uniqueID("hl")
		srv := serveOn(t, dial(t, b.url, rpc.WithClientID(id)), rpc.WithServerID(id))
		_, fleet := watchFleet(t, b.url)
		awaitOnline(t, fleet, id)
		if h, err := fleet.Health(id, echoServiceName); err != nil || h != rpc.HealthServing {
			t.Fatalf("Health = %v, %v", h, err)
		}
		if err := srv.SetHealth(echoServiceName, rpc.HealthNotServing); err != nil {
			t.Fatal(err)
		}
		ev := watchUntil(t, fleet, func(ev rpc.FleetEvent) bool {
			return ev.Server.ID == id && len(ev.Server.Services) == 1 && ev.Server.Services[0].Health == rpc.HealthNotServing
		})
		if ev.Server.Health != rpc.HealthServing {
			t.Errorf("overall health = %v, want SERVING", ev.Server.Health)
		}
		if h, _ := fleet.Health(id, echoServiceName); h != rpc.HealthNotServing {
			t.Errorf("Health(service) = %v", h)
		}
		if err := srv.SetHealth("", rpc.HealthNotServing); err != nil {
			t.Fatal(err)
		}
		watchUntil(t, fleet, func(ev rpc.FleetEvent) bool { return ev.Server.ID == id && ev.Server.Health == rpc.HealthNotServing })
		if h := srv.Health(echoServiceName); h != rpc.HealthNotServing {
			t.Errorf("server's Health(service) = %v", h)
		}
		if _, err := fleet.Health(id, "no.Such"); rpc.CodeOf(err) != rpc.NotFound {
			t.Errorf("unknown service: %v", err)
		}
		if _, err := fleet.Health("nobody", ""); rpc.CodeOf(err) != rpc.NotFound {
			t.Errorf("unknown server: %v", err)
		}
		if err := srv.SetHealth("no.Such", rpc.HealthServing); rpc.CodeOf(err) != rpc.NotFound {
			t.Errorf("SetHealth of an unknown service: %v", err)
		}
	})
}

// Per-method stats, as NATS micro's STATS: requests, errors, last error,
// processing time, in flight, started.
func TestServerMethodStats(t *testing.T) {
	t.Parallel()
	b := newTestbroker(t)
	entered, release := make(chan struct{}), make(chan struct{})
	svc := &echoService{handle: func(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		switch in.GetValue() {
		case "fail":
			return nil, rpc.Errorf(rpc.FailedPrecondition, "not now")
		case "hold":
			entered <- struct{}{}
			<-release
		}
		return in, nil
	}}
	id := uniqueID("st")
	srv := startServer(t, b.url, svc, rpc.WithServerID(id))
	if m := srv.Stats().Methods["/"+echoServiceName+"/Echo"]; m.Requests != 0 || m.Started.IsZero() {
		t.Fatalf("before calls: %+v", m)
	}
	client := newClient(t, b.url)
	for _, s := range []string{"a", "b"} {
		if _, err := echo(testCtx(t), client, s, rpc.To(id)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := echo(testCtx(t), client, "fail", rpc.To(id))
	wantCode(t, err, rpc.FailedPrecondition)
	done := make(chan error, 1)
	go func() { _, err := echo(testCtx(t), client, "hold", rpc.To(id)); done <- err }()
	<-entered
	m := srv.Stats().Methods["/"+echoServiceName+"/Echo"]
	if m.Requests != 3 || m.Errors != 1 || m.LastError != "not now" || m.InFlight != 1 || m.ProcessingTime <= 0 || m.AverageProcessingTime != m.ProcessingTime/3 {
		t.Fatalf("stats = %+v", m)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if m := srv.Stats().Methods["/"+echoServiceName+"/Ping"]; m.Requests != 0 {
		t.Errorf("Ping stats = %+v", m)
	}
}

// Two servers with IDs on one connection: the broker delivers a broadcast
// once, the first takes it, and the record says the second does not, so a
// broadcast does not wait for it.
func TestBroadcastTwoServersOnOneConn(t *testing.T) {
	t.Parallel()
	b := newTestbroker(t)
	conn := dial(t, b.url, rpc.WithClientID(uniqueID("shared")))
	first, second := uniqueID("first"), uniqueID("second")
	serveOn(t, conn, rpc.WithServerID(first))
	serveOn(t, conn, rpc.WithServerID(second))
	callerConn, fleet := watchFleet(t, b.url)
	awaitOnline(t, fleet, first, second)
	if si, _ := fleet.Server(second); si.Broadcast {
		t.Fatalf("second server %+v takes broadcasts", si)
	}
	client := rpc.NewClient(callerConn)
	t.Cleanup(func() { _ = client.Close(context.Background()) })
	start := time.Now()
	var got []string
	for r := range rpc.Broadcast[wrapperspb.StringValue](shortCtx(t, 10*time.Second), client.Stub(&echoDesc, "Echo"), wrapperspb.String("x")) {
		got = append(got, r.ServerID+" "+rpc.CodeOf(r.Err).String())
	}
	if len(got) != 1 || got[0] != first+" OK" || time.Since(start) > 5*time.Second {
		t.Fatalf("replies %v after %v", got, time.Since(start))
	}
}

// Stats over MQTT: every server answers StatsMethod on each of its
// services, to one caller or to a broadcast, in NATS micro's field names.
func TestStatsOverMQTT(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		ids := startDevices(t, b.url, uniqueID("sm"), 2, &echoService{})
		conn, fleet := watchFleet(t, b.url)
		awaitOnline(t, fleet, ids...)
		client := rpc.NewClient(conn)
		t.Cleanup(func() { _ = client.Close(context.Background()) })
		for range 3 {
			if _, err := echo(testCtx(t), client, "x", rpc.To(ids[0])); err != nil {
				t.Fatal(err)
			}
		}
		stats := new(structpb.Struct)
		if err := client.Call(testCtx(t), echoServiceName, rpc.StatsMethod, &emptypb.Empty{}, stats, rpc.To(ids[0])); err != nil {
			t.Fatal(err)
		}
		m := stats.AsMap()
		eps, _ := m["endpoints"].([]any)
		if m["id"] != ids[0] || m["service"] != echoServiceName || len(eps) != 2 {
			t.Fatalf("stats = %v", m)
		}
		echoStats := eps[0].(map[string]any)
		if echoStats["name"] != "Echo" || echoStats["num_requests"] != 3.0 || echoStats["num_errors"] != 0.0 || echoStats["processing_time"].(float64) <= 0 {
			t.Fatalf("Echo stats = %v", echoStats)
		}
		// From the fleet, by broadcast: one answer per server.
		got := map[string]bool{}
		for r := range client.Broadcast(shortCtx(t, 10*time.Second), echoServiceName, rpc.StatsMethod, &emptypb.Empty{}, func() any { return new(structpb.Struct) }) {
			if r.Err != nil {
				t.Fatalf("reply %+v", r)
			}
			got[r.Target] = true
		}
		if len(got) != 2 || !got[ids[0]] || !got[ids[1]] {
			t.Fatalf("stats from %v", got)
		}
	})
}

// Two connections serving one server ID (two devices configured alike):
// both take every call to it, and Duplicates names them until one goes.
func TestFleetDuplicates(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		id := uniqueID("twin")
		c1, c2 := uniqueID("twin-a"), uniqueID("twin-b")
		_, fleet := watchFleet(t, b.url)
		first := serveOn(t, dial(t, b.url, rpc.WithClientID(c1)), rpc.WithServerID(id))
		serveOn(t, dial(t, b.url, rpc.WithClientID(c2)), rpc.WithServerID(id))
		waitFor(t, func() bool { return len(fleet.Duplicates()[id]) == 2 })
		if got := fleet.Duplicates()[id]; !slices.Equal(got, []string{min(c1, c2), max(c1, c2)}) {
			t.Fatalf("Duplicates()[%s] = %v, want both client IDs", id, got)
		}
		if err := first.Shutdown(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return len(fleet.Duplicates()[id]) == 0 })
	})
}
