package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	greeterv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/greeter/v1"
	hvacv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/hvac/v1"
	streamv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/stream/v1"
	"github.com/mqttrpc/mqttrpc/internal/mosquittotest"
	"github.com/mqttrpc/mqttrpc/internal/rpctest"
	"github.com/mqttrpc/mqttrpc/rpc"
)

const (
	greeterProto  = "../../internal/gen/mqttrpctest/greeter/v1/greeter.proto"
	transferProto = "../../internal/gen/mqttrpctest/stream/v1/stream.proto"
)

// greeter answers SayHello with the name and the metadata it got; the
// name "fail" is refused with FailedPrecondition and metadata.
type greeter struct {
	greeterv1.UnimplementedGreeterServer
	id     string
	silent bool // never answers: waits for the call's end
}

func (g greeter) SayHello(ctx context.Context, req *greeterv1.SayHelloRequest) (*greeterv1.SayHelloResponse, error) {
	if g.silent {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if req.GetName() == "fail" {
		e := rpc.Errorf(rpc.FailedPrecondition, "the greeter is tired")
		e.Meta().Set("retry-after", "5s")
		return nil, e
	}
	call, _ := rpc.CallFromContext(ctx)
	return &greeterv1.SayHelloResponse{Greeting: "hello " + req.GetName() + " from " + g.id + " " + call.RequestMetadata().Get("who")}, nil
}

// watchEnded gets the context error of an endless Watch when it ends.
var watchEnded = make(chan error, 4)

// transfer serves the stream methods of every kind.
type transfer struct {
	streamv1.UnimplementedTransferServer
}

func (transfer) Watch(ctx context.Context, req *streamv1.WatchRequest, stream rpc.ServerStreamingServer[streamv1.Event]) error {
	if req.GetFilter() == "forever" {
		for i := int64(0); ; i++ {
			if err := stream.Send(&streamv1.Event{Seq: i}); err != nil {
				watchEnded <- ctx.Err()
				return err
			}
		}
	}
	stream.SetHeader(rpc.Metadata{"x-watch": {"h"}})
	for i := range int64(3) {
		if err := stream.Send(&streamv1.Event{Seq: i, Text: req.GetFilter()}); err != nil {
			return err
		}
	}
	stream.SetTrailer(rpc.Metadata{"x-done": {"t"}})
	return nil
}

func (transfer) Upload(ctx context.Context, stream rpc.ClientStreamingServer[streamv1.Chunk, streamv1.UploadResult]) error {
	var n int64
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&streamv1.UploadResult{Bytes: n})
		}
		if err != nil {
			return err
		}
		n += int64(len(c.GetData()))
	}
}

func (transfer) Sync(ctx context.Context, stream rpc.BidiStreamingServer[streamv1.Event, streamv1.Event]) error {
	for {
		e, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&streamv1.Event{Seq: e.GetSeq() + 1, Text: e.GetText()}); err != nil {
			return err
		}
	}
}

