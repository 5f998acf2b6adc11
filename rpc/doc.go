// Package rpc calls methods of remote servers through an MQTT 5 broker, as
// gRPC does over HTTP/2: typed requests and responses, deadlines, status
// codes, metadata and interceptors. A call is one request PUBLISH and one
// response PUBLISH; docs/protocol.md in the repository is the wire protocol.
//
// The parts:
//
//   - A [Conn] is one connection to a broker ([Dial], or [NewConnection] over
//     an autopaho configuration of your own). It reconnects by itself and
//     restores subscriptions. Any number of Clients and Servers share one.
//   - A [Client] makes calls over a Conn. Its answers arrive on one response
//     topic, mqttrpc/responses/{clientID}, told apart by correlation data.
//   - A [Server] serves the services registered on it under an ID
//     ([WithServerID]: a device ID), as a member of a share group
//     ([WithShareGroup]: one member takes each call), or for every target
//     ([WithGateway]).
//   - A [Stub] is the client side of one method. Code that protoc-gen-mqttrpc
//     generates from a .proto holds one per method behind a typed client
//     (NewThermostatClient), and registers typed handlers with
//     RegisterThermostatServer; without generated code, [Client.Call] and
//     [Server.RegisterService] with a hand-written [ServiceDesc] do the same.
//
// A device serves, a back-end calls it:
//
//	conn, err := rpc.Dial(ctx, "mqtt://127.0.0.1:1883", rpc.WithClientID("dev-1"))
//	srv := rpc.NewServer(conn, rpc.WithServerID("dev-1"))
//	thermostatv1.RegisterThermostatServer(srv, &device{})
//	err = srv.Start(ctx)
//	defer srv.Shutdown(context.Background())
//
//	backend, err := rpc.Dial(ctx, "mqtt://127.0.0.1:1883") // a client ID of its own
//	thermostat := thermostatv1.NewThermostatClient(rpc.NewClient(backend))
//	ctx, cancel := context.WithTimeout(ctx, 2*time.Second) // the call's deadline
//	defer cancel()
//	reading, err := thermostat.GetReading(ctx, &thermostatv1.GetReadingRequest{}, rpc.To("dev-1"))
//
// Every failure is an [*Error] with one of the 17 gRPC codes; [CodeOf] reads
// the code of any error. Calls address one server ([To]), any member of a
// share group ([ToAny]) or every server (the generated BroadcastGetReading,
// [Broadcast]). Options
// ([ConnOption], [ClientOption], [ServerOption], [CallOption]) say what each
// changes and its default. The README's walkthrough builds the example above
// from a .proto, step by step.
package rpc
