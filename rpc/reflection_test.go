package rpc_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/mqttrpc/mqttrpc/examples/thermostat/thermostatv1"
	greeterv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/greeter/v1"
	"github.com/mqttrpc/mqttrpc/rpc"
)

type thermostatStub struct {
	thermostatv1.UnimplementedThermostatServer
}

// startThermostat starts a device server of two generated services,
// Thermostat and Greeter, on a connection of its own.
func startThermostat(t *testing.T, url, id string, opts ...rpc.ServerOption) *rpc.Server {
	t.Helper()
	conn := dial(t, url, rpc.WithClientID(id))
	srv := rpc.NewServer(conn, append([]rpc.ServerOption{rpc.WithServerID(id)}, opts...)...)
	thermostatv1.RegisterThermostatServer(srv, thermostatStub{})
	greeterv1.RegisterGreeterServer(srv, greeterv1.UnimplementedGreeterServer{})
	if err := srv.Start(testCtx(t)); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return srv
}

// reflectionMessages returns what a raw client receives until the message
// on marker, which it publishes after everything it waits for.
func reflectionMessages(t *testing.T, rc *rawClient, marker string) []*paho.Publish {
	t.Helper()
	var got []*paho.Publish
	for {
		p := rc.Next(30e9)
		if p == nil {
			t.Fatal("the marker did not arrive")
		}
		if p.Topic == marker {
			return got
		}
		got = append(got, p)
	}
}

// Three devices of one firmware: the broker ends up retaining the schema
// once, published by the first device only (the others find it there);
// every device's record names the version; a caller without .proto files
// fetches it, and it describes the service exactly as the generated code
// does.
func TestReflectionSchemaOncePerVersion(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		spy := newRawClient(t, b.url, uniqueID("spy"))
		spy.SubscribeTo(t, rpc.ReflectionPrefix+"#")
		ids := []string{uniqueID("dev"), uniqueID("dev"), uniqueID("dev")}
		for _, id := range ids {
			startThermostat(t, b.url, id)
		}
		marker := rpc.ReflectionPrefix + "marker/" + uniqueID("m")
		spy.PublishTo(t, marker, nil, "x")
		published := reflectionMessages(t, spy, marker)
		if len(published) != 2 {
			t.Fatalf("%d schema publishes for 3 devices of one version of 2 services, want 2", len(published))
		}
		p := published[0]
		if !strings.Contains(p.Topic, thermostatv1.ThermostatName) {
			p = published[1]
		}
		if p.QoS != 1 {
			t.Errorf("schema published at QoS %d, want 1", p.QoS)
		}
		if p.Properties == nil || p.Properties.ContentType != "application/protobuf" {
			t.Errorf("schema ContentType %+v, want application/protobuf", p.Properties)
		}
		version := rpc.SchemaVersion(p.Payload)
		if p.Topic != rpc.ReflectionPrefix+thermostatv1.ThermostatName+"/"+version {
			t.Errorf("schema on %q, want its version %s in the topic", p.Topic, version)
		}

		_, fleet := watchFleet(t, b.url)
		for _, id := range ids {
			si, ok := fleet.Server(id)
			if !ok || len(si.Services) != 2 || !slices.ContainsFunc(si.Services, func(s rpc.ServiceInfo) bool { return s.Schema == version }) {
				t.Fatalf("server %s: %+v, want the service's schema %s", id, si, version)
			}
		}
		set, err := fleet.Schema(testCtx(t), thermostatv1.ThermostatName)
		if err != nil {
			t.Fatalf("Schema: %v", err)
		}
		files, err := protodesc.NewFiles(set)
		if err != nil {
			t.Fatalf("the schema is not a valid FileDescriptorSet: %v", err)
		}
		d, err := files.FindDescriptorByName(thermostatv1.ThermostatName)
		if err != nil {
			t.Fatalf("the schema lacks the service: %v", err)
		}
		want := thermostatv1.File_thermostat_thermostatv1_thermostat_proto.Services().ByName("Thermostat")
		got := d.(protoreflect.ServiceDescriptor)
		if got.Methods().Len() != want.Methods().Len() {
			t.Fatalf("schema has %d methods, want %d", got.Methods().Len(), want.Methods().Len())
		}
		for i := range want.Methods().Len() {
			wm, gm := want.Methods().Get(i), got.Methods().ByName(want.Methods().Get(i).Name())
			if gm == nil || gm.Input().FullName() != wm.Input().FullName() || gm.Output().FullName() != wm.Output().FullName() || gm.IsStreamingServer() != wm.IsStreamingServer() {
				t.Errorf("method %s: schema has %v", wm.Name(), gm)
			}
		}
		if !proto.Equal(protodesc.ToFileDescriptorProto(got.ParentFile()), protodesc.ToFileDescriptorProto(want.ParentFile())) {
			t.Errorf("the schema's file differs from the generated descriptor")
		}
	})
}

