package main

// Streaming methods from the command line: call runs them here.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// stream runs a streaming method: the request (server streaming) or JSON
// lines of stdin or -d (client and bidi streaming) go out, each message
// that comes back is printed on a line of its own as it arrives.
func (a *app) stream(ctx context.Context, s *schema, m protoreflect.MethodDescriptor, stub *rpc.Stub, req *dynamicpb.Message, text []byte, opts []rpc.CallOption) error {
	stream, err := stub.NewStream(ctx, opts...)
	if err != nil {
		return asFailure(err)
	}
	sendErr := make(chan error, 1)
	if m.IsStreamingClient() {
		go func() { sendErr <- a.sendLines(s, m, stream, text) }()
	} else {
		if err := stream.SendMsg(req); err != nil {
			return asFailure(err)
		}
		sendErr <- nil
	}
	// -v: the headers once the first message came; a stream that ends
	// before any has them in its final message, with the trailers.
	headersShown := false
	trailers := func() {
		if headersShown {
			a.printMetadata("trailers", stream.Trailer())
		} else {
			a.printMetadata("response metadata and trailers", stream.Trailer())
		}
	}
	for {
		resp := dynamicpb.NewMessage(m.Output())
		err := stream.RecvMsg(resp)
		if errors.Is(err, io.EOF) {
			trailers()
			return <-sendErr
		}
		if err != nil {
			trailers()
			if serr := <-sendErr; serr != nil && rpc.CodeOf(err) == rpc.Canceled {
				return serr
			}
			return asFailure(err)
		}
		if !headersShown {
			headersShown = true
			if md, err := stream.Header(); err == nil {
				a.printMetadata("response metadata", md)
			}
		}
		// A server's many messages one per line; a client stream's one
		// answer as a unary call's.
		if err := a.print(s, resp, m.IsStreamingServer()); err != nil {
			return err
		}
	}
}

// sendLines sends the JSON objects of text, one per line (text is -d's;
// a client stream with no -d reads stdin), then half-closes. -d '{}' is
// one empty message, not a request to read stdin.
func (a *app) sendLines(s *schema, m protoreflect.MethodDescriptor, stream rpc.ClientStream, text []byte) error {
	var r io.Reader = a.stdin
	if text != nil {
		r = strings.NewReader(string(text))
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		msg, err := s.decodeRequest(m, []byte(line))
		if err != nil {
			_ = stream.CloseReceive()
			return usagef("line %d: %v", n, err)
		}
		if err := stream.SendMsg(msg); err != nil {
			return nil // the stream ended: RecvMsg reports why
		}
	}
	if err := sc.Err(); err != nil {
		_ = stream.CloseReceive()
		return fmt.Errorf("reading the stream's messages: %v", err)
	}
	_ = stream.CloseSend()
	return nil
}
