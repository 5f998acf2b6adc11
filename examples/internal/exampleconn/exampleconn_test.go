package exampleconn

import (
	"strings"
	"testing"
)

func TestClientIDsDiffer(t *testing.T) {
	a, b := ClientID("dev-7"), ClientID("dev-7")
	if a == b || !strings.HasPrefix(a, "dev-7-") || len(a) != len("dev-7-")+8 {
		t.Errorf("ClientID gave %q and %q", a, b)
	}
}

func TestOptionsFromEnvironment(t *testing.T) {
	for _, tc := range []struct {
		url, user, password string
		want                int // options: the client ID, and credentials if any
	}{
		{"mqtt://host", "", "", 1},
		{"mqtt://host", "alice", "secret", 2},
		{"mqtt://alice@host", "", "secret", 2},
		{"mqtt://alice@host", "", "", 1},
		{"mqtt://alice:inline@host", "bob", "secret", 1}, // the URL's own password
	} {
		t.Setenv(UsernameEnv, tc.user)
		t.Setenv(PasswordEnv, tc.password)
		if got := len(Options(tc.url, "id")); got != tc.want {
			t.Errorf("Options(%q) with %s=%q %s=%q: %d options, want %d", tc.url, UsernameEnv, tc.user, PasswordEnv, tc.password, got, tc.want)
		}
	}
}
