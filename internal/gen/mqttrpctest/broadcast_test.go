package mqttrpctest_test

import (
	"context"
	"slices"
	"testing"
	"time"

	greeterv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/greeter/v1"
	namesv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/names/v1"
	"github.com/mqttrpc/mqttrpc/internal/rpctest"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// namedGreeter greets in the name of its server, so that each reply of a
// broadcast shows whose it is; hang, if set, keeps it from answering until
// the call's context ends.
type namedGreeter struct {
	greeterv1.UnimplementedGreeterServer
	id   string
	hang bool
}

func (g namedGreeter) SayHello(ctx context.Context, req *greeterv1.SayHelloRequest) (*greeterv1.SayHelloResponse, error) {
	if g.hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &greeterv1.SayHelloResponse{Greeting: "hello " + req.GetName() + " from " + g.id}, nil
}

// startGreeters starts a greeter server per ID, each on its own connection
// (with presence, as Dial makes it); they shut down at cleanup.
func startGreeters(t *testing.T, url string, hang bool, ids ...string) {
	t.Helper()
	for _, id := range ids {
		srv := rpc.NewServer(rpctest.Dial(t, url, rpc.WithClientID(id)), rpc.WithServerID(id))
		greeterv1.RegisterGreeterServer(srv, namedGreeter{id: id, hang: hang})
		if err := srv.Start(testCtx(t)); err != nil {
			t.Fatalf("Start %s: %v", id, err)
		}
		t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	}
}

// watchFleet dials a caller that watches the fleet and waits until it
// lists every id online.
func watchFleet(t *testing.T, url string, ids ...string) (*rpc.Conn, *rpc.Fleet) {
	t.Helper()
	conn := rpctest.Dial(t, url, rpc.WithClientID(rpctest.UniqueID("caller")))
	fleet, err := rpc.WatchFleet(testCtx(t), conn)
	if err != nil {
		t.Fatalf("WatchFleet: %v", err)
	}
	t.Cleanup(func() { _ = fleet.Close(context.Background()) })
	awaitOnline(t, fleet, ids...)
	return conn, fleet
}

// awaitOnline waits until fleet lists every id online.
func awaitOnline(t *testing.T, fleet *rpc.Fleet, ids ...string) {
	t.Helper()
	missing := map[string]bool{}
	for _, id := range ids {
		missing[id] = true
	}
	for ev, err := range fleet.Watch(testCtx(t)) { // the servers it knows, then changes
		if err != nil {
			t.Fatalf("Watch: %v", err)
		}
		if ev.Kind != rpc.ServerOffline {
			delete(missing, ev.Server.ID)
		}
		if len(missing) == 0 {
			return
		}
	}
	t.Fatalf("servers %v did not come online", missing)
}

// The generated broadcast form of a unary method yields each server's
// typed answer with the server's ID, and, with presence, ends as soon as
// every online server has answered; a server that does not answer is
// reported by ID at the deadline, as rpc.Broadcast does.
func TestGeneratedBroadcast(t *testing.T) {
	t.Parallel()
	rpctest.EachBroker(t, func(t *testing.T, b *rpctest.Broker) {
		ids := []string{rpctest.UniqueID("dev-a"), rpctest.UniqueID("dev-b"), rpctest.UniqueID("dev-c")}
		startGreeters(t, b.URL, false, ids...)
		conn, fleet := watchFleet(t, b.URL, ids...)
		client := rpc.NewClient(conn)
		t.Cleanup(func() { _ = client.Close(context.Background()) })
		greeter := greeterv1.NewGreeterClient(client)

		ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
		defer cancel()
		start := time.Now()
		var got []string
		for r := range greeter.BroadcastSayHello(ctx, &greeterv1.SayHelloRequest{Name: "fleet"}) {
			if r.Err != nil {
				t.Fatalf("reply from %q: %v", r.ServerID, r.Err)
			}
			var resp *greeterv1.SayHelloResponse = r.Response // typed: no assertion
			if want := "hello fleet from " + r.ServerID; resp.GetGreeting() != want {
				t.Errorf("reply from %q: greeting %q, want %q", r.ServerID, resp.GetGreeting(), want)
			}
			got = append(got, r.ServerID)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("the broadcast took %v; want it to end when the 3 servers answered, not at its 10 s deadline", d)
		}
		slices.Sort(got)
		if !slices.Equal(got, ids) {
			t.Fatalf("replies from %v, want one from each of %v", got, ids)
		}

		// A fourth server that does not answer: the broadcast waits for it
		// until the deadline, then names it.
		silent := rpctest.UniqueID("dev-silent")
		startGreeters(t, b.URL, true, silent)
		awaitOnline(t, fleet, silent)
		short, cancelShort := context.WithTimeout(testCtx(t), time.Second)
		defer cancelShort()
		var ok, missing []string
		for r := range greeter.BroadcastSayHello(short, &greeterv1.SayHelloRequest{Name: "again"}) {
			switch {
			case r.Err == nil && r.Response.GetGreeting() == "hello again from "+r.ServerID:
				ok = append(ok, r.ServerID)
			case rpc.CodeOf(r.Err) == rpc.DeadlineExceeded && r.Response == nil:
				missing = append(missing, r.ServerID)
			default:
				t.Errorf("reply from %q: %v, %v", r.ServerID, r.Response, r.Err)
			}
		}
		slices.Sort(ok)
		if !slices.Equal(ok, ids) || !slices.Equal(missing, []string{silent}) {
			t.Fatalf("answered %v, missing %v; want %v answered and %s missing", ok, missing, ids, silent)
		}
	})
}

type monitor struct {
	namesv1.UnimplementedMonitorServer
}

func (monitor) Status(ctx context.Context, _ *namesv1.StatusRequest) (*namesv1.StatusReport, error) {
	call, _ := rpc.CallFromContext(ctx)
	return &namesv1.StatusReport{Device: deviceID, State: "status via " + call.Target()}, nil
}

func (monitor) BroadcastStatus(ctx context.Context, _ *namesv1.StatusRequest) (*namesv1.StatusReport, error) {
	call, _ := rpc.CallFromContext(ctx)
	return &namesv1.StatusReport{Device: deviceID, State: "broadcast-status via " + call.Target()}, nil
}

// A method named like another's broadcast form keeps its name: the
// broadcast of Status is BroadcastStatus_, and BroadcastStatus is the
// unary method of that name.
func TestGeneratedBroadcastNameCollision(t *testing.T) {
	t.Parallel()
	b := rpctest.NewTestbroker(t)
	serve(t, b.URL, func(s *rpc.Server) { namesv1.RegisterMonitorServer(s, monitor{}) })
	conn, _ := watchFleet(t, b.URL, deviceID)
	client := rpc.NewClient(conn)
	t.Cleanup(func() { _ = client.Close(context.Background()) })
	monitor := namesv1.NewMonitorClient(client)
	ctx := testCtx(t)

	var states []string
	for r := range monitor.BroadcastStatus_(ctx, &namesv1.StatusRequest{}) {
		if r.Err != nil {
			t.Fatalf("BroadcastStatus_ reply from %q: %v", r.ServerID, r.Err)
		}
		states = append(states, r.ServerID+": "+r.Response.GetState())
	}
	if want := []string{deviceID + ": status via _all"}; !slices.Equal(states, want) {
		t.Errorf("BroadcastStatus_ = %v, want %v", states, want)
	}
	report, err := monitor.BroadcastStatus(ctx, &namesv1.StatusRequest{}, rpc.To(deviceID))
	if err != nil || report.GetState() != "broadcast-status via "+deviceID {
		t.Errorf("BroadcastStatus = %v, %v; want the unary method's answer", report, err)
	}
}
