package rpc

import (
	"context"
	"errors"
	"fmt"
)

// Error is an RPC error: a Code, a message meant for humans, an optional
// wrapped cause and metadata. Handlers return one to choose the code the
// caller sees; callers get one from every failed call and inspect it with
// errors.As or CodeOf.
type Error struct {
	code Code
	err  error
	meta Metadata
	wire bool // received from a server, not made locally
}

// NewError returns an error with the given code wrapping err. The message
// sent to the caller is err.Error().
func NewError(code Code, err error) *Error {
	return &Error{code: code, err: err}
}

// Errorf returns an error with the given code and a formatted message. A %w
// verb wraps its argument as with fmt.Errorf.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{code: code, err: fmt.Errorf(format, args...)}
}

// Code returns the error's status code. A nil *Error has code OK.
func (e *Error) Code() Code {
	if e == nil {
		return OK
	}
	return e.code
}

// Message returns the human-readable message, without the code.
func (e *Error) Message() string {
	if e == nil || e.err == nil {
		return ""
	}
	return e.err.Error()
}

// Error returns "Code: message", e.g. "InvalidArgument: target out of range".
// A nil *Error reads "OK".
func (e *Error) Error() string {
	if e == nil {
		return OK.String()
	}
	msg := e.Message()
	if msg == "" {
		return e.code.String()
	}
	return e.code.String() + ": " + msg
}

// IsWireError reports whether err is, or wraps, an *Error that a server sent
// over the wire, as opposed to one the client made itself (a deadline that
// passed, a connection that failed, a request it refused to send).
func IsWireError(err error) bool {
	var e *Error
	return errors.As(err, &e) && e != nil && e.wire
}

// Unwrap returns the wrapped cause, if any.
func (e *Error) Unwrap() error {
	if e == nil {
		return nil
	}
	return e.err
}

// Meta returns the error's metadata: on the server, user properties to send
// with the error response; on the client, the user properties of the error
// response. The map may be modified; it is never nil on a non-nil *Error.
// A nil *Error has no metadata: Meta returns nil.
func (e *Error) Meta() Metadata {
	if e == nil {
		return nil
	}
	if e.meta == nil {
		e.meta = Metadata{}
	}
	return e.meta
}

// CodeOf returns the code of err: OK for nil (a nil *Error included), the
// code of an *Error found with errors.As, Canceled or DeadlineExceeded for
// the context errors, and Unknown for anything else.
func CodeOf(err error) Code {
	if isNilError(err) {
		return OK
	}
	var rpcErr *Error
	if errors.As(err, &rpcErr) {
		return rpcErr.Code()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return Canceled
	}
	return Unknown
}

// isNilError reports whether err is nil or a nil *Error in an error
// interface (a typed nil, as from `return nil, validate()` where validate
// returns *Error): that is no error.
func isNilError(err error) bool {
	if err == nil {
		return true
	}
	e, ok := err.(*Error)
	return ok && e == nil
}

// asError converts any error into an *Error following CodeOf.
func asError(err error) *Error {
	var rpcErr *Error
	if errors.As(err, &rpcErr) {
		return rpcErr
	}
	return &Error{code: CodeOf(err), err: err}
}

// contextError turns a context error into Canceled or DeadlineExceeded
// that wraps it, so that errors.Is(err, context.DeadlineExceeded) holds.
func contextError(err error, doing string) *Error {
	if errors.Is(err, context.Canceled) {
		return wrapCause(Canceled, err, "call canceled while "+doing)
	}
	return wrapCause(DeadlineExceeded, err, "deadline exceeded while "+doing)
}

// wrapCause returns an error with the code and message that wraps cause
// without repeating its text in the message.
func wrapCause(code Code, cause error, message string) *Error {
	return &Error{code: code, err: &causeError{message: message, cause: cause}}
}

// causeError is a message with a cause that errors.Is and errors.As find.
type causeError struct {
	message string
	cause   error
}

func (e *causeError) Error() string { return e.message }
func (e *causeError) Unwrap() error { return e.cause }
