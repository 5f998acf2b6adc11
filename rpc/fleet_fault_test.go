package rpc_test

// The fleet under faults of the topology (issue 16): a bridge between two
// brokers, a broker restarted with and without persistence.

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/internal/mosquittotest"
	"github.com/mqttrpc/mqttrpc/internal/rpctest"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// bridgedEcho is an echo handler that checks what crossed the bridge: the
// caller's deadline (MessageExpiryInterval, mqttrpc-timeout) and repeated
// metadata; it answers with response metadata, or fails on "fail".
func bridgedEcho(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	call, _ := rpc.CallFromContext(ctx)
	deadline, ok := ctx.Deadline()
	if left := time.Until(deadline); !ok || left > 10*time.Second || left < 5*time.Second {
		return nil, rpc.Errorf(rpc.InvalidArgument, "deadline %v away (%t), want the caller's 10 s", left, ok)
	}
	if got := call.RequestMetadata().Values("k"); !slices.Equal(got, []string{"a", "b"}) {
		return nil, rpc.Errorf(rpc.InvalidArgument, "metadata k = %q, want [a b]", got)
	}
	call.ResponseMetadata().Set("served-by", "broker-a")
	if in.GetValue() == "fail" {
		return nil, rpc.Errorf(rpc.FailedPrecondition, "not now: ünïcode, 100%%\nsecond line")
	}
	return in, nil
}

