package otelrpc

import (
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// SystemName is the value of rpc.system.name on mqttrpc spans and metrics.
const SystemName = "mqttrpc"

// MessagingSystem is the value of messaging.system on mqttrpc spans.
const MessagingSystem = "mqtt"

// Attribute keys of mqttrpc's own, beside the semantic conventions'.
const (
	// StatusCodeKey is the call's code as a number (0 = OK, 3 =
	// InvalidArgument, ...), the value of the mqttrpc-status user property.
	// rpc.response.status_code carries the same code by name.
	StatusCodeKey = attribute.Key("rpc.mqttrpc.status_code")
	// TargetKey is the call's target: a server ID, "_any" or "_all".
	TargetKey = attribute.Key("rpc.mqttrpc.target")
	// DropReasonKey says why a server dropped a request, as
	// rpc.DropReason.String spells it ("expired", "duplicate", ...).
	DropReasonKey = attribute.Key("rpc.mqttrpc.drop_reason")
)

var systemNameAttr = semconv.RPCSystemNameKey.String(SystemName)

// statusNames are the codes as gRPC spells them in rpc.response.status_code.
var statusNames = [...]string{
	rpc.OK:                 "OK",
	rpc.Canceled:           "CANCELLED",
	rpc.Unknown:            "UNKNOWN",
	rpc.InvalidArgument:    "INVALID_ARGUMENT",
	rpc.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	rpc.NotFound:           "NOT_FOUND",
	rpc.AlreadyExists:      "ALREADY_EXISTS",
	rpc.PermissionDenied:   "PERMISSION_DENIED",
	rpc.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	rpc.FailedPrecondition: "FAILED_PRECONDITION",
	rpc.Aborted:            "ABORTED",
	rpc.OutOfRange:         "OUT_OF_RANGE",
	rpc.Unimplemented:      "UNIMPLEMENTED",
	rpc.Internal:           "INTERNAL",
	rpc.Unavailable:        "UNAVAILABLE",
	rpc.DataLoss:           "DATA_LOSS",
	rpc.Unauthenticated:    "UNAUTHENTICATED",
}

const numCodes = len(statusNames)

func statusName(code rpc.Code) string {
	if int(code) < numCodes {
		return statusNames[code]
	}
	return strconv.FormatUint(uint64(code), 10)
}

// isServerError reports whether a server span fails with code: the gRPC
// conventions count only the codes that mean the server failed.
func isServerError(code rpc.Code) bool {
	switch code {
	case rpc.Unknown, rpc.DeadlineExceeded, rpc.Unimplemented, rpc.Internal, rpc.Unavailable, rpc.DataLoss:
		return true
	}
	return false
}

// methodKey names one side of one method.
type methodKey struct {
	isClient bool
	service  string
	method   string
}

// methodAttributes is what every call of one method on one side shares,
// computed once so that a call allocates no attribute slices or sets.
type methodAttributes struct {
	name      string // "service/method": span name and rpc.method
	spanStart []trace.SpanStartOption
	active    []metric.AddOption
	// sent and received are the attributes of stream message counts.
	sent, received []metric.AddOption
	byCode         [numCodes]*codeAttributes
}

// codeAttributes is what the calls of one method that end with one code
// share.
type codeAttributes struct {
	failed     bool
	span       []attribute.KeyValue
	record     []metric.RecordOption
	statusName string
}

func newMethodAttributes(key methodKey) *methodAttributes {
	name := key.service + "/" + key.method
	kind := trace.SpanKindServer
	if key.isClient {
		kind = trace.SpanKindClient
	}
	m := &methodAttributes{
		name: name,
		spanStart: []trace.SpanStartOption{
			trace.WithSpanKind(kind),
			trace.WithAttributes(
				systemNameAttr,
				semconv.RPCMethod(name),
				semconv.MessagingSystemKey.String(MessagingSystem),
			),
		},
		active:   []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(systemNameAttr, semconv.RPCMethod(name)))},
		sent:     []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(systemNameAttr, semconv.RPCMethod(name), messageTypeSent))},
		received: []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(systemNameAttr, semconv.RPCMethod(name), messageTypeReceived))},
	}
	for code := range m.byCode {
		m.byCode[code] = newCodeAttributes(name, key.isClient, rpc.Code(code))
	}
	return m
}

func (m *methodAttributes) forCode(code rpc.Code, isClient bool) *codeAttributes {
	if int(code) < numCodes {
		return m.byCode[code]
	}
	return newCodeAttributes(m.name, isClient, code) // a code from a newer peer
}

func newCodeAttributes(name string, isClient bool, code rpc.Code) *codeAttributes {
	c := &codeAttributes{
		failed:     code != rpc.OK && (isClient || isServerError(code)),
		statusName: statusName(code),
	}
	c.span = []attribute.KeyValue{
		semconv.RPCResponseStatusCode(c.statusName),
		StatusCodeKey.Int64(int64(code)),
	}
	metricAttrs := []attribute.KeyValue{
		systemNameAttr,
		semconv.RPCMethod(name),
		semconv.RPCResponseStatusCode(c.statusName),
	}
	if c.failed {
		errorType := semconv.ErrorTypeKey.String(c.statusName)
		c.span = append(c.span, errorType)
		metricAttrs = append(metricAttrs, errorType)
	}
	c.record = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(metricAttrs...))}
	return c
}
