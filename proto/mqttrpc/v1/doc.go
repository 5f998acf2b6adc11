// Package mqttrpcv1 holds the Go types of mqttrpc/v1/options.proto, the proto
// options that tell protoc-gen-mqttrpc how a service's methods travel over
// MQTT: their request topic template and QoS.
//
// Applications rarely use this package directly: they import the .proto file
// and set the options there,
//
//	import "mqttrpc/v1/options.proto";
//
//	service Hvac {
//	  option (mqttrpc.v1.service).topic_template = "plant/{site}/{target}/hvac/{method}";
//
//	  rpc GetTemperature(GetTemperatureRequest) returns (GetTemperatureResponse) {
//	    option idempotency_level = NO_SIDE_EFFECTS;
//	    option (mqttrpc.v1.method).qos = QOS_AT_MOST_ONCE;
//	  }
//	}
//
// and the generator resolves them (method over service over the defaults
// "mqttrpc/{service}/{target}/{method}" and QoS 1) into the generated
// rpc.ServiceDesc. Tools that read descriptors use [E_Service] and [E_Method]
// with proto.GetExtension.
//
// The .proto file is in the repository at proto/mqttrpc/v1/options.proto; pass
// -I <repo>/proto to protoc, or depend on the directory as a buf module.
package mqttrpcv1