// Two Mosquittos joined by an MQTT v5 bridge that carries mqttrpc/# both
// ways; servers on A, the caller on B. B answers PUBACK 0x00 for every
// request (the bridge subscribes to everything), so without presence a
// call to a missing target waits out its deadline. Presence crosses the
// bridge (records, the Will, Shutdown's offline record), and with it the
// caller fails such calls at once.
func TestFleetOverBridge(t *testing.T) {
	t.Parallel()
	a := mosquittotest.Start(t)
	b := mosquittotest.Start(t, mosquittotest.WithBridge(a.Addr(), "mqttrpc/#"))

	svc := &echoService{handle: bridgedEcho}
	id := uniqueID("bridged")
	srv := rpc.NewServer(dial(t, a.URL(), rpc.WithClientID(id)), rpc.WithServerID(id), rpc.WithLabels(map[string]string{"site": "a"}))
	srv.RegisterService(&echoDesc, svc)
	if err := srv.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	// A second server, whose process is killed below: its connection goes
	// through a proxy.
	proxy := rpctest.NewProxy(t, a.URL())
	killed := uniqueID("bridged-killed")
	serveOn(t, dial(t, proxy.URL(), rpc.WithClientID(killed)), rpc.WithServerID(killed))

	// The caller on B lists the servers on A: their retained records
	// crossed the bridge when it subscribed, or live after.
	conn, fleet := watchFleet(t, b.URL())
	awaitOnline(t, fleet, id, killed)
	si, _ := fleet.Server(id)
	if si.ClientID != id || si.Labels["site"] != "a" || !si.Serves(echoServiceName) || si.Health != rpc.HealthServing {
		t.Fatalf("Server(%s) over the bridge = %+v", id, si)
	}
	client := rpc.NewClient(conn)
	t.Cleanup(func() { _ = client.Close(context.Background()) })

	// A call to the online server, with its properties intact both ways.
	md := rpc.Metadata{"k": {"a", "b"}}
	var respMD rpc.Metadata
	var answeredBy string
	got, err := echo(shortCtx(t, 10*time.Second), client, "over the bridge", rpc.To(id), rpc.WithMetadata(md), rpc.ResponseMetadata(&respMD), rpc.AnsweredBy(&answeredBy))
	if err != nil || got != "over the bridge" {
		t.Fatalf("call over the bridge: %q, %v", got, err)
	}
	if respMD.Get("served-by") != "broker-a" || answeredBy != id {
		t.Errorf("response metadata %v, answered by %q", respMD, answeredBy)
	}
	_, err = echo(shortCtx(t, 10*time.Second), client, "fail", rpc.To(id), rpc.WithMetadata(md))
	if e := wantCode(t, err, rpc.FailedPrecondition); e.Message() != "not now: ünïcode, 100%\nsecond line" {
		t.Errorf("error message over the bridge %q", e.Message())
	}

	// A target that does not exist: at once, nothing published.
	calls := svc.calls.Load()
	start := time.Now()
	_, err = echo(shortCtx(t, 5*time.Second), client, "x", rpc.To("nobody-on-either-broker"))
	wantCode(t, err, rpc.Unavailable)
	if d := time.Since(start); d > time.Second {
		t.Errorf("the call to a missing target took %v of its 5 s; want it at once", d)
	}
	// Without fail fast the bridge hides it: B has a subscriber for every
	// request (the bridge), A's PUBACK 0x10 stays with the bridge, and
	// the call waits for its deadline.
	plain := rpc.NewClient(conn, rpc.WithFailFast(false))
	t.Cleanup(func() { _ = plain.Close(context.Background()) })
	start = time.Now()
	_, err = echo(shortCtx(t, 500*time.Millisecond), plain, "x", rpc.To("nobody-on-either-broker"))
	wantCode(t, err, rpc.DeadlineExceeded)
	if d := time.Since(start); d < 450*time.Millisecond {
		t.Errorf("without fail fast the call ended after %v, before its deadline: did B answer 0x10?", d)
	}

	// The server shut down on A: its offline record crosses the bridge,
	// and a call to it fails at once.
	if err := srv.Shutdown(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	watchUntil(t, fleet, isEvent(rpc.ServerOffline, id))
	start = time.Now()
	_, err = echo(shortCtx(t, 5*time.Second), client, "x", rpc.To(id), rpc.WithMetadata(md))
	if e := wantCode(t, err, rpc.Unavailable); !contains(e.Message(), "offline") {
		t.Errorf("call to the shut-down server: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the call to the shut-down server took %v; want it at once", d)
	}

	// The other server's process killed: A publishes its Will, which
	// crosses the bridge.
	proxy.Refuse(true)
	proxy.CutAll()
	watchUntil(t, fleet, isEvent(rpc.ServerOffline, killed))
	start = time.Now()
	_, err = echo(shortCtx(t, 5*time.Second), client, "x", rpc.To(killed))
	if e := wantCode(t, err, rpc.Unavailable); !contains(e.Message(), "offline") {
		t.Errorf("call to the killed server: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the call to the killed server took %v; want it at once", d)
	}
	if svc.calls.Load() != calls {
		t.Errorf("%d handler runs after the first two calls, want none", svc.calls.Load()-calls)
	}
	if n := len(fleet.Servers("")); n != 0 {
		t.Errorf("%d servers online on B's view, want none", n)
	}
}

// A Mosquitto restarted under a fleet, with persistence (the retained
// records are saved when it stops and read when it starts) and without
// (they are gone). Either way the servers reconnect and publish their
// records again, with a new birth sequence, and the caller's Fleet is
// known complete again once it has resynchronised. A server that shut
// down before the restart is never listed online: with persistence the
// broker still retains its offline record, and the caller that watched it
// go lists it offline; without, nothing is retained and it is unknown. A
// caller that comes afterwards lists the same servers online.
func TestFleetBrokerRestart(t *testing.T) {
	t.Parallel()
	for _, persist := range []bool{true, false} {
		name := "persistence"
		if !persist {
			name = "no-persistence"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var opts []mosquittotest.Option
			if persist {
				opts = append(opts, mosquittotest.WithPersistence())
			}
			mq := mosquittotest.Start(t, opts...)
			stays := startDevices(t, mq.URL(), uniqueID("stays"), 2, &echoService{})
			goneID := uniqueID("gone")
			gone := serveOn(t, dial(t, mq.URL(), rpc.WithClientID(goneID)), rpc.WithServerID(goneID))

			ups := make(chan struct{}, 16)
			conn := dial(t, mq.URL(), rpc.WithClientID(uniqueID("watcher")), rpc.WithOnConnectionUp(func() {
				select {
				case ups <- struct{}{}:
				default:
				}
			}))
			fleet, err := rpc.WatchFleet(testCtx(t), conn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = fleet.Close(context.Background()) })
			awaitUp(t, ups) // Dial's connection
			awaitOnline(t, fleet, append(slices.Clone(stays), goneID)...)
			if err := gone.Shutdown(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			watchUntil(t, fleet, isEvent(rpc.ServerOffline, goneID))
			before := map[string]uint64{}
			for _, id := range stays {
				si, _ := fleet.Server(id)
				before[id] = si.Seq
			}

			mq.Restart()
			// The up after the reconnect comes after the Fleet heard the
			// connection was down: from here it is complete only once
			// it has resynchronised with the restarted broker.
			awaitUp(t, ups)
			if err := fleet.AwaitComplete(testCtx(t)); err != nil {
				t.Fatalf("presence not complete again after the restart: %v", err)
			}
			// What the restarted broker retains for the server that shut
			// down: its offline record (persistence), or nothing.
			rc := newRawClient(t, mq.URL(), uniqueID("raw"))
			rc.SubscribeTo(t, rpc.PresencePrefix+goneID)
			marker := "mqttrpc/marker/" + uniqueID("m")
			rc.SubscribeTo(t, marker)
			rc.PublishTo(t, marker, nil, "marker") // after the retained messages of the first subscription
			rec, p := nextRecordOrMarker(t, rc, rpc.PresencePrefix+goneID, marker)
			switch {
			case persist && (rec == nil || rec.State != "offline"):
				t.Errorf("with persistence, the restarted broker retains %v on %s; want the offline record", p, rpc.PresencePrefix+goneID)
			case !persist && rec != nil:
				t.Errorf("without persistence, the restarted broker retains %+v; want nothing", rec)
			}

			// remembers: the Fleet was watching when the server shut down,
			// and keeps the servers of its online record for the offline
			// one of the same connection, which lists none. A caller that
			// comes later has only the retained record, which lists no
			// server: the server is unknown to it, as without persistence.
			check := func(t *testing.T, f *rpc.Fleet, remembers bool) {
				t.Helper()
				awaitRepublished(t, f, before)
				var online []string
				for _, si := range f.Servers(echoServiceName) {
					online = append(online, si.ID)
				}
				if !slices.Equal(online, stays) {
					t.Errorf("online after the restart: %v, want %v", online, stays)
				}
				si, listed := f.Server(goneID)
				switch {
				case remembers && (!listed || si.Online):
					t.Errorf("the server shut down before the restart: listed %t, %+v; want it listed offline, from the persisted record", listed, si)
				case !remembers && listed:
					t.Errorf("the server shut down before the restart is listed (%+v); want it unknown", si)
				}
				if !f.Complete() {
					t.Error("presence not known complete")
				}
			}
			check(t, fleet, persist)
			_, late := watchFleet(t, mq.URL())
			check(t, late, false)

			client := rpc.NewClient(conn)
			t.Cleanup(func() { _ = client.Close(context.Background()) })
			if got, err := echo(testCtx(t), client, "after", rpc.To(stays[0])); err != nil || got != "after" {
				t.Errorf("call after the restart: %q, %v", got, err)
			}
			start := time.Now()
			_, err = echo(shortCtx(t, 5*time.Second), client, "x", rpc.To(goneID))
			wantCode(t, err, rpc.Unavailable)
			if d := time.Since(start); d > time.Second {
				t.Errorf("the call to the server that shut down took %v; want it at once", d)
			}
		})
	}
}

