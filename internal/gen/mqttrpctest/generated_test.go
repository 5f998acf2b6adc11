// Package mqttrpctest_test calls the generated code of the test protos over
// a real broker: what protoc-gen-mqttrpc writes must compile and work with
// the rpc runtime, not only match its golden files.
package mqttrpctest_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	clockv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/clock/v1"
	commonv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/common/v1"
	editionsv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/editions/v1"
	greeterv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/greeter/v1"
	hvacv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/hvac/v1"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const deviceID = "dev-1"

var clientSeq atomic.Int64

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, url, role string) *rpc.Conn {
	t.Helper()
	id := fmt.Sprintf("%s-%s-%d", t.Name(), role, clientSeq.Add(1))
	conn, err := rpc.Dial(testCtx(t), url, rpc.WithClientID(sanitize(id)))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// sanitize makes a test name usable as a client ID (a topic level).
func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '/' || c == '+' || c == '#' || c == ' ' {
			b[i] = '_'
		}
	}
	return string(b)
}

// serve starts a server with ID deviceID on which register registers the
// generated services; it shuts down at cleanup.
func serve(t *testing.T, url string, register func(s *rpc.Server)) {
	t.Helper()
	srv := rpc.NewServer(dial(t, url, "server"), rpc.WithServerID(deviceID))
	register(srv)
	if err := srv.Start(testCtx(t)); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
}

