package rpc

import (
	"fmt"
	"strconv"
)

// Code is the status of a call. The codes and their numbers are gRPC's, so
// users and tools already know them. A response carries its code as a decimal
// in the mqttrpc-status user property.
type Code uint32

// The status codes, numbered as in gRPC.
const (
	// OK means the call succeeded. It is never the code of an *Error.
	OK Code = 0
	// Canceled means the caller cancelled the call.
	Canceled Code = 1
	// Unknown is the code of a plain Go error returned by a handler.
	Unknown Code = 2
	// InvalidArgument means the request was malformed: a payload that does not
	// decode, an unknown content type, a bad topic token.
	InvalidArgument Code = 3
	// DeadlineExceeded means no response arrived before the call's deadline.
	DeadlineExceeded Code = 4
	// NotFound means a requested entity was not found.
	NotFound Code = 5
	// AlreadyExists means an entity the call tried to create already exists.
	AlreadyExists Code = 6
	// PermissionDenied means the caller may not do this; the broker answered
	// the request's PUBLISH with reason code 0x87 (not authorized).
	PermissionDenied Code = 7
	// ResourceExhausted means a limit was hit: the server's concurrency or
	// queue limit, the broker's quota (0x97) or packet size (0x95).
	ResourceExhausted Code = 8
	// FailedPrecondition means the system is not in a state that allows the call.
	FailedPrecondition Code = 9
	// Aborted means the operation was aborted, typically by a concurrency conflict.
	Aborted Code = 10
	// OutOfRange means an argument was past the valid range.
	OutOfRange Code = 11
	// Unimplemented means the server does not implement the method.
	Unimplemented Code = 12
	// Internal means an invariant broke; a handler panic is reported as Internal.
	Internal Code = 13
	// Unavailable means the call could not be delivered: not connected, the
	// publish failed, or the broker reported no matching subscribers (0x10).
	// It is safe to retry.
	Unavailable Code = 14
	// DataLoss means unrecoverable data loss or corruption.
	DataLoss Code = 15
	// Unauthenticated means the caller's credentials are missing or invalid.
	Unauthenticated Code = 16
)

const maxCode = Unauthenticated

var codeNames = [...]string{
	OK:                 "OK",
	Canceled:           "Canceled",
	Unknown:            "Unknown",
	InvalidArgument:    "InvalidArgument",
	DeadlineExceeded:   "DeadlineExceeded",
	NotFound:           "NotFound",
	AlreadyExists:      "AlreadyExists",
	PermissionDenied:   "PermissionDenied",
	ResourceExhausted:  "ResourceExhausted",
	FailedPrecondition: "FailedPrecondition",
	Aborted:            "Aborted",
	OutOfRange:         "OutOfRange",
	Unimplemented:      "Unimplemented",
	Internal:           "Internal",
	Unavailable:        "Unavailable",
	DataLoss:           "DataLoss",
	Unauthenticated:    "Unauthenticated",
}

// String returns the code's gRPC name, such as "InvalidArgument", or
// "Code(N)" for a number outside the known range.
func (c Code) String() string {
	if c <= maxCode {
		return codeNames[c]
	}
	return "Code(" + strconv.FormatUint(uint64(c), 10) + ")"
}

// MarshalText implements encoding.TextMarshaler with the code's name.
func (c Code) MarshalText() ([]byte, error) {
	return []byte(c.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler. It accepts a code's name
// (as printed by String) or its decimal number.
func (c *Code) UnmarshalText(text []byte) error {
	s := string(text)
	for i, name := range codeNames {
		if name == s {
			*c = Code(i)
			return nil
		}
	}
	if n, err := strconv.ParseUint(s, 10, 32); err == nil && Code(n) <= maxCode {
		*c = Code(n)
		return nil
	}
	return fmt.Errorf("rpc: invalid code %q", s)
}
