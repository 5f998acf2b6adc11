package rpc

import "context"

// ServiceDesc describes a service: its name, its methods and how they map to
// topics. Generated code declares one per service (<Svc>ServiceDesc) and passes
// it to Server.RegisterService and Client.Stub; hand-written services may do
// the same.
type ServiceDesc struct {
	// ServiceName is the full protobuf name, e.g. "example.thermostat.v1.Thermostat".
	ServiceName string
	// HandlerType is a pointer to the server interface, e.g.
	// (*ThermostatServer)(nil); RegisterService checks the implementation
	// against it.
	HandlerType any
	// Methods lists the unary methods.
	Methods []MethodDesc
	// Streams lists the streaming methods (server, client and
	// bidirectional streaming).
	Streams []StreamDesc
	// Metadata is the source .proto file name, for humans.
	Metadata string
}

// MethodDesc describes one unary method. Generated code resolves the proto
// options (method over service over default), so every field is final.
type MethodDesc struct {
	// MethodName is the method's name, e.g. "SetTarget".
	MethodName string
	// TopicTemplate is the request topic template; "" means
	// DefaultTopicTemplate. See ParseTopicTemplate for the syntax.
	TopicTemplate string
	// QoS is the default QoS of requests (0, 1 or 2); a call may override it
	// with WithQoS. The zero value is QoS 0: generated code always sets it
	// (QoS 1 unless the proto option says otherwise).
	QoS QoS
	// Idempotency is the method's idempotency level from the standard
	// idempotency_level option.
	Idempotency Idempotency
	// NewRequest returns a new, empty request message for decoding.
	NewRequest func() any
	// Handler calls the method on srv, the registered implementation.
	Handler func(srv any, ctx context.Context, req any) (any, error)
}

// QoS is an MQTT quality of service level: 0, 1 or 2.
type QoS byte

// The MQTT QoS levels.
const (
	// QoS0 delivers at most once: no acknowledgement, no redelivery.
	QoS0 QoS = 0
	// QoS1 delivers at least once; it is the default for requests.
	QoS1 QoS = 1
	// QoS2 delivers exactly once between each client and the broker.
	QoS2 QoS = 2
)

// Idempotency is a method's idempotency level, as declared with the standard
// protobuf option idempotency_level.
type Idempotency int

// The idempotency levels, numbered as in google.protobuf.MethodOptions.
const (
	// IdempotencyUnknown means the method may have side effects.
	IdempotencyUnknown Idempotency = 0
	// NoSideEffects means the method only reads.
	NoSideEffects Idempotency = 1
	// Idempotent means calling the method twice has the effect of calling it once.
	Idempotent Idempotency = 2
)

// String returns the level's protobuf name.
func (i Idempotency) String() string {
	switch i {
	case NoSideEffects:
		return "NO_SIDE_EFFECTS"
	case Idempotent:
		return "IDEMPOTENT"
	}
	return "IDEMPOTENCY_UNKNOWN"
}

// SupportPackageIsVersion1 is referenced by generated code to check at
// compile time that the runtime is new enough for it. Later runtimes keep the
// older constants as long as they support the older generated code.
const SupportPackageIsVersion1 = true

// Version is the version of the mqttrpc runtime.
const Version = "0.1.0"
