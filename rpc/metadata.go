package rpc

import "strings"

// Metadata is the application metadata of a request or response, carried as
// MQTT 5 user properties. Keys are case-sensitive, as MQTT user properties
// are, and may repeat. Keys starting with "mqttrpc-" are reserved for the
// protocol: sending one is an InvalidArgument error, and received ones are
// not shown here.
type Metadata map[string][]string

// reservedPrefix marks user properties that belong to the protocol.
const reservedPrefix = "mqttrpc-"

// Get returns the first value for key, or "".
func (m Metadata) Get(key string) string {
	if v := m[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Set replaces the values of key with value.
func (m Metadata) Set(key, value string) {
	m[key] = []string{value}
}

// Add appends value to the values of key.
func (m Metadata) Add(key, value string) {
	m[key] = append(m[key], value)
}

// Values returns all values of key.
func (m Metadata) Values(key string) []string {
	return m[key]
}

// Del removes key.
func (m Metadata) Del(key string) {
	delete(m, key)
}

// Clone returns a deep copy of m.
func (m Metadata) Clone() Metadata {
	if m == nil {
		return nil
	}
	out := make(Metadata, len(m))
	for k, v := range m {
		out[k] = append([]string(nil), v...)
	}
	return out
}

func isReservedKey(key string) bool {
	return strings.HasPrefix(key, reservedPrefix)
}
