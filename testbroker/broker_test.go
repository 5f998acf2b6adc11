package testbroker_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"github.com/mqttrpc/mqttrpc/testbroker"
	"go.uber.org/goleak"
)

func TestURLAndAddr(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	if !strings.HasPrefix(broker.Addr(), "127.0.0.1:") || strings.HasSuffix(broker.Addr(), ":0") {
		t.Errorf("Addr() = %q, want 127.0.0.1 and a real port", broker.Addr())
	}
	if want := "mqtt://" + broker.Addr(); broker.URL() != want {
		t.Errorf("URL() = %q, want %q", broker.URL(), want)
	}
}

func TestWithAddr(t *testing.T) {
	t.Parallel()
	first := testbroker.Start(t)
	addr := first.Addr()
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	broker, err := testbroker.New(testbroker.WithAddr(addr))
	if err != nil {
		t.Skipf("port %s was taken meanwhile: %v", addr, err)
	}
	t.Cleanup(func() { _ = broker.Close() })
	if broker.Addr() != addr {
		t.Errorf("Addr() = %q, want %q", broker.Addr(), addr)
	}
	connect(t, addr, "with-addr")
}

func TestCloseIsIdempotent(t *testing.T) {
	t.Parallel()
	broker, err := testbroker.New()
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t, broker.Addr(), "closing")
	for range 2 {
		if err := broker.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	<-c.Done()
	if err := broker.Restart(); !errors.Is(err, testbroker.ErrClosed) {
		t.Errorf("Restart after Close = %v, want ErrClosed", err)
	}
	if got := broker.ConnectedClients(); len(got) != 0 {
		t.Errorf("ConnectedClients after Close = %v", got)
	}
}

func TestConnectedClients(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	if got := broker.ConnectedClients(); len(got) != 0 {
		t.Errorf("ConnectedClients() = %v, want none", got)
	}
	b := connect(t, broker.Addr(), "client-b")
	connect(t, broker.Addr(), "client-a")
	if got, want := broker.ConnectedClients(), []string{"client-a", "client-b"}; !slices.Equal(got, want) {
		t.Errorf("ConnectedClients() = %v, want %v", got, want)
	}
	if err := b.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "client-b to leave", func() bool {
		return slices.Equal(broker.ConnectedClients(), []string{"client-a"})
	})
}

func TestDisconnect(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	watcher := connect(t, broker.Addr(), "watcher")
	watcher.subscribe(t, paho.SubscribeOptions{Topic: "wills/#", QoS: 1})
	victim := connect(t, broker.Addr(), "victim", func(cp *paho.Connect) {
		cp.WillMessage = &paho.WillMessage{Topic: "wills/victim", Payload: []byte("gone"), QoS: 1}
	})

	if err := broker.Disconnect("victim"); err != nil {
		t.Fatalf("Disconnect: %v", err)
	}
	select {
	case <-victim.Done():
	case <-time.After(hangGuard):
		t.Fatal("the victim's connection was not cut")
	}
	select {
	case d := <-victim.disconnects:
		t.Errorf("the victim received DISCONNECT 0x%02x; the cut must be abrupt", d.ReasonCode)
	default:
	}
	watcher.receivePayload(t, "gone") // an abrupt loss publishes the will
	waitFor(t, "the victim to leave", func() bool {
		return !slices.Contains(broker.ConnectedClients(), "victim")
	})
	if err := broker.Disconnect("victim"); err == nil {
		t.Error("Disconnect of a client no longer connected succeeded")
	}
	if err := broker.Disconnect("nobody"); err == nil {
		t.Error("Disconnect of an unknown client succeeded")
	}
}

func TestRestart(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	addr := broker.Addr()
	before := connect(t, addr, "before-restart")
	broker.DropPublishes("restart/#", 1)

	if err := broker.Restart(); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	select {
	case <-before.Done():
	case <-time.After(hangGuard):
		t.Fatal("a client connected before Restart is still connected")
	}
	if broker.Addr() != addr {
		t.Errorf("Addr() after Restart = %q, want %q", broker.Addr(), addr)
	}
	if got := broker.ConnectedClients(); len(got) != 0 {
		t.Errorf("ConnectedClients() after Restart = %v, want none", got)
	}

	pub, sub := pair(t, broker, "restart/#")
	pub.publish(t, msg("restart/a", "dropped")) // fault rules survive Restart
	pub.publish(t, msg("restart/a", "delivered"))
	sub.receivePayload(t, "delivered")
}

