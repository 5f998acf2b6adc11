package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// Raw MQTT 5 echo with paho.golang, the bound: a requester publishes QoS 1
// with ResponseTopic and CorrelationData, a responder republishes the
// payload to the ResponseTopic with the same CorrelationData. Nothing else
// is on the wire: no expiry, no user properties.

const (
	rawRequestTopic      = "bench/raw/echo"
	rawPropsRequestTopic = "bench/raw/echo-props"
)

// connect starts an autopaho connection and waits for it.
func connect(ctx context.Context, brokerURL, clientID string, onPublish func(paho.PublishReceived) (bool, error)) (*autopaho.ConnectionManager, error) {
	u, err := url.Parse(brokerURL)
	if err != nil {
		return nil, err
	}
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ConnectTimeout:                5 * time.Second,
		ClientConfig:                  paho.ClientConfig{ClientID: clientID},
	}
	if onPublish != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){onPublish}
	}
	cm, err := autopaho.NewConnection(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	if err := cm.AwaitConnection(ctx); err != nil {
		_ = cm.Disconnect(context.Background())
		return nil, fmt.Errorf("connect %s to %s: %w", clientID, brokerURL, err)
	}
	return cm, nil
}

func subscribe(ctx context.Context, cm *autopaho.ConnectionManager, topic string) error {
	_, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}})
	return err
}

// rawResponder answers on requestTopic. Each answer is published from its
// own goroutine, since paho delivers messages on one goroutine and a QoS 1
// publish waits for its PUBACK.
type rawResponder struct {
	cm *autopaho.ConnectionManager
	wg sync.WaitGroup
}

// startRawResponder answers requests on requestTopic. With protocolProps it
// sends what an mqttrpc server sends along to an OK answer of a unicast
// protobuf call: the expiry.
func startRawResponder(ctx context.Context, brokerURL, clientID, requestTopic string, protocolProps bool) (*rawResponder, error) {
	r := &rawResponder{}
	cm, err := connect(ctx, brokerURL, clientID, func(pr paho.PublishReceived) (bool, error) {
		p := pr.Packet
		if p.Properties == nil || p.Properties.ResponseTopic == "" {
			return true, nil
		}
		props := &paho.PublishProperties{CorrelationData: p.Properties.CorrelationData}
		if protocolProps {
			expiry := uint32(10)
			props.MessageExpiry = &expiry
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			_, _ = r.cm.Publish(ctx, &paho.Publish{
				QoS:        1,
				Topic:      p.Properties.ResponseTopic,
				Properties: props,
				Payload:    p.Payload,
			})
		}()
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	r.cm = cm
	if err := subscribe(ctx, cm, requestTopic); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *rawResponder) close() {
	_ = r.cm.Disconnect(context.Background())
	r.wg.Wait()
}

// rawRequester calls the responder.
type rawRequester struct {
	cm            *autopaho.ConnectionManager
	requestTopic  string
	protocolProps bool // send what an mqttrpc client sends along
	responseTopic string
	seq           atomic.Uint64
	mu            sync.Mutex
	pending       map[[16]byte]chan *paho.Publish
}

func startRawRequester(ctx context.Context, brokerURL, clientID, requestTopic string, protocolProps bool) (*rawRequester, error) {
	r := &rawRequester{requestTopic: requestTopic, protocolProps: protocolProps, responseTopic: "bench/raw/responses/" + clientID, pending: map[[16]byte]chan *paho.Publish{}}
	cm, err := connect(ctx, brokerURL, clientID, func(pr paho.PublishReceived) (bool, error) {
		p := pr.Packet
		var id [16]byte
		if p.Properties == nil || len(p.Properties.CorrelationData) != len(id) {
			return true, nil
		}
		copy(id[:], p.Properties.CorrelationData)
		r.mu.Lock()
		ch := r.pending[id]
		delete(r.pending, id)
		r.mu.Unlock()
		if ch != nil {
			ch <- p
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	r.cm = cm
	if err := subscribe(ctx, cm, r.responseTopic); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *rawRequester) call(ctx context.Context, payload []byte) error {
	var id [16]byte
	binary.BigEndian.PutUint64(id[8:], r.seq.Add(1))
	ch := make(chan *paho.Publish, 1)
	r.mu.Lock()
	r.pending[id] = ch
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.pending, id)
		r.mu.Unlock()
	}()
	props := &paho.PublishProperties{ResponseTopic: r.responseTopic, CorrelationData: id[:]}
	if r.protocolProps {
		expiry := uint32(10)
		props.MessageExpiry = &expiry
		props.User = paho.UserProperties{{Key: "mqttrpc-timeout", Value: "9999"}}
	}
	_, err := r.cm.Publish(ctx, &paho.Publish{
		QoS:        1,
		Topic:      r.requestTopic,
		Properties: props,
		Payload:    payload,
	})
	if err != nil {
		return err
	}
	select {
	case p := <-ch:
		if len(p.Payload) != len(payload) {
			return fmt.Errorf("echo of %d bytes, want %d", len(p.Payload), len(payload))
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *rawRequester) close() { _ = r.cm.Disconnect(context.Background()) }