// awaitUp waits for a WithOnConnectionUp callback.
func awaitUp(t *testing.T, ups <-chan struct{}) {
	t.Helper()
	select {
	case <-ups:
	case <-time.After(20 * time.Second):
		t.Fatal("the connection did not come up within 20s")
	}
}

// awaitRepublished waits until every server of before is online with a
// record newer than the birth sequence it had: it reconnected and
// published its record again.
func awaitRepublished(t *testing.T, f *rpc.Fleet, before map[string]uint64) {
	t.Helper()
	missing := map[string]bool{}
	for id := range before {
		missing[id] = true
	}
	watchUntil(t, f, func(ev rpc.FleetEvent) bool {
		if seq, ok := before[ev.Server.ID]; ok && ev.Server.Online && ev.Server.Seq > seq {
			delete(missing, ev.Server.ID)
		}
		return len(missing) == 0
	})
}

// nextRecordOrMarker returns the record rc receives on topic before the
// marker (nil when the marker comes first) and the message itself.
func nextRecordOrMarker(t *testing.T, rc *rawClient, topic, marker string) (*wireRecord, *paho.Publish) {
	t.Helper()
	for {
		p := rc.Next(20 * time.Second)
		switch {
		case p == nil:
			t.Fatalf("neither a record on %s nor the marker within 20s", topic)
		case p.Topic == marker:
			return nil, p
		case p.Topic == topic:
			var r wireRecord
			if err := json.Unmarshal(p.Payload, &r); err != nil {
				t.Fatalf("record on %s is not JSON: %v: %q", topic, err, p.Payload)
			}
			return &r, p
		}
	}
}