// A broker that lost its retained store (restarted without persistence)
// gets the schema back from the devices as they reconnect: a caller that
// comes afterwards reads it.
func TestReflectionRestoredAfterBrokerRestart(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		id := uniqueID("dev")
		srv := startThermostat(t, b.url, id)
		if b.tb != nil {
			if err := b.tb.Restart(); err != nil {
				t.Fatal(err)
			}
		} else {
			b.mq.Restart()
		}
		// The device is back when its record is, and it checks (and
		// restores) its schemas before it publishes the record. Nobody
		// subscribes to them meanwhile: Mosquitto answers their PUBACK
		// 0x10 (no matching subscribers), and keeps them.
		_, fleet := watchFleet(t, b.url)
		awaitOnline(t, fleet, id)
		if _, err := fleet.Schema(testCtx(t), greeterv1.GreeterName); err != nil {
			t.Fatalf("the second service's schema: %v", err)
		}
		set, err := fleet.Schema(testCtx(t), thermostatv1.ThermostatName)
		if err != nil {
			t.Fatalf("Schema after the broker lost its retained messages: %v", err)
		}
		if len(set.File) == 0 || set.File[len(set.File)-1].GetName() != thermostatv1.File_thermostat_thermostatv1_thermostat_proto.Path() {
			t.Fatalf("schema files %v, want the thermostat's last", fileNames(set.File))
		}
		_ = srv
	})
}

func fileNames[T interface{ GetName() string }](files []T) []string {
	var names []string
	for _, f := range files {
		names = append(names, f.GetName())
	}
	return names
}

// What a reader is told when the schema cannot be had: an unknown
// version is NotFound, a forged one DataLoss, a bad name InvalidArgument;
// a server with reflection off, or a hand-written service, announces none.
func TestReflectionErrors(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, b *broker) {
		conn, fleet := watchFleet(t, b.url)
		ctx := testCtx(t)
		_, err := rpc.FetchSchema(ctx, conn, thermostatv1.ThermostatName, "0123456789abcdef")
		wantCode(t, err, rpc.NotFound)
		_, err = rpc.FetchSchema(ctx, conn, "a/b", "0123456789abcdef")
		wantCode(t, err, rpc.InvalidArgument)
		_, err = rpc.FetchSchema(ctx, conn, thermostatv1.ThermostatName, "latest")
		wantCode(t, err, rpc.InvalidArgument)

		service := "forged.v1.Service" + uniqueID("")
		forger := newRawClient(t, b.url, uniqueID("forger"))
		if _, err := forger.Publish(ctx, &paho.Publish{Topic: rpc.ReflectionPrefix + service + "/0123456789abcdef", QoS: 1, Retain: true, Payload: []byte("not the schema")}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_, _ = forger.Publish(context.Background(), &paho.Publish{Topic: rpc.ReflectionPrefix + service + "/0123456789abcdef", QoS: 1, Retain: true})
		})
		_, err = rpc.FetchSchema(ctx, conn, service, "0123456789abcdef")
		wantCode(t, err, rpc.DataLoss)

		off := uniqueID("dev")
		startThermostat(t, b.url, off, rpc.WithReflection(false))
		hand := uniqueID("dev")
		serveOn(t, dial(t, b.url, rpc.WithClientID(hand)), rpc.WithServerID(hand))
		awaitOnline(t, fleet, off, hand)
		for _, id := range []string{off, hand} {
			si, _ := fleet.Server(id)
			if len(si.Services) == 0 || slices.ContainsFunc(si.Services, func(s rpc.ServiceInfo) bool { return s.Schema != "" }) {
				t.Errorf("%s announces %+v, want no schema", id, si.Services)
			}
		}
		_, err = fleet.Schema(ctx, thermostatv1.ThermostatName)
		if e := wantCode(t, err, rpc.NotFound); !contains(e.Message(), "announces its schema") {
			t.Errorf("message %q does not say why", e.Message())
		}
		_, err = fleet.Schema(ctx, "nobody.v1.Serves")
		if e := wantCode(t, err, rpc.NotFound); !contains(e.Message(), "no online server serves") {
			t.Errorf("message %q does not say why", e.Message())
		}
	})
}
