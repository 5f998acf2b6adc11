package main

import (
	"context"
	"fmt"
	"net"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mqttrpc/mqttrpc/bench/benchv1"
)

// What users would pick instead of RPC over MQTT: NATS request-reply with
// an embedded nats-server, and gRPC-Go unary, both over loopback.

type natsPeer struct {
	server               *natsserver.Server
	requester, responder *nats.Conn
}

func startNATS() (*natsPeer, error) {
	s, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: natsserver.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		return nil, err
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("nats-server did not start")
	}
	p := &natsPeer{server: s}
	if p.responder, err = nats.Connect(s.ClientURL()); err != nil {
		p.close()
		return nil, err
	}
	if _, err = p.responder.Subscribe("bench.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		p.close()
		return nil, err
	}
	if err := p.responder.Flush(); err != nil {
		p.close()
		return nil, err
	}
	if p.requester, err = nats.Connect(s.ClientURL()); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

func (p *natsPeer) call(ctx context.Context, payload []byte) error {
	m, err := p.requester.RequestWithContext(ctx, "bench.echo", payload)
	if err != nil {
		return err
	}
	if len(m.Data) != len(payload) {
		return fmt.Errorf("echo of %d bytes, want %d", len(m.Data), len(payload))
	}
	return nil
}

func (p *natsPeer) close() {
	if p.requester != nil {
		p.requester.Close()
	}
	if p.responder != nil {
		p.responder.Close()
	}
	p.server.Shutdown()
	p.server.WaitForShutdown()
}

// grpcEchoServer is the gRPC service, declared by hand as
// protoc-gen-go-grpc would (the messages are benchv1's).
type grpcEchoServer interface {
	Echo(context.Context, *benchv1.EchoRequest) (*benchv1.EchoResponse, error)
}

type grpcEcho struct{}

func (grpcEcho) Echo(_ context.Context, req *benchv1.EchoRequest) (*benchv1.EchoResponse, error) {
	return &benchv1.EchoResponse{Payload: req.GetPayload()}, nil
}

var grpcEchoDesc = grpc.ServiceDesc{
	ServiceName: "mqttrpc.bench.v1.Echo",
	HandlerType: (*grpcEchoServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(benchv1.EchoRequest)
			if err := dec(in); err != nil {
				return nil, err
			}
			return srv.(grpcEchoServer).Echo(ctx, in)
		},
	}},
}

type grpcPeer struct {
	server *grpc.Server
	conn   *grpc.ClientConn
	done   chan struct{}
}

func startGRPC() (*grpcPeer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &grpcPeer{server: grpc.NewServer(), done: make(chan struct{})}
	p.server.RegisterService(&grpcEchoDesc, grpcEcho{})
	go func() {
		defer close(p.done)
		_ = p.server.Serve(ln)
	}()
	p.conn, err = grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

func (p *grpcPeer) call(ctx context.Context, payload []byte) error {
	out := new(benchv1.EchoResponse)
	if err := p.conn.Invoke(ctx, "/mqttrpc.bench.v1.Echo/Echo", &benchv1.EchoRequest{Payload: payload}, out); err != nil {
		return err
	}
	if len(out.GetPayload()) != len(payload) {
		return fmt.Errorf("echo of %d bytes, want %d", len(out.GetPayload()), len(payload))
	}
	return nil
}

func (p *grpcPeer) close() {
	if p.conn != nil {
		_ = p.conn.Close()
	}
	p.server.Stop()
	<-p.done
}
