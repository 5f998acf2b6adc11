package rpc_test

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/internal/rpctest"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// wireRecord is the presence record as docs/protocol.md spells it.
type wireRecord struct {
	V        int       `json:"v"`
	ClientID string    `json:"client_id"`
	Seq      uint64    `json:"seq"`
	State    string    `json:"state"`
	Since    time.Time `json:"since"`
	Servers  []struct {
		ID         string            `json:"id"`
		ShareGroup string            `json:"share_group"`
		Gateway    bool              `json:"gateway"`
		Broadcast  *bool             `json:"broadcast"`
		Started    time.Time         `json:"started"`
		Labels     map[string]string `json:"labels"`
		Health     string            `json:"health"`
		Services   []struct {
			Name    string   `json:"name"`
			Methods []string `json:"methods"`
			Health  string   `json:"health"`
		} `json:"services"`
	} `json:"servers"`
}

// nextRecord returns the next message on topic that rc receives, decoded;
// nil for a removal (empty payload).
func nextRecord(t *testing.T, rc *rawClient, topic string) (*wireRecord, *paho.Publish) {
	t.Helper()
	for {
		p := rc.Next(20 * time.Second)
		if p == nil {
			t.Fatalf("no message on %s within 20s", topic)
		}
		if p.Topic != topic {
			continue
		}
		if len(p.Payload) == 0 {
			return nil, p
		}
		var r wireRecord
		if err := json.Unmarshal(p.Payload, &r); err != nil {
			t.Fatalf("record on %s is not JSON: %v: %s", topic, err, p.Payload)
		}
		return &r, p
	}
}

// watchUntil follows the fleet until cond holds for an event (the initial
// state included), failing after 20 s.
func watchUntil(t *testing.T, f *rpc.Fleet, cond func(rpc.FleetEvent) bool) rpc.FleetEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for ev, err := range f.Watch(ctx) {
		if err != nil {
			t.Fatalf("Watch: %v", err)
		}
		if cond(ev) {
			return ev
		}
	}
	t.Fatal("the fleet event did not come within 20s")
	return rpc.FleetEvent{}
}

func isEvent(kind rpc.FleetEventKind, id string) func(rpc.FleetEvent) bool {
	return func(ev rpc.FleetEvent) bool { return ev.Kind == kind && ev.Server.ID == id }
}

// watchFleet dials a caller and watches the fleet; both close at cleanup.
func watchFleet(t *testing.T, url string) (*rpc.Conn, *rpc.Fleet) {
	t.Helper()
	conn := dial(t, url, rpc.WithClientID(uniqueID("watcher")))
	f, err := rpc.WatchFleet(testCtx(t), conn)
	if err != nil {
		t.Fatalf("WatchFleet: %v", err)
	}
	t.Cleanup(func() { _ = f.Close(context.Background()) })
	return conn, f
}

// serveOn registers the echo service on conn and starts a server; it
// shuts down at cleanup.
func serveOn(t *testing.T, conn *rpc.Conn, opts ...rpc.ServerOption) *rpc.Server {
	t.Helper()
	srv := rpc.NewServer(conn, opts...)
	srv.RegisterService(&echoDesc, &echoService{})
	if err := srv.Start(testCtx(t)); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return srv
}

