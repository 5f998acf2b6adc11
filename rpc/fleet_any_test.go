package rpc_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// nextRequest returns the value of the next echo request the raw client
// received.
func nextRequest(t *testing.T, rc *rawClient) string {
	t.Helper()
	p := rc.Next(20 * time.Second)
	if p == nil {
		t.Fatal("no request reached the raw subscriber within 20s")
	}
	var req wrapperspb.StringValue
	if err := proto.Unmarshal(p.Payload, &req); err != nil {
		t.Fatalf("request on %s: %v", p.Topic, err)
	}
	return req.GetValue()
}

// isShareMember matches the event of a share-group member of group.
func isShareMember(kind rpc.FleetEventKind, group string) func(rpc.FleetEvent) bool {
	return func(ev rpc.FleetEvent) bool { return ev.Kind == kind && ev.Server.ShareGroup == group }
}

// Fail fast for _any (docs/protocol.md, "What callers do with presence"):
// with presence known complete and no online share-group member or gateway
// serving the service, a call to _any fails at once with Unavailable and
// publishes nothing; with a member online it goes through; once the member
// has gone offline it fails fast again. A raw subscriber to the _any
// topics, which presence does not see, shows what was published: after
// each failed call a call with WithFailFast(false) is published, and it
// must be the first request the subscriber gets.
func TestFleetFailFastAny(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		rc := newRawClient(t, b.url, uniqueID("raw"))
		rc.SubscribeTo(t, "mqttrpc/"+echoServiceName+"/_any/+")
		// A share-group member of another service does not count.
		other := dial(t, b.url, rpc.WithClientID(uniqueID("other")))
		greeterSrv := rpc.NewServer(other, rpc.WithShareGroup("greeters"))
		greeterSrv.RegisterService(&greeterDesc, greeter{})
		if err := greeterSrv.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = greeterSrv.Shutdown(context.Background()) })

		conn, fleet := watchFleet(t, b.url)
		watchUntil(t, fleet, isShareMember(rpc.ServerOnline, "greeters"))
		client := rpc.NewClient(conn)
		t.Cleanup(func() { _ = client.Close(context.Background()) })
		plain := rpc.NewClient(conn, rpc.WithFailFast(false))
		t.Cleanup(func() { _ = plain.Close(context.Background()) })

		// failsFast calls _any and expects Unavailable at once, then
		// checks with a published call that the failed one was not.
		failsFast := func(value string) {
			t.Helper()
			start := time.Now()
			_, err := echo(shortCtx(t, 5*time.Second), client, value, rpc.ToAny())
			rpcErr := wantCode(t, err, rpc.Unavailable)
			if d := time.Since(start); d > time.Second {
				t.Errorf("the call to _any took %v; want it at once", d)
			}
			for _, want := range []string{echoServiceName, "_any", "per presence", "rpc.WithFailFast(false)"} {
				if !contains(rpcErr.Message(), want) {
					t.Errorf("message %q does not say %q", rpcErr.Message(), want)
				}
			}
			published := value + " (published)"
			_, err = echo(shortCtx(t, 300*time.Millisecond), plain, published, rpc.ToAny())
			if err == nil {
				t.Fatal("a call to _any without a member was answered")
			}
			if got := nextRequest(t, rc); got != published {
				t.Fatalf("the raw subscriber got %q first, want %q: the fail-fast call was published", got, published)
			}
		}
		failsFast("nobody")

		// A member online: the call goes through, and the member ran it.
		group := uniqueID("workers")
		svc := &echoService{}
		memberConn := dial(t, b.url, rpc.WithClientID(uniqueID("member")))
		member := rpc.NewServer(memberConn, rpc.WithShareGroup(group))
		member.RegisterService(&echoDesc, svc)
		if err := member.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = member.Shutdown(context.Background()) })
		watchUntil(t, fleet, isShareMember(rpc.ServerOnline, group))
		if got, err := echo(testCtx(t), client, "to a member", rpc.ToAny()); err != nil || got != "to a member" {
			t.Fatalf("call to _any with a member online: %q, %v", got, err)
		}
		if n := svc.calls.Load(); n != 1 {
			t.Errorf("the member ran %d calls, want 1", n)
		}
		if got := nextRequest(t, rc); got != "to a member" {
			t.Fatalf("the raw subscriber got %q", got)
		}

		// The member shuts down: its record says offline, and _any fails
		// fast again.
		if err := member.Shutdown(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		watchUntil(t, fleet, isShareMember(rpc.ServerOffline, group))
		failsFast("member gone")
		if n := svc.calls.Load(); n != 1 {
			t.Errorf("the member ran %d calls, want 1", n)
		}
	})
}

// A gateway takes _any (its filter mqttrpc/{service}/+/+ matches it): with
// one online, a call to _any is published and answered.
func TestFleetFailFastAnySparesGateways(t *testing.T) {
	t.Parallel()
	b := newTestbroker(t)
	gw := dial(t, b.url, rpc.WithClientID(uniqueID("gw")))
	serveOn(t, gw, rpc.WithGateway())
	conn, fleet := watchFleet(t, b.url)
	watchUntil(t, fleet, func(ev rpc.FleetEvent) bool { return ev.Kind == rpc.ServerOnline && ev.Server.Gateway })
	client := rpc.NewClient(conn)
	t.Cleanup(func() { _ = client.Close(context.Background()) })
	if got, err := echo(testCtx(t), client, "via gateway", rpc.ToAny()); err != nil || got != "via gateway" {
		t.Fatalf("call to _any through the gateway: %q, %v", got, err)
	}
}
