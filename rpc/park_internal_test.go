package rpc

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/testbroker"
)

// A packet parked for a Server still to come is released when its time is
// up, even if nothing else arrives on the connection afterwards.
func TestParkedPacketReleasedOnTime(t *testing.T) {
	tb := testbroker.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A persistent session acknowledges after handling: what nobody
	// claims is parked, unacknowledged.
	parked := make(chan int, 100)
	shortPark := connOptionFunc(func(c *connConfig) {
		c.parkTime = 300 * time.Millisecond
		c.onParked = func(n int) { parked <- n }
	})
	conn, err := Dial(ctx, tb.URL(), WithClientID("parker"), WithSessionExpiry(time.Minute), shortPark)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if _, err := conn.Manager().Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "park/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	pub, err := Dial(ctx, tb.URL(), WithClientID("publisher"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pub.Close(context.Background()) }()
	if _, err := pub.Manager().Publish(ctx, &paho.Publish{Topic: "park/1", QoS: 1, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}

	timeout := time.After(20 * time.Second)
	for _, want := range []int{1, 0} {
		for got := -1; got != want; {
			select {
			case got = <-parked:
			case <-timeout:
				t.Fatalf("%d packets parked, want %d within 20s", got, want)
			}
		}
	}
}