// The record on the wire: retained on mqttrpc/_presence/{clientID} with
// the fields of docs/protocol.md; Shutdown leaves it offline.
func TestPresenceRecordOnTheWire(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		clientID := uniqueID("dev")
		conn := dial(t, b.url, rpc.WithClientID(clientID))
		srv := serveOn(t, conn, rpc.WithServerID(clientID), rpc.WithLabels(map[string]string{"model": "t-1000"}))
		topic := rpc.PresencePrefix + clientID

		// A reader that comes later gets the retained record.
		rc := newRawClient(t, b.url, uniqueID("raw"))
		rc.SubscribeTo(t, rpc.PresencePrefix+"#")
		r, p := nextRecord(t, rc, topic)
		if r == nil || !p.Retain {
			t.Fatalf("record = %+v, retain %v; want a retained record", r, p.Retain)
		}
		if r.V != 1 || r.ClientID != clientID || r.State != "online" || r.Seq == 0 || r.Since.IsZero() {
			t.Fatalf("record = %+v", r)
		}
		if p.Properties.ContentType != "application/json" {
			t.Errorf("ContentType = %q", p.Properties.ContentType)
		}
		if len(r.Servers) != 1 {
			t.Fatalf("servers = %+v", r.Servers)
		}
		s := r.Servers[0]
		if s.ID != clientID || s.Labels["model"] != "t-1000" || s.Health != "SERVING" || s.Started.IsZero() || s.Broadcast != nil {
			t.Errorf("server = %+v", s)
		}
		if len(s.Services) != 1 || s.Services[0].Name != echoServiceName || len(s.Services[0].Methods) != 2 || s.Services[0].Methods[0] != "Echo" || s.Services[0].Health != "SERVING" {
			t.Errorf("services = %+v", s.Services)
		}

		if err := srv.Shutdown(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		r2, p2 := nextRecord(t, rc, topic)
		if r2 == nil || r2.State != "offline" || r2.Seq != r.Seq || len(r2.Servers) != 0 {
			t.Fatalf("after Shutdown: %+v", r2)
		}
		if p2.Properties.MessageExpiry == nil || *p2.Properties.MessageExpiry == 0 || *p2.Properties.MessageExpiry > 86400 {
			t.Errorf("offline record expiry = %v, want at most 86400 s", p2.Properties.MessageExpiry)
		}
	})
}

// An ungraceful loss: the broker publishes the Will and the fleet sees the
// server go offline; the reconnect brings it back with a newer birth
// sequence.
func TestPresenceWillMarksOffline(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		proxy := rpctest.NewProxy(t, b.url)
		_, fleet := watchFleet(t, b.url)
		id := uniqueID("dev")
		conn := dial(t, proxy.URL(), rpc.WithClientID(id), rpc.WithKeepAlive(5*time.Second))
		serveOn(t, conn, rpc.WithServerID(id))
		first := watchUntil(t, fleet, isEvent(rpc.ServerOnline, id))

		if n := proxy.CutAll(); n != 1 {
			t.Fatalf("cut %d connections, want 1", n)
		}
		off := watchUntil(t, fleet, isEvent(rpc.ServerOffline, id))
		if off.Server.Online || off.Server.Health != rpc.HealthNotServing {
			t.Errorf("offline event = %+v", off.Server)
		}
		back := watchUntil(t, fleet, isEvent(rpc.ServerOnline, id))
		if back.Server.Seq <= first.Server.Seq {
			t.Errorf("seq after reconnect = %d, before %d: want it to grow", back.Server.Seq, first.Server.Seq)
		}
		if si, ok := fleet.Server(id); !ok || !si.Online {
			t.Errorf("Server(%s) = %+v, %v", id, si, ok)
		}
	})
}

