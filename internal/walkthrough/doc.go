// Package walkthrough holds the test that runs the README's walkthrough
// ("from a .proto to a call") as written: in a fresh module, with protoc and
// the plugins built from this checkout, against real brokers. The README is
// the test's input; see walkthrough_test.go for the markers it reads.
package walkthrough