func TestRestartAutopahoReconnects(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	serverURL, err := url.Parse(broker.URL())
	if err != nil {
		t.Fatal(err)
	}
	received := make(chan string, 16)
	cm, err := autopaho.NewConnection(context.Background(), autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{serverURL},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ReconnectBackoff:              autopaho.NewConstantBackoff(20 * time.Millisecond),
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			go func() { // a fresh session: subscribe again
				_, _ = cm.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "auto/#", QoS: 1}}})
				received <- "up"
			}()
		},
		ClientConfig: paho.ClientConfig{
			ClientID: "autopaho",
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				received <- string(pr.Packet.Payload)
				return true, nil
			}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cm.Disconnect(context.Background())
		<-cm.Done()
	})
	expect := func(want string) {
		t.Helper()
		select {
		case got := <-received:
			if got != want {
				t.Fatalf("autopaho client got %q, want %q", got, want)
			}
		case <-time.After(hangGuard):
			t.Fatalf("autopaho client: no %q", want)
		}
	}
	expect("up")

	if err := broker.Restart(); err != nil {
		t.Fatal(err)
	}
	expect("up")
	waitFor(t, "autopaho to reconnect", func() bool {
		return slices.Contains(broker.ConnectedClients(), "autopaho")
	})
	pub := connect(t, broker.Addr(), "auto-pub")
	pub.publish(t, msg("auto/x", "after-restart"))
	expect("after-restart")
}

func TestSharedSubscription(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	members := []*client{connect(t, broker.Addr(), "member-1"), connect(t, broker.Addr(), "member-2")}
	for _, m := range members {
		m.subscribe(t,
			paho.SubscribeOptions{Topic: "$share/workers/jobs/#", QoS: 1},
			paho.SubscribeOptions{Topic: "done/" + m.id, QoS: 1},
		)
	}
	pub := connect(t, broker.Addr(), "jobs-pub")
	jobs := payloads(50, "job")
	for _, job := range jobs {
		pub.publish(t, msg("jobs/"+job, job))
	}
	seen := map[string]string{}
	for _, m := range members {
		// Messages from one publisher arrive in order: everything before the
		// marker has arrived when the marker does.
		pub.publish(t, msg("done/"+m.id, "done"))
		for p := m.receive(t); string(p.Payload) != "done"; p = m.receive(t) {
			if other, ok := seen[string(p.Payload)]; ok {
				t.Errorf("%s delivered to %s and %s", p.Payload, other, m.id)
			}
			seen[string(p.Payload)] = m.id
		}
	}
	for _, job := range jobs {
		if _, ok := seen[job]; !ok {
			t.Errorf("%s was delivered to no member", job)
		}
	}
}

func TestThousandConcurrentQoS1Publishes(t *testing.T) {
	t.Parallel()
	broker := testbroker.Start(t)
	const n = 1000
	// The subscriber announces a small Receive Maximum; delivery must not stall.
	sub := connect(t, broker.Addr(), "many-sub", func(cp *paho.Connect) {
		receiveMaximum := uint16(16)
		cp.Properties = &paho.ConnectProperties{ReceiveMaximum: &receiveMaximum, RequestProblemInfo: true}
	})
	sub.subscribe(t, paho.SubscribeOptions{Topic: "many/#", QoS: 1})
	pub := connect(t, broker.Addr(), "many-pub")

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			resp, err := pub.Publish(timeout(t), msg(fmt.Sprintf("many/%d", i), fmt.Sprint(i)))
			if err == nil && resp.ReasonCode != 0 {
				err = fmt.Errorf("reason 0x%02x", resp.ReasonCode)
			}
			if err != nil {
				errs <- fmt.Errorf("publish %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got := map[string]bool{}
	for range n {
		got[string(sub.receive(t).Payload)] = true
	}
	if len(got) != n {
		t.Errorf("received %d distinct messages, want %d", len(got), n)
	}
}

// TestCloseLeavesNoGoroutines is not parallel: it counts goroutines.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	broker, err := testbroker.New()
	if err != nil {
		t.Fatal(err)
	}
	var clients []*client
	for i := range 3 {
		c := connect(t, broker.Addr(), fmt.Sprintf("leak-%d", i))
		c.subscribe(t, paho.SubscribeOptions{Topic: "leak/#", QoS: 1})
		clients = append(clients, c)
	}
	broker.DelayPublishes("leak/#", 0, time.Hour) // pending deliveries at Close
	clients[0].publish(t, msg("leak/a", "held"))
	if err := broker.Restart(); err != nil {
		t.Fatal(err)
	}
	clients = append(clients, connect(t, broker.Addr(), "leak-after-restart"))
	clients[3].publish(t, msg("leak/b", "held"))
	if err := broker.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		<-c.Done()
	}
	goleak.VerifyNone(t, ignore)
}