func newClient(t *testing.T, url string) *rpc.Client {
	t.Helper()
	c := rpc.NewClient(dial(t, url, "client"))
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func wantCode(t *testing.T, err error, want rpc.Code) {
	t.Helper()
	var rpcErr *rpc.Error
	if !errors.As(err, &rpcErr) || rpcErr.Code() != want {
		t.Fatalf("error = %v, want code %v", err, want)
	}
}

type greeter struct {
	greeterv1.UnimplementedGreeterServer
}

func (greeter) SayHello(_ context.Context, req *greeterv1.SayHelloRequest) (*greeterv1.SayHelloResponse, error) {
	return &greeterv1.SayHelloResponse{Greeting: "hello " + req.GetName()}, nil
}

func TestGreeter(t *testing.T) {
	t.Parallel()
	b := testbroker.Start(t)
	serve(t, b.URL(), func(s *rpc.Server) { greeterv1.RegisterGreeterServer(s, greeter{}) })
	client := greeterv1.NewGreeterClient(newClient(t, b.URL()), rpc.To(deviceID))
	ctx := testCtx(t)

	resp, err := client.SayHello(ctx, &greeterv1.SayHelloRequest{Name: "world"})
	if err != nil {
		t.Fatalf("SayHello: %v", err)
	}
	if resp.GetGreeting() != "hello world" {
		t.Errorf("greeting = %q", resp.GetGreeting())
	}

	// Not implemented: the embedded UnimplementedGreeterServer answers. The
	// method is deprecated in the proto, which the generated code says.
	//lint:ignore SA1019 the deprecation is what is tested
	_, err = client.SayHelloAgain(ctx, &greeterv1.SayHelloRequest{Name: "world"})
	wantCode(t, err, rpc.Unimplemented)
}

// hvac records what the handlers saw of their calls.
type hvac struct {
	hvacv1.UnimplementedHvacServer
	calls chan *rpc.Call
}

func (h *hvac) GetTemperature(ctx context.Context, _ *hvacv1.GetTemperatureRequest) (*hvacv1.GetTemperatureResponse, error) {
	h.record(ctx)
	return &hvacv1.GetTemperatureResponse{Celsius: 21.5}, nil
}

func (h *hvac) Reboot(ctx context.Context, _ *hvacv1.RebootRequest) (*hvacv1.RebootResponse, error) {
	h.record(ctx)
	return &hvacv1.RebootResponse{}, nil
}

func (h *hvac) record(ctx context.Context) {
	call, _ := rpc.CallFromContext(ctx)
	h.calls <- call
}

// TestHvacOptions checks that the options of hvac.proto reach the wire: the
// service's custom template with its {site} token, a method's own template,
// and the idempotency level.
func TestHvacOptions(t *testing.T) {
	t.Parallel()
	b := testbroker.Start(t)
	impl := &hvac{calls: make(chan *rpc.Call, 4)}
	serve(t, b.URL(), func(s *rpc.Server) {
		hvacv1.RegisterHvacServer(s, impl)
		hvacv1.RegisterThermometerServer(s, hvacv1.UnimplementedThermometerServer{})
	})
	c := newClient(t, b.URL())
	client := hvacv1.NewHvacClient(c, rpc.To(deviceID), rpc.WithToken("site", "north"))
	ctx := testCtx(t)

	resp, err := client.GetTemperature(ctx, &hvacv1.GetTemperatureRequest{})
	if err != nil {
		t.Fatalf("GetTemperature: %v", err)
	}
	if resp.GetCelsius() != 21.5 {
		t.Errorf("celsius = %v", resp.GetCelsius())
	}
	call := <-impl.calls
	if got, want := call.Topic(), "plant/north/dev-1/hvac/GetTemperature"; got != want {
		t.Errorf("GetTemperature topic = %q, want %q", got, want)
	}
	if call.Token("site") != "north" || call.Idempotency() != rpc.NoSideEffects {
		t.Errorf("GetTemperature call: site %q, idempotency %v", call.Token("site"), call.Idempotency())
	}

	if _, err := client.Reboot(ctx, &hvacv1.RebootRequest{DelaySeconds: 1}); err != nil {
		t.Fatalf("Reboot: %v", err)
	}
	call = <-impl.calls
	if got, want := call.Topic(), "plant/north/maintenance/dev-1/Reboot"; got != want {
		t.Errorf("Reboot topic = %q, want %q", got, want)
	}

	// A custom token is required: the call fails before anything is sent.
	noSite := hvacv1.NewHvacClient(c, rpc.To(deviceID))
	_, err = noSite.GetTemperature(ctx, &hvacv1.GetTemperatureRequest{})
	wantCode(t, err, rpc.InvalidArgument)

	// The second service of the file uses the default template.
	_, err = hvacv1.NewThermometerClient(c).Read(ctx, &hvacv1.GetTemperatureRequest{}, rpc.To(deviceID))
	wantCode(t, err, rpc.Unimplemented)
}

type clock struct {
	clockv1.UnimplementedClockServer
	now time.Time
}

func (c clock) Now(context.Context, *emptypb.Empty) (*timestamppb.Timestamp, error) {
	return timestamppb.New(c.now), nil
}

func (clock) Set(_ context.Context, req *clockv1.SetRequest) (*commonv1.Ack, error) {
	return &commonv1.Ack{Ok: true, Detail: req.GetDevice().GetId()}, nil
}

// TestClockImportedTypes calls methods whose messages are well-known types
// and messages of another proto package.
func TestClockImportedTypes(t *testing.T) {
	t.Parallel()
	b := testbroker.Start(t)
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	serve(t, b.URL(), func(s *rpc.Server) { clockv1.RegisterClockServer(s, clock{now: now}) })
	client := clockv1.NewClockClient(newClient(t, b.URL()), rpc.To(deviceID))
	ctx := testCtx(t)

	ts, err := client.Now(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatalf("Now: %v", err)
	}
	if !ts.AsTime().Equal(now) {
		t.Errorf("Now = %v, want %v", ts.AsTime(), now)
	}
	ack, err := client.Set(ctx, &clockv1.SetRequest{Device: &commonv1.Device{Id: "d"}, Time: ts})
	if err != nil || !ack.GetOk() || ack.GetDetail() != "d" {
		t.Fatalf("Set = %v, %v", ack, err)
	}
	_, err = client.Locate(ctx, &commonv1.Device{Id: "d"})
	wantCode(t, err, rpc.Unimplemented)
}

type lamp struct {
	editionsv1.UnimplementedLampServer
}

func (lamp) Switch(_ context.Context, req *editionsv1.SwitchRequest) (*commonv1.Ack, error) {
	return &commonv1.Ack{Ok: req.GetOn(), Detail: fmt.Sprint(req.Brightness != nil, req.GetBrightness())}, nil
}

// TestEditions calls the service of the edition 2023 file.
func TestEditions(t *testing.T) {
	t.Parallel()
	b := testbroker.Start(t)
	serve(t, b.URL(), func(s *rpc.Server) { editionsv1.RegisterLampServer(s, lamp{}) })
	client := editionsv1.NewLampClient(newClient(t, b.URL()))
	ack, err := client.Switch(testCtx(t), &editionsv1.SwitchRequest{On: true, Brightness: proto32(0)}, rpc.To(deviceID))
	if err != nil {
		t.Fatalf("Switch: %v", err)
	}
	// Explicit presence survives the trip even for a zero value.
	if !ack.GetOk() || ack.GetDetail() != "true 0" {
		t.Errorf("Switch = %v", ack)
	}
}

func proto32(v int32) *int32 { return &v }
