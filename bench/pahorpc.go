package main

import (
	"context"
	"fmt"

	"github.com/eclipse/paho.golang/autopaho"
	pahorpc "github.com/eclipse/paho.golang/autopaho/extensions/rpc"
	"github.com/eclipse/paho.golang/paho"
)

// paho.golang's autopaho/extensions/rpc, what users of paho have today,
// calling the raw responder.
type pahoRPCRequester struct {
	cm      *autopaho.ConnectionManager
	handler *pahorpc.Handler
}

func startPahoRPC(ctx context.Context, brokerURL, clientID string) (*pahoRPCRequester, error) {
	router := paho.NewStandardRouter()
	cm, err := connect(ctx, brokerURL, clientID, func(pr paho.PublishReceived) (bool, error) {
		router.Route(pr.Packet.Packet())
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	h, err := pahorpc.NewHandler(ctx, pahorpc.HandlerOpts{
		Conn:             cm,
		Router:           router,
		ResponseTopicFmt: "bench/pahorpc/responses/%s",
		ClientID:         clientID,
	})
	if err != nil {
		_ = cm.Disconnect(context.Background())
		return nil, err
	}
	return &pahoRPCRequester{cm: cm, handler: h}, nil
}

func (r *pahoRPCRequester) call(ctx context.Context, payload []byte) error {
	resp, err := r.handler.Request(ctx, &paho.Publish{QoS: 1, Topic: rawRequestTopic, Payload: payload})
	if err != nil {
		return err
	}
	if len(resp.Payload) != len(payload) {
		return fmt.Errorf("echo of %d bytes, want %d", len(resp.Payload), len(payload))
	}
	return nil
}

func (r *pahoRPCRequester) close() { _ = r.cm.Disconnect(context.Background()) }