// Sparkplug's bdSeq problem on a real broker: the old connection's Will
// reaches the broker after the reconnected one published its record. The
// newer record wins, in the fleet (the Will is stale) and in the retained
// store (the server publishes its record again).
func TestPresenceStaleWillAfterReconnect(t *testing.T) {
	t.Parallel()
	b := newTestbroker(t)
	proxy := rpctest.NewProxy(t, b.url)
	id := uniqueID("dev")
	held, release := b.tb.HoldWills(rpc.PresencePrefix + id)
	t.Cleanup(release)
	_, fleet := watchFleet(t, b.url)
	conn := dial(t, proxy.URL(), rpc.WithClientID(id))
	serveOn(t, conn, rpc.WithServerID(id))
	first := watchUntil(t, fleet, isEvent(rpc.ServerOnline, id))

	proxy.CutAll()
	select {
	case <-held:
	case <-time.After(20 * time.Second):
		t.Fatal("the broker did not take the Will")
	}
	// The server reconnects and announces itself while the old Will is held.
	back := watchUntil(t, fleet, func(ev rpc.FleetEvent) bool {
		return ev.Server.ID == id && ev.Server.Online && ev.Server.Seq > first.Server.Seq
	})
	rc := newRawClient(t, b.url, uniqueID("raw"))
	rc.SubscribeTo(t, rpc.PresencePrefix+id)
	if r, _ := nextRecord(t, rc, rpc.PresencePrefix+id); r == nil || r.Seq != back.Server.Seq || r.State != "online" {
		t.Fatalf("retained before the Will: %+v", r)
	}

	release() // now the stale Will overwrites the retained record
	// The server may publish its record again meanwhile (it repairs the
	// old record that its resubscription brought back): skip those.
	r, _ := nextRecord(t, rc, rpc.PresencePrefix+id)
	for r != nil && r.State == "online" && r.Seq == back.Server.Seq {
		r, _ = nextRecord(t, rc, rpc.PresencePrefix+id)
	}
	if r == nil || r.State != "offline" || r.Seq != first.Server.Seq {
		t.Fatalf("the Will = %+v, want offline with the first seq %d", r, first.Server.Seq)
	}
	// The server repairs the retained store with its newer record.
	r, _ = nextRecord(t, rc, rpc.PresencePrefix+id)
	if r == nil || r.State != "online" || r.Seq != back.Server.Seq {
		t.Fatalf("after the Will: %+v, want online with seq %d", r, back.Server.Seq)
	}
	// The fleet never believed the Will.
	waitFor(t, func() bool { _, stale := fleet.Stats(); return stale >= 1 })
	if si, ok := fleet.Server(id); !ok || !si.Online || si.Seq != back.Server.Seq {
		t.Fatalf("Server(%s) = %+v, %v", id, si, ok)
	}
	// A reader that arrives now sees the newer record.
	_, late := watchFleet(t, b.url)
	if si, ok := late.Server(id); !ok || !si.Online || si.Seq != back.Server.Seq {
		t.Fatalf("a new reader sees %+v, %v", si, ok)
	}
}

// The same race on both brokers, with the stale Will published as the
// broker would publish it (a retained offline record with the old seq),
// after the newer record.
func TestPresenceStaleRecordIsRepaired(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		id := uniqueID("dev")
		_, fleet := watchFleet(t, b.url)
		conn := dial(t, b.url, rpc.WithClientID(id))
		serveOn(t, conn, rpc.WithServerID(id))
		now := watchUntil(t, fleet, isEvent(rpc.ServerOnline, id))

		rc := newRawClient(t, b.url, uniqueID("raw"))
		rc.SubscribeTo(t, rpc.PresencePrefix+id)
		nextRecord(t, rc, rpc.PresencePrefix+id) // the retained record
		stale := `{"v":1,"client_id":"` + id + `","seq":` + strconv.FormatUint(now.Server.Seq-1, 10) + `,"state":"offline","since":"2026-01-01T00:00:00Z","servers":[]}`
		if _, err := rc.Publish(testCtx(t), &paho.Publish{Topic: rpc.PresencePrefix + id, QoS: 1, Retain: true, Payload: []byte(stale)}); err != nil {
			t.Fatal(err)
		}
		if r, _ := nextRecord(t, rc, rpc.PresencePrefix+id); r == nil || r.State != "offline" {
			t.Fatalf("stale record = %+v", r)
		}
		if r, _ := nextRecord(t, rc, rpc.PresencePrefix+id); r == nil || r.State != "online" || r.Seq != now.Server.Seq {
			t.Fatalf("repair = %+v, want online with seq %d", r, now.Server.Seq)
		}
		if si, ok := fleet.Server(id); !ok || !si.Online {
			t.Fatalf("Server(%s) = %+v, %v", id, si, ok)
		}
		// A removal (empty retained payload) with an older seq is stale too.
		if _, err := rc.Publish(testCtx(t), &paho.Publish{Topic: rpc.PresencePrefix + id, QoS: 1, Retain: true,
			Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: "mqttrpc-birth-seq", Value: "1"}}}}); err != nil {
			t.Fatal(err)
		}
		if r, _ := nextRecord(t, rc, rpc.PresencePrefix+id); r != nil {
			t.Fatalf("removal = %+v", r)
		}
		if r, _ := nextRecord(t, rc, rpc.PresencePrefix+id); r == nil || r.State != "online" || r.Seq != now.Server.Seq {
			t.Fatalf("repair after removal = %+v", r)
		}
		_, late := watchFleet(t, b.url)
		if si, ok := late.Server(id); !ok || !si.Online {
			t.Fatalf("a new reader sees %+v, %v", si, ok)
		}
	})
}