// The bridge between the caller's broker (B) and the servers' (A) goes
// down and comes back. While it is down the caller's view of A's servers
// is the last it heard, known complete all the same; once the bridge is
// back A resends its retained records and B's view catches up: a server
// killed meanwhile shows offline, one started meanwhile online.
//
// But B resends its retained records to A too: with presence bridged both
// ways, B's copies, as old as the outage, reach A after what A has. The
// live server, whose health changed during the outage, sees its own
// record come back with its seq but not its latest content, and repairs
// it (a test that found this: A's callers listed the old health). B's
// copy of the killed server's online record has the same seq as A's Will
// for it, comes later and wins: A and its readers list the dead server
// online, for good, as no connection of it is left to repair the record.
// docs/deployment.md warns of this; the subtest pins what it says.
// Presence bridged one way, from the servers' broker, keeps A right.
func TestFleetBridgeOutage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		topics  []string
		replays bool // B's stale copies reach A's retained store
	}{
		{"presence-both-ways", []string{"mqttrpc/#"}, true},
		{"presence-one-way", []string{"mqttrpc/_presence/+ in 1", "mqttrpc/responses/+", "mqttrpc/+/+/+"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bridgeOutage(t, tc.topics, tc.replays)
		})
	}
}

func bridgeOutage(t *testing.T, topics []string, replays bool) {
	a := mosquittotest.Start(t)
	link := rpctest.NewProxy(t, a.URL())
	b := mosquittotest.Start(t, mosquittotest.WithBridge(link.Addr(), topics...))

	stays := uniqueID("stays")
	staysSrv := serveOn(t, dial(t, a.URL(), rpc.WithClientID(stays)), rpc.WithServerID(stays))
	devProxy := rpctest.NewProxy(t, a.URL())
	killed := uniqueID("killed")
	serveOn(t, dial(t, devProxy.URL(), rpc.WithClientID(killed)), rpc.WithServerID(killed))
	_, onA := watchFleet(t, a.URL())
	conn, onB := watchFleet(t, b.URL())
	awaitOnline(t, onB, stays, killed)
	client := rpc.NewClient(conn)
	t.Cleanup(func() { _ = client.Close(context.Background()) })

	// The bridge goes down; meanwhile one server dies and another starts.
	link.Refuse(true)
	if n := link.CutAll(); n != 1 {
		t.Fatalf("cut %d bridge connections, want 1", n)
	}
	devProxy.Refuse(true)
	devProxy.CutAll()
	late := uniqueID("late")
	serveOn(t, dial(t, a.URL(), rpc.WithClientID(late)), rpc.WithServerID(late))
	if err := staysSrv.SetHealth("", rpc.HealthNotServing); err != nil {
		t.Fatal(err)
	}
	watchUntil(t, onA, isEvent(rpc.ServerOffline, killed))
	awaitOnline(t, onA, late)
	watchUntil(t, onA, func(ev rpc.FleetEvent) bool { return ev.Server.ID == stays && ev.Server.Health == rpc.HealthNotServing })
	if si, ok := onB.Server(killed); !ok || !si.Online || !onB.Complete() {
		t.Errorf("B's view while the bridge is down: %+v (listed %t), complete %t; want the last it heard: online", si, ok, onB.Complete())
	}
	if _, ok := onB.Server(late); ok {
		t.Errorf("B lists %s, started while the bridge was down", late)
	}
	// A call to a server on the other side: presence says online, B
	// takes the request for the bridge's subscription (PUBACK 0x00, not
	// 0x10), and the call waits for its deadline.
	start := time.Now()
	_, err := echo(shortCtx(t, 500*time.Millisecond), client, "x", rpc.To(stays))
	wantCode(t, err, rpc.DeadlineExceeded)
	if d := time.Since(start); d < 450*time.Millisecond {
		t.Errorf("the call across the broken bridge ended after %v, before its deadline", d)
	}

	// What reaches A's presence topic of the killed server once the bridge
	// is back, up to a marker published on B after B has caught up (the
	// bridge forwards in order).
	rawA := newRawClient(t, a.URL(), uniqueID("raw"))
	rawA.SubscribeTo(t, rpc.PresencePrefix+killed)
	rawA.SubscribeTo(t, "mqttrpc/marker/+/+")
	rawA.PublishTo(t, "mqttrpc/marker/a/"+killed, nil, "before")
	readUntil(t, rawA, "mqttrpc/marker/a/"+killed) // the retained Will, and the marker

	link.Refuse(false) // Mosquitto retries the bridge every second
	start = time.Now()
	watchUntil(t, onB, isEvent(rpc.ServerOffline, killed))
	awaitOnline(t, onB, late)
	t.Logf("B's view caught up %v after the bridge was let through", time.Since(start))
	if got, err := echo(testCtx(t), client, "back", rpc.To(late)); err != nil || got != "back" {
		t.Errorf("call to the server started during the outage: %q, %v", got, err)
	}
	_, err = echo(shortCtx(t, 5*time.Second), client, "x", rpc.To(killed))
	wantCode(t, err, rpc.Unavailable)
	if _, late := watchFleet(t, b.URL()); !offlineOrUnknown(late, killed) {
		t.Errorf("a new caller on B lists %s online", killed)
	}

	rawB := newRawClient(t, b.URL(), uniqueID("raw"))
	rawB.PublishTo(t, "mqttrpc/marker/b/"+killed, nil, "after")
	var replayed []string
	for _, p := range readUntil(t, rawA, "mqttrpc/marker/b/"+killed) {
		replayed = append(replayed, string(p.Payload))
	}
	_, lateA := watchFleet(t, a.URL()) // A's retained store, as of after the marker
	if replays {
		if len(replayed) == 0 || offlineOrUnknown(lateA, killed) {
			t.Errorf("with presence bridged both ways, B's stale record did not come back to A (records %q; a new caller on A lists the killed server online: %t): docs/deployment.md's warning no longer holds",
				replayed, !offlineOrUnknown(lateA, killed))
		} else {
			watchUntil(t, onA, isEvent(rpc.ServerOnline, killed)) // the stale copy, at the killed server's seq, after its Will
		}
	} else if len(replayed) != 0 || !offlineOrUnknown(lateA, killed) || !offlineOrUnknown(onA, killed) {
		t.Errorf("with presence bridged one way, A got records %q of the killed server from B; A's callers list it offline: %t, %t",
			replayed, offlineOrUnknown(onA, killed), offlineOrUnknown(lateA, killed))
	}
	// The live server repairs its record when B's stale copy reaches A
	// (same seq, not its latest): every view ends with its latest health.
	t.Logf("waiting for each view to show %s NOT_SERVING", stays)
	for _, f := range []*rpc.Fleet{onA, lateA, onB} {
		watchUntil(t, f, func(ev rpc.FleetEvent) bool { return ev.Server.ID == stays && ev.Server.Health == rpc.HealthNotServing })
	}
	if si, _ := lateA.Server(stays); si.Health != rpc.HealthNotServing {
		t.Errorf("a new caller on A: the live server's health is %v, want its latest, NOT_SERVING", si.Health)
	}
}

// offlineOrUnknown reports whether the fleet does not list id online.
func offlineOrUnknown(f *rpc.Fleet, id string) bool {
	si, ok := f.Server(id)
	return !ok || !si.Online
}

// readUntil returns what rc receives before a message on marker.
func readUntil(t *testing.T, rc *rawClient, marker string) []*paho.Publish {
	t.Helper()
	var got []*paho.Publish
	for {
		p := rc.Next(20 * time.Second)
		switch {
		case p == nil:
			t.Fatalf("no message on %s within 20s", marker)
		case p.Topic == marker:
			return got
		}
		got = append(got, p)
	}
}
