package generator

import (
	"strconv"
	"strings"

	"google.golang.org/protobuf/compiler/protogen"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// serviceWriter writes the declarations of one service.
type serviceWriter struct {
	g          *protogen.GeneratedFile
	file       *protogen.File
	service    *protogen.Service
	methods    []methodSpec
	deprecated bool
	names      serviceNames
}

// serviceNames are the Go names declared for a service Svc.
type serviceNames struct {
	nameConst     string // SvcName
	desc          string // SvcServiceDesc
	client        string // SvcClient
	newClient     string // NewSvcClient
	clientImpl    string // svcClient
	server        string // SvcServer
	unimplemented string // UnimplementedSvcServer
	register      string // RegisterSvcServer
}

func newServiceWriter(g *protogen.GeneratedFile, file *protogen.File, service *protogen.Service, methods []methodSpec) *serviceWriter {
	base := service.GoName
	return &serviceWriter{
		g:          g,
		file:       file,
		service:    service,
		methods:    methods,
		deprecated: isDeprecatedService(service),
		names: serviceNames{
			nameConst:     base + "Name",
			desc:          base + "ServiceDesc",
			client:        base + "Client",
			newClient:     "New" + base + "Client",
			clientImpl:    unexport(base) + "Client",
			server:        base + "Server",
			unimplemented: "Unimplemented" + base + "Server",
			register:      "Register" + base + "Server",
		},
	}
}

// methodNameConst is the name of the constant holding a method's name.
func (w *serviceWriter) methodNameConst(m *protogen.Method) string {
	return w.service.GoName + m.GoName + "Method"
}

func (w *serviceWriter) write() {
	w.writeNames()
	w.writeClient()
	w.writeServer()
	w.writeDesc()
}

func (w *serviceWriter) writeNames() {
	g, svc := w.g, w.service
	wrapComment(g, w.names.nameConst+" is the full name of the "+string(svc.Desc.FullName())+
		" service, the {service} token of its request topics.")
	g.P("const ", w.names.nameConst, " = ", strconv.Quote(string(svc.Desc.FullName())))
	g.P()
	if len(w.methods) == 0 {
		return
	}
	wrapComment(g, "Names of the methods of the "+svc.GoName+" service, the {method} token of their request topics.")
	g.P("const (")
	for _, spec := range w.methods {
		m := spec.method
		wrapComment(g, w.methodNameConst(m)+" is the name of the "+svc.GoName+"."+m.GoName+" method.")
		g.P(w.methodNameConst(m), " = ", strconv.Quote(string(m.Desc.Name())))
	}
	g.P(")")
	g.P()
}

func (w *serviceWriter) writeClient() {
	g, svc, n := w.g, w.service, w.names
	callOption := rpcPackage.Ident("CallOption")

	docComment(g, n.client+" is a client of the "+string(svc.Desc.FullName())+" service.",
		svc.Comments.Leading, w.deprecated)
	g.AnnotateSymbol(n.client, protogen.Annotation{Location: svc.Location})
	g.P("type ", n.client, " interface {")
	for _, spec := range w.methods {
		m := spec.method
		methodComment(g, m.Comments.Leading, m.GoName+" calls "+string(m.Desc.FullName())+".", isDeprecatedMethod(m))
		g.AnnotateSymbol(n.client+"."+m.GoName, protogen.Annotation{Location: m.Location})
		g.P(append([]any{m.GoName}, w.clientSignature(spec)...)...)
		if spec.broadcastName != "" {
			methodComment(g, "", w.broadcastSummary(spec), isDeprecatedMethod(m))
			g.AnnotateSymbol(n.client+"."+spec.broadcastName, protogen.Annotation{Location: m.Location})
			g.P(append([]any{spec.broadcastName}, w.broadcastSignature(spec)...)...)
		}
	}
	g.P("}")
	g.P()

	wrapComment(g, n.newClient+" returns a client of the "+svc.GoName+" service that calls through c. "+
		"The options apply to every call, before the options given to the call itself.")
	if w.deprecated {
		g.P("//")
		g.P(deprecationNotice)
	}
	g.P("func ", n.newClient, "(c *", rpcPackage.Ident("Client"), ", opts ...", callOption, ") ", n.client, " {")
	g.P("return &", n.clientImpl, "{")
	for _, spec := range w.methods {
		m := spec.method
		g.P(unexport(m.GoName), ": c.Stub(&", n.desc, ", ", w.methodNameConst(m), ", opts...),")
	}
	g.P("}")
	g.P("}")
	g.P()

	wrapComment(g, n.clientImpl+" implements "+n.client+" with one stub per method.")
	g.P("type ", n.clientImpl, " struct {")
	for _, spec := range w.methods {
		g.P(unexport(spec.method.GoName), " *", rpcPackage.Ident("Stub"))
	}
	g.P("}")
	g.P()

	for _, spec := range w.methods {
		m := spec.method
		wrapComment(g, m.GoName+" calls "+string(m.Desc.FullName())+".")
		if isDeprecatedMethod(m) {
			g.P("//")
			g.P(deprecationNotice)
		}
		if spec.clientStreams || spec.serverStreams {
			w.writeClientStream(spec)
			continue
		}
		g.P("func (c *", n.clientImpl, ") ", m.GoName, "(ctx ", contextPackage.Ident("Context"), ", req *", m.Input.GoIdent,
			", opts ...", callOption, ") (*", m.Output.GoIdent, ", error) {")
		g.P("resp := new(", m.Output.GoIdent, ")")
		g.P("if err := c.", unexport(m.GoName), ".Invoke(ctx, req, resp, opts...); err != nil {")
		g.P("return nil, err")
		g.P("}")
		g.P("return resp, nil")
		g.P("}")
		g.P()
		w.writeClientBroadcast(spec)
	}
}

// broadcastSummary is the doc comment of a unary method's broadcast form.
func (w *serviceWriter) broadcastSummary(spec methodSpec) string {
	m := spec.method
	return spec.broadcastName + " calls " + string(m.Desc.FullName()) + " on every server of the service " +
		"(target _all) and yields each server's reply as it arrives. With presence known complete " +
		"(rpc.WatchFleet) it ends when every online server has answered and reports those that did not; " +
		"without, at ctx's deadline. See rpc.Broadcast."
}

// broadcastSignature is the parameters and result of a unary method's
// broadcast form.
func (w *serviceWriter) broadcastSignature(spec methodSpec) []any {
	m := spec.method
	return []any{"(ctx ", contextPackage.Ident("Context"), ", req *", m.Input.GoIdent,
		", opts ...", rpcPackage.Ident("CallOption"), ") ",
		iterPackage.Ident("Seq"), "[", rpcPackage.Ident("Reply"), "[", m.Output.GoIdent, "]]"}
}

// writeClientBroadcast writes the broadcast form of a unary method, a
// typed rpc.Broadcast through the method's stub.
func (w *serviceWriter) writeClientBroadcast(spec methodSpec) {
	g, m, n := w.g, spec.method, w.names
	wrapComment(g, spec.broadcastName+" calls "+string(m.Desc.FullName())+" on every server of the service (target _all).")
	if isDeprecatedMethod(m) {
		g.P("//")
		g.P(deprecationNotice)
	}
	g.P(append(append([]any{"func (c *", n.clientImpl, ") ", spec.broadcastName}, w.broadcastSignature(spec)...), " {")...)
	g.P("return ", rpcPackage.Ident("Broadcast"), "[", m.Output.GoIdent, "](ctx, c.", unexport(m.GoName), ", req, opts...)")
	g.P("}")
	g.P()
}

func (w *serviceWriter) writeServer() {
	g, svc, n := w.g, w.service, w.names

	docComment(g, n.server+" is the server API of the "+string(svc.Desc.FullName())+" service. "+
		"Implementations embed "+n.unimplemented+" and are registered with "+n.register+".",
		svc.Comments.Leading, w.deprecated)
	g.AnnotateSymbol(n.server, protogen.Annotation{Location: svc.Location})
	g.P("type ", n.server, " interface {")
	for _, spec := range w.methods {
		m := spec.method
		methodComment(g, m.Comments.Leading, m.GoName+" serves "+string(m.Desc.FullName())+".", isDeprecatedMethod(m))
		g.AnnotateSymbol(n.server+"."+m.GoName, protogen.Annotation{Location: m.Location})
		g.P(append([]any{m.GoName}, w.serverSignature(spec, true)...)...)
	}
	g.P("}")
	g.P()

	wrapComment(g, n.unimplemented+" answers every method of "+n.server+" with an Unimplemented error. "+
		"Embed it by value in implementations, so that they keep compiling when methods are added to the service.")
	g.P("type ", n.unimplemented, " struct{}")
	g.P()
	for _, spec := range w.methods {
		m := spec.method
		wrapComment(g, m.GoName+" returns an Unimplemented error.")
		g.P(append(append([]any{"func (", n.unimplemented, ") ", m.GoName}, w.serverSignature(spec, false)...), " {")...)
		nilResult := "nil, "
		if spec.clientStreams || spec.serverStreams {
			nilResult = ""
		}
		g.P("return ", nilResult, rpcPackage.Ident("Errorf"), "(", rpcPackage.Ident("Unimplemented"), ", ",
			strconv.Quote("method "+string(m.Desc.Name())+" not implemented"), ")")
		g.P("}")
		g.P()
	}

	wrapComment(g, n.register+" registers srv with s, which then serves the "+svc.GoName+
		" service's requests. The options apply to this service only. "+
		"Like rpc.Server.RegisterService, it panics on programming errors.")
	if w.deprecated {
		g.P("//")
		g.P(deprecationNotice)
	}
	g.P("func ", n.register, "(s *", rpcPackage.Ident("Server"), ", srv ", n.server,
		", opts ...", rpcPackage.Ident("ServiceOption"), ") {")
	g.P("s.RegisterService(&", n.desc, ", srv, opts...)")
	g.P("}")
	g.P()
}

func (w *serviceWriter) writeDesc() {
	g, svc, n := w.g, w.service, w.names
	wrapComment(g, n.desc+" describes the "+svc.GoName+" service for rpc.Server.RegisterService "+
		"and rpc.Client.Stub, with the topic template, QoS and idempotency of each method "+
		"resolved from the .proto options. "+n.register+" and "+n.newClient+" use it; "+
		"it is not meant to be modified.")
	g.P("var ", n.desc, " = ", rpcPackage.Ident("ServiceDesc"), "{")
	g.P("ServiceName: ", n.nameConst, ",")
	g.P("HandlerType: (*", n.server, ")(nil),")
	g.P("Methods: []", rpcPackage.Ident("MethodDesc"), "{")
	streams := false
	for _, spec := range w.methods {
		m := spec.method
		if spec.clientStreams || spec.serverStreams {
			streams = true
			continue
		}
		g.P("{")
		g.P("MethodName: ", w.methodNameConst(m), ",")
		if spec.topicTemplate == "" {
			g.P("TopicTemplate: ", rpcPackage.Ident("DefaultTopicTemplate"), ",")
		} else {
			g.P("TopicTemplate: ", strconv.Quote(spec.topicTemplate), ",")
		}
		g.P("QoS: ", qosIdent(spec.qos), ",")
		g.P("Idempotency: ", idempotencyIdent(spec.idempotency), ",")
		g.P("NewRequest: func() any { return new(", m.Input.GoIdent, ") },")
		g.P("Handler: func(srv any, ctx ", contextPackage.Ident("Context"), ", req any) (any, error) {")
		g.P("return srv.(", n.server, ").", m.GoName, "(ctx, req.(*", m.Input.GoIdent, "))")
		g.P("},")
		g.P("},")
	}
	g.P("},")
	if streams {
		w.writeStreamDescs()
	}
	g.P("Metadata: ", strconv.Quote(w.file.Desc.Path()), ",")
	g.P("}")
	g.P()
}

func qosIdent(q rpc.QoS) protogen.GoIdent {
	switch q {
	case rpc.QoS0:
		return rpcPackage.Ident("QoS0")
	case rpc.QoS2:
		return rpcPackage.Ident("QoS2")
	}
	return rpcPackage.Ident("QoS1")
}

func idempotencyIdent(i rpc.Idempotency) protogen.GoIdent {
	switch i {
	case rpc.NoSideEffects:
		return rpcPackage.Ident("NoSideEffects")
	case rpc.Idempotent:
		return rpcPackage.Ident("Idempotent")
	}
	return rpcPackage.Ident("IdempotencyUnknown")
}

// unexport lower-cases the first letter of a Go name, for the fields of the
// client implementation; a Go keyword gets a trailing underscore.
func unexport(s string) string {
	if s == "" {
		return s
	}
	lower := strings.ToLower(s[:1]) + s[1:]
	switch lower {
	case "break", "case", "chan", "const", "continue", "default", "defer", "else",
		"fallthrough", "for", "func", "go", "goto", "if", "import", "interface",
		"map", "package", "range", "return", "select", "struct", "switch", "type", "var":
		return lower + "_"
	}
	return lower
}
