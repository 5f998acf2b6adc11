package generator

import "strconv"

// The streaming methods of a service, in grpc-go's shape: the client gets
// rpc.ServerStreamingClient, rpc.ClientStreamingClient or
// rpc.BidiStreamingClient, the handler the matching server type, and the
// ServiceDesc lists them in Streams.

// streamType is the rpc stream type of a streaming method's side, e.g.
// rpc.ServerStreamingClient[Out].
func streamType(spec methodSpec, side string) []any {
	m := spec.method
	switch {
	case spec.clientStreams && spec.serverStreams:
		return []any{rpcPackage.Ident("BidiStreaming" + side), "[", m.Input.GoIdent, ", ", m.Output.GoIdent, "]"}
	case spec.clientStreams:
		return []any{rpcPackage.Ident("ClientStreaming" + side), "[", m.Input.GoIdent, ", ", m.Output.GoIdent, "]"}
	}
	return []any{rpcPackage.Ident("ServerStreaming" + side), "[", m.Output.GoIdent, "]"}
}

// clientSignature is a client method's parameters and results.
func (w *serviceWriter) clientSignature(spec methodSpec) []any {
	m := spec.method
	ctx, opts := []any{"(ctx ", contextPackage.Ident("Context")}, []any{"opts ...", rpcPackage.Ident("CallOption"), ") "}
	out := append([]any{}, ctx...)
	if !spec.clientStreams {
		out = append(out, ", req *", m.Input.GoIdent)
	}
	out = append(append(out, ", "), opts...)
	if !spec.clientStreams && !spec.serverStreams {
		return append(out, "(*", m.Output.GoIdent, ", error)")
	}
	out = append(out, "(")
	return append(append(out, streamType(spec, "Client")...), ", error)")
}

// serverSignature is a handler's parameters and results; named gives the
// parameters names (the interface) or not (UnimplementedSvcServer).
func (w *serviceWriter) serverSignature(spec methodSpec, named bool) []any {
	m := spec.method
	name := func(n string) string {
		if named {
			return n + " "
		}
		return ""
	}
	out := []any{"(", name("ctx"), contextPackage.Ident("Context")}
	if !spec.clientStreams {
		out = append(out, ", ", name("req"), "*", m.Input.GoIdent)
	}
	if !spec.clientStreams && !spec.serverStreams {
		return append(out, ") (*", m.Output.GoIdent, ", error)")
	}
	out = append(out, ", ", name("stream"))
	return append(append(out, streamType(spec, "Server")...), ") error")
}

// writeClientStream writes the client implementation of a streaming method.
func (w *serviceWriter) writeClientStream(spec methodSpec) {
	g, m, n := w.g, spec.method, w.names
	g.P(append(append([]any{"func (c *", n.clientImpl, ") ", m.GoName}, w.clientSignature(spec)...), " {")...)
	g.P("stream, err := c.", unexport(m.GoName), ".NewStream(ctx, opts...)")
	g.P("if err != nil {")
	g.P("return nil, err")
	g.P("}")
	g.P("x := &", rpcPackage.Ident("GenericClientStream"), "[", m.Input.GoIdent, ", ", m.Output.GoIdent, "]{ClientStream: stream}")
	if !spec.clientStreams {
		g.P("if err := x.ClientStream.SendMsg(req); err != nil {")
		g.P("return nil, err")
		g.P("}")
		g.P("if err := x.ClientStream.CloseSend(); err != nil {")
		g.P("return nil, err")
		g.P("}")
	}
	g.P("return x, nil")
	g.P("}")
	g.P()
}

// writeStreamDescs writes the Streams field of the ServiceDesc.
func (w *serviceWriter) writeStreamDescs() {
	g, n := w.g, w.names
	g.P("Streams: []", rpcPackage.Ident("StreamDesc"), "{")
	for _, spec := range w.methods {
		if !spec.clientStreams && !spec.serverStreams {
			continue
		}
		m := spec.method
		g.P("{")
		g.P("StreamName: ", w.methodNameConst(m), ",")
		if spec.topicTemplate == "" {
			g.P("TopicTemplate: ", rpcPackage.Ident("DefaultTopicTemplate"), ",")
		} else {
			g.P("TopicTemplate: ", strconv.Quote(spec.topicTemplate), ",")
		}
		g.P("QoS: ", qosIdent(spec.qos), ",")
		if spec.serverStreams {
			g.P("ServerStreams: true,")
		}
		if spec.clientStreams {
			g.P("ClientStreams: true,")
		}
		g.P("Handler: func(srv any, stream ", rpcPackage.Ident("ServerStream"), ") error {")
		typed := []any{"&", rpcPackage.Ident("GenericServerStream"), "[", m.Input.GoIdent, ", ", m.Output.GoIdent, "]{ServerStream: stream}"}
		if spec.clientStreams {
			g.P(append(append([]any{"return srv.(", n.server, ").", m.GoName, "(stream.Context(), "}, typed...), ")")...)
		} else {
			g.P("req := new(", m.Input.GoIdent, ")")
			g.P("if err := stream.RecvMsg(req); err != nil {")
			g.P("return err")
			g.P("}")
			g.P(append(append([]any{"return srv.(", n.server, ").", m.GoName, "(stream.Context(), req, "}, typed...), ")")...)
		}
		g.P("},")
		g.P("},")
	}
	g.P("},")
}
