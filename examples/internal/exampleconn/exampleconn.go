// Package exampleconn holds what every example does to connect to a broker
// given with -broker: a client ID of its own, and credentials from the
// environment so that no password is typed on a command line.
//
//	MQTTRPC_USERNAME=alice MQTTRPC_PASSWORD=secret go run ./examples/thermostat/device -broker mqtt://broker:1883
//	MQTTRPC_PASSWORD=secret go run ./examples/thermostat/device -broker mqtt://alice@broker:1883
package exampleconn

import (
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// The environment variables the examples read.
const (
	UsernameEnv = "MQTTRPC_USERNAME"
	PasswordEnv = "MQTTRPC_PASSWORD"
)

// ClientID returns prefix followed by eight random hex digits, so that two
// copies of an example on one broker never share a client ID (a broker
// hands the session of one to the other, back and forth).
func ClientID(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// Options returns the connection options for brokerURL: the client ID and,
// from the environment, the credentials. A user name in the URL
// (mqtt://alice@host) takes MQTTRPC_PASSWORD as its password; otherwise
// MQTTRPC_USERNAME and MQTTRPC_PASSWORD are used when set. A password in
// the URL itself is used as it is.
func Options(brokerURL, clientID string) []rpc.ConnOption {
	opts := []rpc.ConnOption{rpc.WithClientID(clientID)}
	password := os.Getenv(PasswordEnv)
	u, err := url.Parse(brokerURL)
	switch {
	case err != nil:
		// Dial reports the bad URL.
	case u.User != nil:
		if _, set := u.User.Password(); !set && password != "" {
			opts = append(opts, rpc.WithCredentials(u.User.Username(), password))
		}
	case os.Getenv(UsernameEnv) != "":
		opts = append(opts, rpc.WithCredentials(os.Getenv(UsernameEnv), password))
	}
	return opts
}

// Redacted returns brokerURL with any password replaced by "xxxxx", for
// printing.
func Redacted(brokerURL string) string {
	u, err := url.Parse(brokerURL)
	if err != nil {
		return "(invalid URL)"
	}
	return u.Redacted()
}
