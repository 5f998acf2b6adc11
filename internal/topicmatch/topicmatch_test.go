package topicmatch

import "testing"

func TestMatchTopic(t *testing.T) {
	t.Parallel()
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a", false},
		{"a", "a/b", false},
		{"a/+", "a/b", true},
		{"a/+", "a/", true},
		{"a/+", "a/b/c", false},
		{"+/+", "a/b", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"#", "a/b", true},
		{"+/#", "a", true},
		{"#", "$SYS/x", false},
		{"+/x", "$x/x", false},
		{"$x/+", "$x/y", true},
		{"mqttrpc/+/+/Get", "mqttrpc/svc/dev-1/Get", true},
		{"mqttrpc/+/+/Get", "mqttrpc/svc/dev-1/Set", false},
	}
	for _, tt := range tests {
		if got := Match(tt.filter, tt.topic); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
		}
	}
}

func TestValidFilter(t *testing.T) {
	t.Parallel()
	for _, filter := range []string{"a", "a/b", "+", "#", "a/+/c", "a/#", "+/+/#", "$SYS/#"} {
		if !ValidFilter(filter) {
			t.Errorf("ValidFilter(%q) = false, want true", filter)
		}
	}
	for _, filter := range []string{"", "a/#/b", "a+", "a/b#", "$share/g/a", "a\x00"} {
		if ValidFilter(filter) {
			t.Errorf("ValidFilter(%q) = true, want false", filter)
		}
	}
}