// startServers starts two devices serving both services.
func startServers(t *testing.T, url string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		conn := rpctest.Dial(t, url, rpc.WithClientID(rpctest.UniqueID(id)))
		s := rpc.NewServer(conn, rpc.WithServerID(id))
		greeterv1.RegisterGreeterServer(s, greeter{id: id})
		streamv1.RegisterTransferServer(s, transfer{})
		if err := s.Start(rpctest.Context(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	}
}

// result is one run of the command.
type result struct {
	code           int
	stdout, stderr string
}

func runCLI(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(rpctest.Context(t, 30*time.Second), args, strings.NewReader(stdin), &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

func (r result) want(t *testing.T, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
}

// Every command against real servers on both brokers: unary calls, an
// RPC error's exit status and stderr, metadata, the three kinds of stream
// (one with a topic template of its own; fields with their default values
// are left out of the JSON, as protojson and grpcurl do), broadcast, and the schema from
// .proto files and from a protoset.
func TestCLI(t *testing.T) {
	protoset := writeProtoset(t)
	rpctest.EachBroker(t, func(t *testing.T, b *rpctest.Broker) {
		dev1, dev2 := rpctest.UniqueID("dev"), rpctest.UniqueID("dev")
		startServers(t, b.URL, dev1, dev2)
		schema := []string{"--broker", b.URL, "--proto", greeterProto, "--proto", transferProto}

		r := runCLI(t, "", append(schema, "call", "-t", dev1, "-H", "who=tester", "-d", `{"name":"ada"}`, "mqttrpctest.greeter.v1.Greeter/SayHello")...)
		r.want(t, 0)
		if want := "{\n  \"greeting\": \"hello ada from " + dev1 + " tester\"\n}\n"; r.stdout != want {
			t.Errorf("call: stdout %q, want %q", r.stdout, want)
		}

		// The request from stdin, the schema from a protoset, -o text.
		r = runCLI(t, `{"name":"bob"}`, "--broker", b.URL, "--protoset", protoset, "-o", "text", "call", "-t", dev2, "-d", "@-", "mqttrpctest.greeter.v1.Greeter.SayHello")
		r.want(t, 0)
		if want := `greeting: "hello bob from ` + dev2 + " \"\n"; r.stdout != want {
			t.Errorf("call from a protoset: stdout %q, want %q", r.stdout, want)
		}

		r = runCLI(t, "", append(schema, "call", "-t", dev1, "-d", `{"name":"fail"}`, "mqttrpctest.greeter.v1.Greeter/SayHello")...)
		r.want(t, 64+int(rpc.FailedPrecondition))
		if want := "FailedPrecondition: the greeter is tired\n  retry-after: 5s\n"; r.stderr != want || r.stdout != "" {
			t.Errorf("RPC error: stderr %q, stdout %q; want stderr %q", r.stderr, r.stdout, want)
		}

		// A target that cannot be a topic level is the command's own
		// finding: a usage error, not an RPC's.
		r = runCLI(t, "", append(schema, "call", "-t", "a/b", "mqttrpctest.greeter.v1.Greeter/SayHello")...)
		if r.code != 1 || !strings.Contains(r.stderr, "may not contain /") {
			t.Errorf("-t a/b: exit %d, stderr %q; want 1 and the reason", r.code, r.stderr)
		}

		r = runCLI(t, "", append(schema, "call", "-t", "nobody", "--timeout", "300ms", "mqttrpctest.greeter.v1.Greeter/SayHello")...)
		if r.code != 64+int(rpc.DeadlineExceeded) && r.code != 64+int(rpc.Unavailable) {
			t.Errorf("call to nobody: exit %d (%s), want DeadlineExceeded or Unavailable", r.code, r.stderr)
		}

		r = runCLI(t, "", append(schema, "call", "-t", dev1, "-d", `{"filter":"f"}`, "mqttrpctest.stream.v1.Transfer/Watch")...)
		r.want(t, 0)
		if want := "{\"text\":\"f\"}\n{\"seq\":\"1\",\"text\":\"f\"}\n{\"seq\":\"2\",\"text\":\"f\"}\n"; r.stdout != want {
			t.Errorf("server stream: stdout %q, want %q", r.stdout, want)
		}

		// -v prints a stream's headers, then its trailers.
		r = runCLI(t, "", append(append([]string{"-v"}, schema...), "call", "-t", dev1, "-d", `{"filter":"f"}`, "mqttrpctest.stream.v1.Transfer/Watch")...)
		r.want(t, 0)
		if want := "response metadata:\n  x-watch: h\ntrailers:\n  x-done: t\n"; r.stderr != want {
			t.Errorf("server stream with -v: stderr %q, want %q", r.stderr, want)
		}

		r = runCLI(t, "{\"data\":\"AAEC\"}\n\n{\"data\":\"AwQ=\"}\n", append(schema, "call", "-t", dev1, "mqttrpctest.stream.v1.Transfer/Upload")...)
		r.want(t, 0)
		if want := "{\n  \"bytes\": \"5\"\n}\n"; r.stdout != want {
			t.Errorf("client stream: stdout %q, want %q", r.stdout, want)
		}
		// With -d, the stream's messages are -d's, even '{}' (one empty
		// chunk), and stdin is not read.
		for _, tc := range []struct{ data, want string }{
			{`{}`, "{}\n"},
			{`{"data":"AwQ="}`, "{\n  \"bytes\": \"2\"\n}\n"},
		} {
			r = runCLI(t, "{\"data\":\"AAEC\"}\n", append(schema, "call", "-t", dev1, "-d", tc.data, "mqttrpctest.stream.v1.Transfer/Upload")...)
			r.want(t, 0)
			if r.stdout != tc.want {
				t.Errorf("client stream with -d %s: stdout %q, want %q", tc.data, r.stdout, tc.want)
			}
		}

		r = runCLI(t, "{\"seq\":1,\"text\":\"a\"}\n{\"seq\":10,\"text\":\"b\"}\n", append(schema, "call", "-t", dev2, "mqttrpctest.stream.v1.Transfer/Sync")...)
		r.want(t, 0)
		if want := "{\"seq\":\"2\",\"text\":\"a\"}\n{\"seq\":\"11\",\"text\":\"b\"}\n"; r.stdout != want {
			t.Errorf("bidi stream: stdout %q, want %q", r.stdout, want)
		}

		// With the servers' presence records the broadcast ends once every
		// online server answered, long before its 60 s.
		r = runCLI(t, "", append(schema, "broadcast", "--timeout", "60s", "-d", `{"name":"all"}`, "mqttrpctest.greeter.v1.Greeter/SayHello")...)
		r.want(t, 0)
		if !strings.HasSuffix(r.stderr, "answers, every online server\n") {
			t.Errorf("broadcast: stderr %q, want it to end when every online server answered", r.stderr)
		}
		got := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			var reply struct {
				Server   string `json:"server"`
				Response struct {
					Greeting string `json:"greeting"`
				} `json:"response"`
			}
			if err := json.Unmarshal([]byte(line), &reply); err != nil {
				t.Fatalf("broadcast line %q: %v", line, err)
			}
			got[reply.Server] = reply.Response.Greeting
		}
		for _, id := range []string{dev1, dev2} {
			if want := "hello all from " + id + " "; got[id] != want {
				t.Errorf("broadcast: %s answered %q, want %q (all: %v)", id, got[id], want, got)
			}
		}
		// A server's error answer sets the exit status.
		r = runCLI(t, "", append(schema, "broadcast", "--timeout", "60s", "-d", `{"name":"fail"}`, "mqttrpctest.greeter.v1.Greeter/SayHello")...)
		r.want(t, 64+int(rpc.FailedPrecondition))
		if !strings.Contains(r.stdout, `"error":{"code":"FailedPrecondition","message":"the greeter is tired"}`) {
			t.Errorf("broadcast of an error: stdout %q", r.stdout)
		}
	})
}

// Ctrl-C (the command's context ends) cancels a stream on the wire: the
// handler's context ends, and the command exits with 130.
func TestCLIInterruptCancelsTheStream(t *testing.T) {
	b := rpctest.NewTestbroker(t)
	dev := rpctest.UniqueID("dev")
	startServers(t, b.URL, dev)
	ctx, interrupt := context.WithCancel(rpctest.Context(t, 30*time.Second))
	defer interrupt()
	out := &interruptAfterLine{interrupt: interrupt}
	var errOut bytes.Buffer
	code := run(ctx, []string{"--broker", b.URL, "--proto", transferProto, "call", "-t", dev, "-d", `{"filter":"forever"}`, "mqttrpctest.stream.v1.Transfer/Watch"}, strings.NewReader(""), out, &errOut)
	if code != exitInterrupted {
		t.Fatalf("exit %d, want %d (interrupted); stderr %q", code, exitInterrupted, errOut.String())
	}
	select {
	case err := <-watchEnded:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the handler's context ended with %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler still runs 10 s after the interrupt")
	}
}

// interruptAfterLine is a stdout that interrupts the command once a line
// was printed.
type interruptAfterLine struct {
	bytes.Buffer
	interrupt func()
}

func (w *interruptAfterLine) Write(p []byte) (int, error) {
	n, err := w.Buffer.Write(p)
	if bytes.Contains(p, []byte("\n")) {
		w.interrupt()
	}
	return n, err
}

// Over TLS with a login: --cacert names the CA of the broker's certificate,
// --username and MQTTRPC_PASSWORD the login; a wrong password exits 1 with
// the broker's refusal.
func TestCLITLSAndLogin(t *testing.T) {
	pki := rpctest.NewPKI(t)
	passwords := rpctest.PasswordFile(t, map[string]string{"device": "device-secret", "operator": "operator-secret"})
	mq := mosquittotest.Start(t, mosquittotest.WithAnonymous(false), mosquittotest.WithConfig(
		"cafile "+pki.CAFile, "certfile "+pki.CertFile, "keyfile "+pki.KeyFile, "password_file "+passwords))
	url := "mqtts://" + mq.Addr()
	tlsConfig := &tls.Config{RootCAs: pki.Pool, MinVersion: tls.VersionTLS12}
	conn := rpctest.Dial(t, url, rpc.WithClientID(rpctest.UniqueID("device")), rpc.WithCredentials("device", "device-secret"), rpc.WithTLSConfig(tlsConfig))
	s := rpc.NewServer(conn, rpc.WithServerID("dev-tls"))
	greeterv1.RegisterGreeterServer(s, greeter{id: "dev-tls"})
	if err := s.Start(rpctest.Context(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })

	t.Setenv("MQTTRPC_PASSWORD", "operator-secret")
	args := []string{"--broker", url, "--cacert", pki.CAFile, "--username", "operator", "--proto", greeterProto,
		"call", "-t", "dev-tls", "-d", `{"name":"tls"}`, "mqttrpctest.greeter.v1.Greeter/SayHello"}
	r := runCLI(t, "", args...)
	r.want(t, 0)
	if want := "{\n  \"greeting\": \"hello tls from dev-tls \"\n}\n"; r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	t.Setenv("MQTTRPC_PASSWORD", "wrong")
	r = runCLI(t, "", args...)
	if r.code != 1 || !strings.Contains(r.stderr, "not authorized") || !strings.Contains(r.stderr, "check --username") || strings.Contains(r.stderr, "wrong") {
		t.Errorf("wrong password: exit %d, stderr %q; want 1, the refusal, and no password", r.code, r.stderr)
	}
}

// list, health and watch read the presence records: the servers online and
// what they serve, their health (exit 0 only when SERVING), and changes as
// they happen.
func TestCLIFleet(t *testing.T) {
	rpctest.EachBroker(t, func(t *testing.T, b *rpctest.Broker) {
		dev1 := rpctest.UniqueID("fleet")
		startServers(t, b.URL, dev1)
		conn := rpctest.Dial(t, b.URL, rpc.WithClientID(rpctest.UniqueID("fleet-x")))
		devX := rpctest.UniqueID("fleet")
		sx := rpc.NewServer(conn, rpc.WithServerID(devX))
		greeterv1.RegisterGreeterServer(sx, greeter{id: devX})
		if err := sx.Start(rpctest.Context(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		global := []string{"--broker", b.URL}

		r := runCLI(t, "", append(global, "list", "mqttrpctest.stream.v1.Transfer")...)
		r.want(t, 0)
		var listed []serverJSON
		for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			var s serverJSON
			if err := json.Unmarshal([]byte(line), &s); err != nil {
				t.Fatalf("list line %q: %v", line, err)
			}
			listed = append(listed, s)
		}
		// Other tests' servers share the broker: find ours.
		var mine *serverJSON
		for i := range listed {
			if listed[i].ID == devX {
				t.Errorf("list Transfer shows %s, which serves only the greeter", devX)
			}
			if listed[i].ID == dev1 {
				mine = &listed[i]
			}
		}
		if mine == nil || !mine.Online || mine.Health != "SERVING" || len(mine.Services) != 2 {
			t.Fatalf("list: %s is %+v; want online, SERVING, two services (all: %s)", dev1, mine, r.stdout)
		}

		r = runCLI(t, "", append(global, "health", "-t", dev1)...)
		r.want(t, 0)
		if want := `{"server":"` + dev1 + `","status":"SERVING"}` + "\n"; r.stdout != want {
			t.Errorf("health: %q, want %q", r.stdout, want)
		}
		if err := sx.SetHealth("mqttrpctest.greeter.v1.Greeter", rpc.HealthNotServing); err != nil {
			t.Fatal(err)
		}
		rpctest.WaitFor(t, func() bool {
			r = runCLI(t, "", append(global, "-o", "text", "health", "-t", devX, "mqttrpctest.greeter.v1.Greeter")...)
			return r.code == 64+int(rpc.Unavailable)
		})
		if want := devX + " NOT_SERVING\n"; r.stdout != want {
			t.Errorf("health of a NOT_SERVING service: %q, want %q", r.stdout, want)
		}
		r = runCLI(t, "", append(global, "health", "-t", "nobody-here")...)
		r.want(t, 64+int(rpc.NotFound))

		// stats: the handler runs of each method, per server.
		for _, name := range []string{"a", "fail"} {
			runCLI(t, "", append(global, "--proto", greeterProto, "call", "-t", dev1, "-d", `{"name":"`+name+`"}`, "mqttrpctest.greeter.v1.Greeter/SayHello")...)
		}
		r = runCLI(t, "", append(global, "-o", "json", "stats", "-t", dev1, "mqttrpctest.greeter.v1.Greeter")...)
		r.want(t, 0)
		var st struct {
			ID        string `json:"id"`
			Endpoints []struct {
				Name      string  `json:"name"`
				Requests  float64 `json:"num_requests"`
				Errors    float64 `json:"num_errors"`
				LastError string  `json:"last_error"`
			} `json:"endpoints"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatalf("stats -o json: %q: %v", r.stdout, err)
		}
		found := false
		for _, e := range st.Endpoints {
			if e.Name == "SayHello" {
				found = true
				if st.ID != dev1 || e.Requests != 2 || e.Errors != 1 || e.LastError != "the greeter is tired" {
					t.Errorf("stats of SayHello on %s: %+v", st.ID, e)
				}
			}
		}
		if !found {
			t.Errorf("stats: no SayHello in %s", r.stdout)
		}
		r = runCLI(t, "", append(global, "stats", "-t", dev1)...)
		r.want(t, 0)
		if !strings.HasPrefix(r.stdout, "SERVER ") || !strings.Contains(r.stdout, "SayHello") || !strings.Contains(r.stdout, "the greeter is tired") {
			t.Errorf("stats table:\n%s", r.stdout)
		}

		// watch: our server is there at once; its death shows as offline,
		// its services NOT_SERVING.
		ctx, stop := context.WithCancel(rpctest.Context(t, 30*time.Second))
		defer stop()
		lines := &lineWriter{lines: make(chan string, 1024)}
		done := make(chan int, 1)
		go func() {
			done <- run(ctx, append(global, "watch", "mqttrpctest.greeter.v1.Greeter"), strings.NewReader(""), lines, io.Discard)
		}()
		waitLine := func(event, id string) {
			t.Helper()
			timeout := time.After(20 * time.Second)
			for {
				select {
				case line := <-lines.lines:
					var s serverJSON
					if err := json.Unmarshal([]byte(line), &s); err != nil {
						t.Fatalf("watch line %q: %v", line, err)
					}
					if s.Event == event && s.ID == id {
						if event == "offline" && (s.Health != "NOT_SERVING" || len(s.Services) == 0 || s.Services[0].Health != "NOT_SERVING") {
							t.Errorf("watch: an offline server shows %s, its services %+v; want NOT_SERVING", s.Health, s.Services)
						}
						return
					}
				case <-timeout:
					t.Fatalf("watch: no %s event for %s", event, id)
				}
			}
		}
		waitLine("online", devX)
		// Its connection closes under it: the broker publishes its Will.
		if err := conn.Close(rpctest.Context(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		waitLine("offline", devX)
		stop()
		if code := <-done; code != 0 {
			t.Errorf("watch ended by Ctrl-C: exit %d, want 0", code)
		}
	})
}

// lineWriter hands each line written to it to a channel.
type lineWriter struct {
	partial []byte
	lines   chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.lines <- string(w.partial[:i])
		w.partial = w.partial[i+1:]
	}
}

// A broadcast names the online servers that did not answer, and exits
// with DeadlineExceeded.
func TestCLIBroadcastNamesTheSilent(t *testing.T) {
	b := rpctest.NewTestbroker(t)
	speaker, silent := rpctest.UniqueID("speaker"), rpctest.UniqueID("silent")
	for _, g := range []greeter{{id: speaker}, {id: silent, silent: true}} {
		conn := rpctest.Dial(t, b.URL, rpc.WithClientID(rpctest.UniqueID(g.id)))
		s := rpc.NewServer(conn, rpc.WithServerID(g.id))
		greeterv1.RegisterGreeterServer(s, g)
		if err := s.Start(rpctest.Context(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	}
	r := runCLI(t, "", "--broker", b.URL, "--proto", greeterProto, "broadcast", "--timeout", "500ms", "-d", `{"name":"x"}`, "mqttrpctest.greeter.v1.Greeter/SayHello")
	r.want(t, 64+int(rpc.DeadlineExceeded))
	if want := `{"server":"` + speaker + `","response":{"greeting":"hello x from ` + speaker + ` "}}` + "\n"; r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	if want := "1 answer; did not answer: " + silent + " (DeadlineExceeded)\n"; r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
}

// describe prints services, methods and messages in .proto syntax, with
// their comments.
func TestCLIDescribe(t *testing.T) {
	r := runCLI(t, "", "--proto", transferProto, "describe", "mqttrpctest.stream.v1.Transfer")
	r.want(t, 0)
	for _, want := range []string{
		"mqttrpctest.stream.v1.Transfer is a service:\n// Transfer moves data to and from a device.\nservice Transfer {\n",
		"  // Watch streams events until the caller cancels.\n  rpc Watch ( .mqttrpctest.stream.v1.WatchRequest ) returns ( stream .mqttrpctest.stream.v1.Event );\n",
		"  rpc Sync ( stream .mqttrpctest.stream.v1.Event ) returns ( stream .mqttrpctest.stream.v1.Event );\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("describe service: no %q in\n%s", want, r.stdout)
		}
	}
	r = runCLI(t, "", "--proto", transferProto, "describe", "mqttrpctest.stream.v1.Event")
	r.want(t, 0)
	if want := "mqttrpctest.stream.v1.Event is a message:\nmessage Event {\n  int64 seq = 1;\n  string text = 2;\n}\n"; r.stdout != want {
		t.Errorf("describe message: %q, want %q", r.stdout, want)
	}
	r = runCLI(t, "", "--proto", transferProto, "describe", "mqttrpctest.stream.v1.Transfer/Upload")
	r.want(t, 0)
	if !strings.Contains(r.stdout, "rpc Upload ( stream .mqttrpctest.stream.v1.Chunk ) returns ( .mqttrpctest.stream.v1.UploadResult );") {
		t.Errorf("describe method: %q", r.stdout)
	}
}

// Mistakes on the command line exit with 1 and a message that says what
// to do, before anything is sent.
func TestCLIUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, "unknown command"},
		{[]string{"--broker", "mqtt://127.0.0.1:1", "--connect-timeout", "100ms", "call", "-t", "x", "a.B/C"}, "or give --proto FILE or --protoset FILE"},
		{[]string{"--proto", greeterProto, "call", "mqttrpctest.greeter.v1.Greeter/SayHello"}, "give -t TARGET"},
		{[]string{"--proto", greeterProto, "call", "-t", "x", "mqttrpctest.greeter.v1.Greeter/Nope"}, "has no method Nope; its methods: SayHello, SayHelloAgain"},
		{[]string{"--proto", greeterProto, "call", "-t", "x", "no.Such/M"}, "no service no.Such"},
		{[]string{"--proto", greeterProto, "call", "-t", "x", "-d", `{"nam":1}`, "mqttrpctest.greeter.v1.Greeter/SayHello"}, "not a valid mqttrpctest.greeter.v1.SayHelloRequest in JSON"},
		{[]string{"--proto", greeterProto, "call", "-t", "x", "-H", "novalue", "mqttrpctest.greeter.v1.Greeter/SayHello"}, "want key=value"},
		{[]string{"--proto", greeterProto, "call", "-t", "x", "--token", "novalue", "mqttrpctest.greeter.v1.Greeter/SayHello"}, "--token \"novalue\": want name=value"},
		{[]string{"--proto", "missing.proto", "describe"}, "--proto"},
		{[]string{"--broker", "mqtt://127.0.0.1:1", "--connect-timeout", "100ms", "--proto", greeterProto, "call", "-t", "x", "mqttrpctest.greeter.v1.Greeter/SayHello"}, "is it running? set --broker"},
		// A refused port fails at once, not after --connect-timeout:
		// otherwise this case would end after 30 s with Dial's timeout.
		{[]string{"--broker", "mqtt://127.0.0.1:1", "--connect-timeout", "30s", "list"}, "nothing listens on 127.0.0.1:1 (connection refused; is it running? set --broker"},
		{[]string{"--broker", "127.0.0.1:1883", "--proto", greeterProto, "call", "-t", "x", "mqttrpctest.greeter.v1.Greeter/SayHello"}, "check --broker: a URL such as mqtt://"},
		{[]string{"--proto", greeterProto, "call", "-bogus", "mqttrpctest.greeter.v1.Greeter/SayHello"}, "flag provided but not defined: -bogus"},
	} {
		r := runCLI(t, "", tc.args...)
		if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 1 and %q", tc.args, r.code, r.stderr, tc.want)
		}
		if strings.Count(r.stderr, tc.want) > 1 {
			t.Errorf("%v: stderr says it twice: %q", tc.args, r.stderr)
		}
	}
	r := runCLI(t, "", "list", "-o", "text")
	if r.code != 1 || !strings.Contains(r.stderr, "-o is a global flag: give it before the command") {
		t.Errorf("list -o text: exit %d, stderr %q; want 1 and where -o goes", r.code, r.stderr)
	}
	for _, args := range [][]string{{"-h"}, {"help"}, {"call", "-h"}, {"list", "-h"}, {"describe", "-h"}} {
		if r := runCLI(t, "", args...); r.code != 0 || !strings.Contains(r.stderr, "-") {
			t.Errorf("%v: exit %d, stderr %q; want 0 and the usage", args, r.code, r.stderr)
		}
	}
}

// Without --proto or --protoset the schema comes by reflection over MQTT
// (docs/protocol.md, "Reflection"): describe, call (unary and a stream),
// broadcast, on both brokers, with nothing but the broker's URL; and a
// fleet whose servers announce no schema gets a message that says what
// to do.
func TestCLIReflection(t *testing.T) {
	rpctest.EachBroker(t, func(t *testing.T, b *rpctest.Broker) {
		dev := rpctest.UniqueID("dev")
		startServers(t, b.URL, dev)
		broker := []string{"--broker", b.URL}

		r := runCLI(t, "", append(broker, "describe", "mqttrpctest.stream.v1.Transfer/Upload")...)
		r.want(t, 0)
		if !strings.Contains(r.stdout, "rpc Upload ( stream .mqttrpctest.stream.v1.Chunk ) returns ( .mqttrpctest.stream.v1.UploadResult );") {
			t.Errorf("describe method by reflection: %q", r.stdout)
		}
		r = runCLI(t, "", append(broker, "describe", "mqttrpctest.stream.v1.Event")...)
		r.want(t, 0)
		if want := "mqttrpctest.stream.v1.Event is a message:\nmessage Event {\n  int64 seq = 1;\n  string text = 2;\n}\n"; r.stdout != want {
			t.Errorf("describe message by reflection: %q, want %q", r.stdout, want)
		}
		r = runCLI(t, "", append(broker, "describe")...)
		r.want(t, 0)
		for _, want := range []string{"mqttrpctest.greeter.v1.Greeter is a service:", "mqttrpctest.stream.v1.Transfer is a service:"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("describe by reflection: no %q in %q", want, r.stdout)
			}
		}

		r = runCLI(t, "", append(broker, "call", "-t", dev, "-d", `{"name":"ada"}`, "mqttrpctest.greeter.v1.Greeter/SayHello")...)
		r.want(t, 0)
		if want := "{\n  \"greeting\": \"hello ada from " + dev + " \"\n}\n"; r.stdout != want {
			t.Errorf("call by reflection: stdout %q, want %q", r.stdout, want)
		}
		// -t names a server: its own services only, and no note about
		// the schemas of services it does not serve.
		greeterOnly := rpctest.UniqueID("greeter-only")
		conn := rpctest.Dial(t, b.URL, rpc.WithClientID(rpctest.UniqueID(greeterOnly)))
		srv := rpc.NewServer(conn, rpc.WithServerID(greeterOnly))
		greeterv1.RegisterGreeterServer(srv, greeter{id: greeterOnly})
		if err := srv.Start(rpctest.Context(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
		r = runCLI(t, "", append(broker, "describe", "-t", greeterOnly)...)
		r.want(t, 0)
		if !strings.Contains(r.stdout, "mqttrpctest.greeter.v1.Greeter is a service:") || strings.Contains(r.stdout, "Transfer") || r.stderr != "" {
			t.Errorf("describe -t %s: stdout %q, stderr %q; want Greeter alone and no note", greeterOnly, r.stdout, r.stderr)
		}
		r = runCLI(t, "", append(broker, "call", "-t", dev, "-d", `{"filter":"f"}`, "mqttrpctest.stream.v1.Transfer/Watch")...)
		r.want(t, 0)
		if want := "{\"text\":\"f\"}\n{\"seq\":\"1\",\"text\":\"f\"}\n{\"seq\":\"2\",\"text\":\"f\"}\n"; r.stdout != want {
			t.Errorf("server stream by reflection: stdout %q, want %q", r.stdout, want)
		}
		r = runCLI(t, "", append(broker, "broadcast", "--timeout", "60s", "-d", `{"name":"all"}`, "mqttrpctest.greeter.v1.Greeter/SayHello")...)
		r.want(t, 0)
		if !strings.Contains(r.stdout, `"greeting":"hello all from `+dev+` "`) || !strings.HasSuffix(r.stderr, "every online server\n") {
			t.Errorf("broadcast by reflection: stdout %q, stderr %q", r.stdout, r.stderr)
		}
		// A target that is not online fails at once: the fleet that
		// brought the schema makes the call fail fast.
		r = runCLI(t, "", append(broker, "call", "-t", "nobody", "--timeout", "60s", "mqttrpctest.greeter.v1.Greeter/SayHello")...)
		r.want(t, 64+int(rpc.Unavailable))
		r = runCLI(t, "", append(broker, "call", "-t", dev, "no.such.v1.Service/Method")...)
		if r.code != 1 || !strings.Contains(r.stderr, "no service no.such.v1.Service") {
			t.Errorf("unknown service by reflection: exit %d, stderr %q", r.code, r.stderr)
		}
		// A target that cannot be a topic level is a usage error with
		// the fleet on too (fail fast does not take it for a server).
		r = runCLI(t, "", append(broker, "call", "-t", "dev/7", "mqttrpctest.greeter.v1.Greeter/SayHello")...)
		if r.code != 1 || !strings.Contains(r.stderr, "may not contain /") {
			t.Errorf("-t dev/7 by reflection: exit %d, stderr %q; want 1 and the reason", r.code, r.stderr)
		}
		// A server without presence is not in the records: the call fails
		// fast, and the message says how to reach it.
		hidden := rpctest.UniqueID("hidden")
		hconn := rpctest.Dial(t, b.URL, rpc.WithClientID(hidden), rpc.WithPresence(false))
		hs := rpc.NewServer(hconn, rpc.WithServerID(hidden))
		greeterv1.RegisterGreeterServer(hs, greeter{id: hidden})
		if err := hs.Start(rpctest.Context(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = hs.Shutdown(context.Background()) })
		r = runCLI(t, "", append(broker, "call", "-t", hidden, "mqttrpctest.greeter.v1.Greeter/SayHello")...)
		if r.code != 64+int(rpc.Unavailable) || !strings.Contains(r.stderr, "give its schema with --proto or --protoset to call it anyway") {
			t.Errorf("server without presence by reflection: exit %d, stderr %q; want 78 and what to do", r.code, r.stderr)
		}
		r = runCLI(t, "", "--broker", b.URL, "--proto", greeterProto, "call", "-t", hidden, "-d", `{"name":"x"}`, "mqttrpctest.greeter.v1.Greeter/SayHello")
		r.want(t, 0)
	})

	// Servers that announce no schema.
	b := rpctest.NewTestbroker(t)
	conn := rpctest.Dial(t, b.URL, rpc.WithClientID(rpctest.UniqueID("dev")))
	s := rpc.NewServer(conn, rpc.WithServerID("quiet"), rpc.WithReflection(false))
	greeterv1.RegisterGreeterServer(s, greeter{id: "quiet"})
	if err := s.Start(rpctest.Context(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	r := runCLI(t, "", "--broker", b.URL, "call", "-t", "quiet", "mqttrpctest.greeter.v1.Greeter/SayHello")
	if r.code != 1 || !strings.Contains(r.stderr, "no online server announces one by reflection") || !strings.Contains(r.stderr, "give --proto FILE") {
		t.Errorf("no schema announced: exit %d, stderr %q; want 1, why, and what to do", r.code, r.stderr)
	}
}

// hvac answers GetTemperature; its service has a topic template with a
// custom token, {site}.
type hvac struct {
	hvacv1.UnimplementedHvacServer
}

func (hvac) GetTemperature(context.Context, *hvacv1.GetTemperatureRequest) (*hvacv1.GetTemperatureResponse, error) {
	return &hvacv1.GetTemperatureResponse{Celsius: 21.5}, nil
}

// A service with a topic template of its own and a custom token: call and
// stats take the token's value from --token, stats asks at the service's
// topic (not the default template's), and a missing token is a usage
// error that names the flag.
func TestCLICustomTemplate(t *testing.T) {
	rpctest.EachBroker(t, func(t *testing.T, b *rpctest.Broker) {
		id := rpctest.UniqueID("plant")
		conn := rpctest.Dial(t, b.URL, rpc.WithClientID(id))
		s := rpc.NewServer(conn, rpc.WithServerID(id))
		hvacv1.RegisterHvacServer(s, hvac{})
		if err := s.Start(rpctest.Context(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
		broker := []string{"--broker", b.URL}

		r := runCLI(t, "", append(broker, "call", "-t", id, "mqttrpctest.hvac.v1.Hvac/GetTemperature")...)
		if r.code != 1 || !strings.Contains(r.stderr, "needs a value for {site}: give --token NAME=VALUE") {
			t.Errorf("call without --token: exit %d, stderr %q", r.code, r.stderr)
		}
		r = runCLI(t, "", append(broker, "call", "-t", id, "--token", "site=north", "mqttrpctest.hvac.v1.Hvac/GetTemperature")...)
		r.want(t, 0)
		if want := "{\n  \"celsius\": 21.5\n}\n"; r.stdout != want {
			t.Errorf("call with --token: stdout %q, want %q", r.stdout, want)
		}
		r = runCLI(t, "", append(broker, "stats", "-t", id, "--token", "site=north")...)
		r.want(t, 0)
		if !strings.Contains(r.stdout, "GetTemperature  1 ") {
			t.Errorf("stats at the service's template: %q", r.stdout)
		}
		r = runCLI(t, "", append(broker, "stats", "-t", id)...)
		if r.code == 0 || !strings.Contains(r.stderr, "give --token NAME=VALUE") {
			t.Errorf("stats without --token: exit %d, stderr %q", r.code, r.stderr)
		}
	})
}

// Two connections serving one server ID: list and call warn that each of
// them runs every call.
func TestCLIDuplicateServerID(t *testing.T) {
	b := rpctest.NewTestbroker(t)
	id := rpctest.UniqueID("twin")
	startServers(t, b.URL, id, id)
	r := runCLI(t, "", "--broker", b.URL, "list")
	r.want(t, 0)
	if !strings.Contains(r.stderr, "warning: server ID "+id+" is online on 2 connections") {
		t.Errorf("list: stderr %q, want a warning about the two connections", r.stderr)
	}
	r = runCLI(t, "", "--broker", b.URL, "call", "-t", id, "-d", `{"name":"x"}`, "mqttrpctest.greeter.v1.Greeter/SayHello")
	r.want(t, 0)
	if !strings.Contains(r.stderr, "each of them runs this call") {
		t.Errorf("call: stderr %q, want a warning", r.stderr)
	}
}

// writeProtoset writes the greeter's FileDescriptorSet, as
// protoc --include_imports --descriptor_set_out would.
func writeProtoset(t *testing.T) string {
	t.Helper()
	var set descriptorpb.FileDescriptorSet
	seen := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		for i := range fd.Imports().Len() {
			add(fd.Imports().Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(fd))
	}
	add(greeterv1.File_mqttrpctest_greeter_v1_greeter_proto)
	data, err := proto.Marshal(&set)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "greeter.protoset")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
