package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// rpcFailure is a call that failed with an RPC error: the exit status is
// 64 + its code.
type rpcFailure struct {
	err   *rpc.Error
	quiet bool // already reported on stderr
}

func (f *rpcFailure) Error() string { return f.err.Error() }

// callFlags are the flags of call and broadcast.
type callFlags struct {
	target  string
	any     bool
	data    string
	headers listFlag
	tokens  listFlag
	timeout time.Duration
	qos     int
}

func (c *callFlags) register(fs *flag.FlagSet, unicast bool) {
	c.qos = -1 // the method's, unless -qos says otherwise
	if unicast {
		fs.StringVar(&c.target, "t", "", "the `ID` of the server to call")
		fs.BoolVar(&c.any, "any", false, "call any one server of the service's share group (target _any)")
		fs.Func("qos", "QoS `0|1|2` of the request (default: the method's, 1 unless its proto option says otherwise)", func(v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 2 {
				return fmt.Errorf("want 0, 1 or 2")
			}
			c.qos = n
			return nil
		})
	}
	fs.StringVar(&c.data, "d", "", "the request as JSON, @FILE to read it from a file, @- from stdin (default {}); for a client stream, JSON objects one per line (default: stdin)")
	fs.Var(&c.headers, "H", "request metadata `key=value` (repeatable)")
	fs.Var(&c.tokens, "token", "a value for a custom token of the method's topic template, `name=value` (repeatable; e.g. --token site=north for plant/{site}/{target}/{method})")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "the call's `deadline`")
}

// globalFlagHint says, after a command's flags failed to parse on a flag
// that is a global one, that global flags go before the command.
func globalFlagHint(stderr io.Writer, err error) {
	name, found := strings.CutPrefix(err.Error(), "flag provided but not defined: -")
	if !found {
		return
	}
	name = strings.TrimPrefix(name, "-")
	probe := flag.NewFlagSet("", flag.ContinueOnError)
	var g globalFlags
	g.register(probe)
	if probe.Lookup(name) != nil {
		fmt.Fprintf(stderr, "mqttrpc: -%s is a global flag: give it before the command (mqttrpc -%s … COMMAND …)\n", name, name)
	}
}

