// Package protoopts reads mqttrpc's proto options (proto/mqttrpc/v1) for
// the two programs that resolve them from descriptors: the protoc plugin,
// when it generates code, and the mqttrpc command, when it calls a service
// from its .proto files without generated code.
package protoopts

import (
	"fmt"

	mqttrpcv1 "github.com/mqttrpc/mqttrpc/proto/mqttrpc/v1"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// QoS maps the option's enum to an MQTT QoS; unspecified means QoS 1. An
// enum value from a newer options.proto than this program knows is an
// error.
func QoS(q mqttrpcv1.Qos) (rpc.QoS, error) {
	switch q {
	case mqttrpcv1.Qos_QOS_UNSPECIFIED, mqttrpcv1.Qos_QOS_AT_LEAST_ONCE:
		return rpc.QoS1, nil
	case mqttrpcv1.Qos_QOS_AT_MOST_ONCE:
		return rpc.QoS0, nil
	case mqttrpcv1.Qos_QOS_EXACTLY_ONCE:
		return rpc.QoS2, nil
	}
	return 0, fmt.Errorf("unknown value %d", q)
}
