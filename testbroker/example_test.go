package testbroker_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// A broker for a program or an example: start it, point clients at URL (or
// Addr), close it. Tests use testbroker.Start(t) instead.
func Example() {
	broker, err := testbroker.New()
	if err != nil {
		panic(err)
	}
	defer broker.Close()
	fmt.Println(strings.HasPrefix(broker.URL(), "mqtt://127.0.0.1:"))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := net.Dial("tcp", broker.Addr())
	if err != nil {
		panic(err)
	}
	received := make(chan *paho.Publish, 1)
	client := paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			received <- pr.Packet
			return true, nil
		}},
	})
	if _, err := client.Connect(ctx, &paho.Connect{ClientID: "example", CleanStart: true, KeepAlive: 30}); err != nil {
		panic(err)
	}
	defer client.Disconnect(&paho.Disconnect{})
	if _, err := client.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "greetings/#", QoS: 1}}}); err != nil {
		panic(err)
	}
	ack, err := client.Publish(ctx, &paho.Publish{QoS: 1, Topic: "greetings/world", Payload: []byte("hello")})
	if err != nil {
		panic(err)
	}
	fmt.Printf("PUBACK reason code: 0x%02x\n", ack.ReasonCode)
	msg := <-received
	fmt.Printf("%s: %s\n", msg.Topic, msg.Payload)
	// Output:
	// true
	// PUBACK reason code: 0x00
	// greetings/world: hello
}

// Fault rules count down: here the first matching publish is lost, the
// second one is delivered.
func ExampleBroker_DropPublishes() {
	broker, err := testbroker.New()
	if err != nil {
		panic(err)
	}
	defer broker.Close()
	broker.DropPublishes("sensors/+/temperature", 1)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := net.Dial("tcp", broker.Addr())
	if err != nil {
		panic(err)
	}
	received := make(chan *paho.Publish, 2)
	client := paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			received <- pr.Packet
			return true, nil
		}},
	})
	if _, err := client.Connect(ctx, &paho.Connect{ClientID: "example-drop", CleanStart: true, KeepAlive: 30}); err != nil {
		panic(err)
	}
	defer client.Disconnect(&paho.Disconnect{})
	if _, err := client.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "sensors/#", QoS: 1}}}); err != nil {
		panic(err)
	}
	for _, reading := range []string{"21.5", "21.7"} {
		if _, err := client.Publish(ctx, &paho.Publish{QoS: 1, Topic: "sensors/kitchen/temperature", Payload: []byte(reading)}); err != nil {
			panic(err)
		}
	}
	msg := <-received
	fmt.Printf("%s: %s\n", msg.Topic, msg.Payload)
	// Output:
	// sensors/kitchen/temperature: 21.7
}