// parse parses a command's flags and its one SERVICE/METHOD argument.
func parseCommand(name string, args []string, stderr io.Writer, register func(*flag.FlagSet)) (string, error) {
	fs := flag.NewFlagSet("mqttrpc "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	register(fs)
	if err := fs.Parse(args); err != nil {
		globalFlagHint(stderr, err)
		return "", flagError{help: errors.Is(err, flag.ErrHelp)}
	}
	if fs.NArg() != 1 {
		return "", usagef("%s takes one SERVICE/METHOD after its flags (got %d arguments)", name, fs.NArg())
	}
	return fs.Arg(0), nil
}

func (c *callFlags) options() ([]rpc.CallOption, error) {
	var opts []rpc.CallOption
	if len(c.headers) > 0 {
		md := rpc.Metadata{}
		for _, h := range c.headers {
			k, v, ok := strings.Cut(h, "=")
			if !ok || k == "" {
				return nil, usagef("-H %q: want key=value", h)
			}
			if strings.HasSuffix(strings.ToLower(k), "-bin") {
				// Binary metadata: the value is given in base64, as to
				// grpcurl, and goes as bytes.
				b, err := base64.StdEncoding.DecodeString(v)
				if err != nil {
					if b, err = base64.RawStdEncoding.DecodeString(v); err != nil {
						return nil, usagef("-H %s: a -bin key takes its value in base64: %v", k, err)
					}
				}
				v = string(b)
			}
			md.Add(k, v)
		}
		opts = append(opts, rpc.WithMetadata(md))
	}
	for _, tok := range c.tokens {
		k, v, ok := strings.Cut(tok, "=")
		if !ok || k == "" {
			return nil, usagef("--token %q: want name=value", tok)
		}
		opts = append(opts, rpc.WithToken(k, v))
	}
	if c.qos >= 0 {
		if c.qos > 2 {
			return nil, usagef("--qos %d: MQTT has QoS 0, 1 and 2", c.qos)
		}
		opts = append(opts, rpc.WithQoS(rpc.QoS(c.qos)))
	}
	if c.timeout <= 0 {
		return nil, usagef("--timeout %v: a call needs a positive deadline", c.timeout)
	}
	return opts, nil
}

// readData returns the text of -d; nil without -d.
func (a *app) readData(data string) ([]byte, error) {
	switch {
	case data == "":
		return nil, nil
	case data == "@-":
		b, err := io.ReadAll(a.stdin)
		if err != nil {
			return nil, fmt.Errorf("reading the request from stdin: %v", err)
		}
		return b, nil
	case strings.HasPrefix(data, "@"):
		b, err := os.ReadFile(data[1:])
		if err != nil {
			return nil, fmt.Errorf("-d %s: %v", data, err)
		}
		return b, nil
	}
	return []byte(data), nil
}

// decodeRequest parses one JSON request of method m.
func (s *schema) decodeRequest(m protoreflect.MethodDescriptor, text []byte) (*dynamicpb.Message, error) {
	msg := dynamicpb.NewMessage(m.Input())
	if err := (protojson.UnmarshalOptions{Resolver: s.types}).Unmarshal(text, msg); err != nil {
		return nil, usagef("not a valid %s in JSON: %v", m.Input().FullName(), err)
	}
	return msg, nil
}

// print writes one message in the output format: indented JSON, or one
// line of JSON in a stream (line), or protobuf text.
func (a *app) print(s *schema, m proto.Message, line bool) error {
	var out []byte
	var err error
	switch a.globals.output {
	case "text":
		out, err = prototext.MarshalOptions{Multiline: !line, Resolver: s.types}.Marshal(m)
		out = respaceText(out)
	default:
		out, err = s.json(m, !line)
	}
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(a.stdout, "%s\n", bytes.TrimRight(out, "\n"))
	return err
}

// respaceText undoes the extra space that prototext, like protojson, puts
// after a field name's colon at random: "name:  value" becomes
// "name: value". A colon inside a quoted value is left alone.
func respaceText(text []byte) []byte {
	lines := bytes.Split(text, []byte("\n"))
	for i, l := range lines {
		if j := bytes.Index(l, []byte(":  ")); j >= 0 {
			if q := bytes.IndexByte(l, '"'); q < 0 || j < q {
				lines[i] = append(l[:j+1:j+1], l[j+2:]...)
			}
		}
	}
	return bytes.Join(lines, []byte("\n"))
}

// json encodes m as protobuf's JSON, indented or on one line. protojson
// varies its spacing on purpose (so that nobody compares its bytes); the
// output is re-spaced by encoding/json, so that it is the same every time
// and scripts and golden files can rely on it.
func (s *schema) json(m proto.Message, indent bool) ([]byte, error) {
	out, err := protojson.MarshalOptions{Resolver: s.types}.Marshal(m)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if indent {
		err = json.Indent(&buf, out, "", "  ")
	} else {
		err = json.Compact(&buf, out)
	}
	return buf.Bytes(), err
}

// resolvedCall is a call's method found in the schema, with its request.
type resolvedCall struct {
	schema *schema
	method protoreflect.MethodDescriptor
	desc   *rpc.ServiceDesc   // the method's service, for the runtime
	text   []byte             // the text of -d
	req    *dynamicpb.Message // decoded from text; nil for a client stream, read as it is sent
}

// resolveCall finds the method name in the schema and reads the request of
// -d (data). Broadcast (streams false) calls unary methods only.
func (a *app) resolveCall(ctx context.Context, name, data, target string, streams bool) (*resolvedCall, error) {
	s, err := a.loadSchema(ctx, schemaWanted{name: name, target: target})
	if err != nil {
		return nil, err
	}
	m, err := s.method(name)
	if err != nil {
		return nil, err
	}
	if !streams && (m.IsStreamingClient() || m.IsStreamingServer()) {
		return nil, usagef("broadcast: %s is a streaming method; broadcast calls unary methods", m.FullName())
	}
	rc := &resolvedCall{schema: s, method: m}
	if rc.desc, err = serviceDesc(m.Parent().(protoreflect.ServiceDescriptor)); err != nil {
		return nil, err
	}
	if rc.text, err = a.readData(data); err != nil {
		return nil, err
	}
	if !m.IsStreamingClient() {
		text := rc.text
		if text == nil {
			text = []byte("{}") // no -d: the empty request
		}
		if rc.req, err = s.decodeRequest(m, text); err != nil {
			return nil, err
		}
	}
	return rc, nil
}

// call runs the call command.
func (a *app) call(ctx context.Context, args []string) error {
	var f callFlags
	name, err := parseCommand("call", args, a.stderr, func(fs *flag.FlagSet) { f.register(fs, true) })
	if err != nil {
		return err
	}
	if err := a.checkOutput(); err != nil {
		return err
	}
	switch {
	case f.target != "" && f.any:
		return usagef("call: give -t TARGET or --any, not both")
	case f.target == "" && !f.any:
		return usagef("call: whom to call? give -t TARGET (a server ID) or --any (one server of the share group)")
	}
	opts, err := f.options()
	if err != nil {
		return err
	}
	if f.any {
		opts = append(opts, rpc.ToAny())
	} else {
		opts = append(opts, rpc.To(f.target))
	}
	rc, err := a.resolveCall(ctx, name, f.data, f.target, true)
	if err != nil {
		return err
	}
	s, m, desc, text, req := rc.schema, rc.method, rc.desc, rc.text, rc.req
	conn, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	client := rpc.NewClient(conn)
	defer func() { _ = client.Close(context.Background()) }()
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	stub := client.Stub(desc, string(m.Name()))
	if a.fleet != nil && f.target != "" {
		if conns := a.fleet.Duplicates()[f.target]; len(conns) > 1 {
			fmt.Fprintf(a.stderr, "mqttrpc: warning: server ID %s is online on %d connections (client IDs %s): each of them runs this call\n", f.target, len(conns), strings.Join(conns, ", "))
		}
	}
	if m.IsStreamingClient() || m.IsStreamingServer() {
		return a.stream(ctx, s, m, stub, req, text, opts)
	}
	var md rpc.Metadata
	resp := dynamicpb.NewMessage(m.Output())
	opts = append(opts, rpc.ResponseMetadata(&md))
	if err := stub.Invoke(ctx, req, resp, opts...); err != nil {
		return asFailure(a.failFastHint(err))
	}
	a.printMetadata("response metadata", md)
	return a.print(s, resp, false)
}

// broadcast runs the broadcast command: one JSON line per answer, as it
// arrives, each with the server that gave it.
func (a *app) broadcast(ctx context.Context, args []string) error {
	var f callFlags
	name, err := parseCommand("broadcast", args, a.stderr, func(fs *flag.FlagSet) { f.register(fs, false) })
	if err != nil {
		return err
	}
	if err := a.checkOutput(); err != nil {
		return err
	}
	opts, err := f.options()
	if err != nil {
		return err
	}
	rc, err := a.resolveCall(ctx, name, f.data, "", false)
	if err != nil {
		return err
	}
	s, m, desc, req := rc.schema, rc.method, rc.desc, rc.req
	conn, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	// With the fleet's presence records, the broadcast knows whom to
	// expect: it ends when they all answered, and names those that did not.
	// Without (servers that publish none, or too slow a broker), it waits
	// out --timeout.
	var ferr error
	if a.fleet == nil { // else the schema came by reflection, with the fleet
		fctx, fcancel := context.WithTimeout(ctx, min(f.timeout, 2*time.Second))
		fleet, err := rpc.WatchFleet(fctx, conn)
		fcancel()
		ferr = err
		if ferr == nil {
			defer func() { _ = fleet.Close(context.Background()) }()
		}
	}
	client := rpc.NewClient(conn)
	defer func() { _ = client.Close(context.Background()) }()
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	stub := client.Stub(desc, string(m.Name()))
	answers := 0
	var missing []string
	var firstErr *rpc.Error // of a server that answered with an error
	for r := range stub.Broadcast(ctx, req, func() any { return dynamicpb.NewMessage(m.Output()) }, opts...) {
		if r.Target == "" && r.Err != nil {
			return asFailure(r.Err) // the broadcast was not published
		}
		if r.Err != nil && !rpc.IsWireError(r.Err) {
			// An expected server that did not answer.
			missing = append(missing, fmt.Sprintf("%s (%s)", r.Target, rpc.CodeOf(r.Err)))
			continue
		}
		answers++
		if r.Err != nil && firstErr == nil {
			firstErr = asError(r.Err)
		}
		if err := a.printReply(s, r); err != nil {
			return err
		}
	}
	noun := "answers"
	if answers == 1 {
		noun = "answer"
	}
	switch {
	case ferr != nil:
		fmt.Fprintf(a.stderr, "%d %s within %v (no presence records: whom to expect is unknown)\n", answers, noun, f.timeout)
	case len(missing) > 0:
		fmt.Fprintf(a.stderr, "%d %s; did not answer: %s\n", answers, noun, strings.Join(missing, ", "))
		return &rpcFailure{err: rpc.Errorf(rpc.DeadlineExceeded, "%d expected servers did not answer", len(missing)), quiet: true}
	default:
		fmt.Fprintf(a.stderr, "%d %s, every online server\n", answers, noun)
	}
	// The exit status: 0 when every answer was OK; else the code of the
	// first error a server answered; Unavailable when nobody answered.
	switch {
	case firstErr != nil:
		return &rpcFailure{err: firstErr, quiet: true}
	case answers == 0:
		return &rpcFailure{err: rpc.Errorf(rpc.Unavailable, "nobody answered"), quiet: true}
	}
	return nil
}

// printReply prints one broadcast answer as a line:
// {"server": ID, "response": …} or {"server": ID, "error": {"code": …, "message": …}}.
func (a *app) printReply(s *schema, r rpc.BroadcastReply) error {
	if r.Err != nil {
		e := asError(r.Err)
		_, err := fmt.Fprintf(a.stdout, "{\"server\":%q,\"error\":{\"code\":%q,\"message\":%q}}\n", r.Target, e.Code().String(), e.Message())
		return err
	}
	msg, ok := r.Response.(proto.Message)
	if !ok {
		return fmt.Errorf("server %s: the response is not a message", r.Target)
	}
	body, err := s.json(msg, false)
	if err != nil {
		return err
	}
	if a.globals.output == "text" {
		text, _ := prototext.MarshalOptions{Resolver: s.types}.Marshal(msg)
		text = respaceText(text)
		_, err = fmt.Fprintf(a.stdout, "%s: %s\n", r.Target, text)
		return err
	}
	_, err = fmt.Fprintf(a.stdout, "{\"server\":%q,\"response\":%s}\n", r.Target, body)
	return err
}

func (a *app) checkOutput() error {
	switch a.globals.output {
	case "json", "text":
		return nil
	}
	return usagef("-o %q: the formats are json and text", a.globals.output)
}

// printRPCError writes an RPC error as grpcurl does: the code and message,
// then the error's metadata.
func (a *app) printRPCError(e *rpc.Error) {
	fmt.Fprintf(a.stderr, "%s: %s\n", e.Code(), e.Message())
	a.printMetadataAlways(e.Meta())
}

// printMetadata writes md on stderr with -v.
func (a *app) printMetadata(what string, md rpc.Metadata) {
	if !a.globals.verbose || len(md) == 0 {
		return
	}
	fmt.Fprintf(a.stderr, "%s:\n", what)
	a.printMetadataAlways(md)
}

func (a *app) printMetadataAlways(md rpc.Metadata) {
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range md[k] {
			fmt.Fprintf(a.stderr, "  %s: %s\n", k, v)
		}
	}
}