// A malformed record is ignored and counted, never a crash.
func TestFleetIgnoresMalformedRecords(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		_, fleet := watchFleet(t, b.url)
		rc := newRawClient(t, b.url, uniqueID("raw"))
		bad := []string{`not json`, `{"v":2,"client_id":"x1","seq":1,"state":"online"}`, `{"v":1,"client_id":"other","seq":1,"state":"online"}`,
			`{"v":1,"client_id":"x1","seq":1,"state":"sleeping"}`, `{"v":1,"client_id":"x1","seq":0,"state":"online"}`,
			`{"v":1,"client_id":"x1","seq":1,"state":"online","servers":[{}]}`, `[1,2,3]`, `{"v":1,"client_id":"x1","seq":-5}`}
		for _, payload := range bad {
			rc.PublishTo(t, rpc.PresencePrefix+"x1", nil, payload)
		}
		waitFor(t, func() bool { m, _ := fleet.Stats(); return m >= uint64(len(bad)) })
		if got := fleet.Servers(""); len(got) != 0 {
			t.Fatalf("Servers = %+v", got)
		}
	})
}

// An older revision of a connection's own record (same seq, not the one
// it last published: a bridge resending its retained copy after an
// outage) is repaired: the connection publishes its latest record again.
func TestPresenceOlderRevisionIsRepaired(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		id := uniqueID("dev")
		srv := serveOn(t, dial(t, b.url, rpc.WithClientID(id)), rpc.WithServerID(id))
		rc := newRawClient(t, b.url, uniqueID("raw"))
		rc.SubscribeTo(t, rpc.PresencePrefix+id)
		first, p := nextRecord(t, rc, rpc.PresencePrefix+id) // the retained record
		if first == nil || first.State != "online" || first.Servers[0].Health != "SERVING" {
			t.Fatalf("record = %+v", first)
		}
		older := p.Payload
		if err := srv.SetHealth("", rpc.HealthNotServing); err != nil {
			t.Fatal(err)
		}
		if r, _ := nextRecord(t, rc, rpc.PresencePrefix+id); r == nil || r.Seq != first.Seq || r.Servers[0].Health != "NOT_SERVING" {
			t.Fatalf("record after SetHealth = %+v", r)
		}

		if _, err := rc.Publish(testCtx(t), &paho.Publish{Topic: rpc.PresencePrefix + id, QoS: 1, Retain: true, Payload: older}); err != nil {
			t.Fatal(err)
		}
		if r, _ := nextRecord(t, rc, rpc.PresencePrefix+id); r == nil || r.Servers[0].Health != "SERVING" {
			t.Fatalf("the older revision = %+v", r)
		}
		if r, _ := nextRecord(t, rc, rpc.PresencePrefix+id); r == nil || r.Seq != first.Seq || r.Servers[0].Health != "NOT_SERVING" {
			t.Fatalf("repair = %+v, want the latest record (NOT_SERVING, seq %d)", r, first.Seq)
		}
		_, late := watchFleet(t, b.url)
		if h, err := late.Health(id, ""); h != rpc.HealthNotServing {
			t.Fatalf("a new reader sees health %v (%v), want NOT_SERVING", h, err)
		}
	})
}
