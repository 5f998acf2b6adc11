package main

import (
	"context"
	"fmt"

	"github.com/mqttrpc/mqttrpc/bench/benchv1"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// mqttrpc unary calls through the generated stub of benchv1.Echo, protobuf
// codec, QoS 1, with one server on its own connection.

const benchServerID = "bench-server"

// Each pair has its own server ID: two servers with one ID would both
// answer every call.
type echoServer struct {
	benchv1.UnimplementedEchoServer
}

func (echoServer) Echo(_ context.Context, req *benchv1.EchoRequest) (*benchv1.EchoResponse, error) {
	return &benchv1.EchoResponse{Payload: req.GetPayload()}, nil
}

type mqttrpcPair struct {
	serverConn, clientConn *rpc.Conn
	server                 *rpc.Server
	client                 *rpc.Client
	stub                   benchv1.EchoClient
}

// startMQTTRPC starts a server and a client, both with connOpts.
func startMQTTRPC(ctx context.Context, brokerURL, prefix string, connOpts ...rpc.ConnOption) (*mqttrpcPair, error) {
	p := &mqttrpcPair{}
	var err error
	p.serverConn, err = rpc.Dial(ctx, brokerURL, append([]rpc.ConnOption{rpc.WithClientID(prefix + "-server")}, connOpts...)...)
	if err != nil {
		return nil, err
	}
	p.server = rpc.NewServer(p.serverConn, rpc.WithServerID(prefix+"-server"))
	benchv1.RegisterEchoServer(p.server, echoServer{})
	if err := p.server.Start(ctx); err != nil {
		p.close()
		return nil, err
	}
	p.clientConn, err = rpc.Dial(ctx, brokerURL, append([]rpc.ConnOption{rpc.WithClientID(prefix + "-client")}, connOpts...)...)
	if err != nil {
		p.close()
		return nil, err
	}
	p.client = rpc.NewClient(p.clientConn)
	p.stub = benchv1.NewEchoClient(p.client, rpc.To(prefix+"-server"))
	return p, nil
}

func (p *mqttrpcPair) call(ctx context.Context, payload []byte) error {
	resp, err := p.stub.Echo(ctx, &benchv1.EchoRequest{Payload: payload})
	if err != nil {
		return err
	}
	if len(resp.GetPayload()) != len(payload) {
		return fmt.Errorf("echo of %d bytes, want %d", len(resp.GetPayload()), len(payload))
	}
	return nil
}

func (p *mqttrpcPair) close() {
	ctx := context.Background()
	if p.client != nil {
		_ = p.client.Close(ctx)
	}
	if p.server != nil {
		_ = p.server.Shutdown(ctx)
	}
	if p.clientConn != nil {
		_ = p.clientConn.Close(ctx)
	}
	if p.serverConn != nil {
		_ = p.serverConn.Close(ctx)
	}
}