// asFailure makes err the failure of a call: its exit status is 64 + the
// code, but for InvalidArgument that the command itself found in what it
// was given (a target with a "/", say), before anything was sent: a usage
// error.
// failFastHint adds to a call that failed fast (the fleet that brought the
// schema by reflection does not list its target) what to do when the
// target runs without presence.
func (a *app) failFastHint(err error) error {
	e := asError(err)
	if a.fleet == nil || e.Code() != rpc.Unavailable || rpc.IsWireError(err) || !strings.HasPrefix(e.Message(), "no server") {
		return err
	}
	msg := e.Message()
	if i := strings.Index(msg, "; servers without presence"); i >= 0 {
		msg = msg[:i] // the runtime's advice is for Go code
	}
	return rpc.Errorf(rpc.Unavailable, "%s (a server that runs without presence is not in the records: give its schema with --proto or --protoset to call it anyway)", msg)
}

func asFailure(err error) error {
	e := asError(err)
	if e.Code() == rpc.InvalidArgument && !rpc.IsWireError(err) {
		return usagef("%s", cliAdvice(e.Message()))
	}
	return &rpcFailure{err: e}
}

// cliAdvice turns the runtime's advice for Go code into the command's.
func cliAdvice(msg string) string {
	if i := strings.Index(msg, "pass rpc.WithToken("); i >= 0 {
		return msg[:i] + "give --token NAME=VALUE"
	}
	return msg
}

func asError(err error) *rpc.Error {
	var e *rpc.Error
	if errors.As(err, &e) {
		return e
	}
	return rpc.NewError(rpc.CodeOf(err), err)
}

func closeConn(conn *rpc.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}
