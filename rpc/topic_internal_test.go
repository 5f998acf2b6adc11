package rpc

import (
	"strings"
	"testing"
	"time"
)

func TestParseTopicTemplate(t *testing.T) {
	good := []string{
		DefaultTopicTemplate,
		"plant/{site}/{target}/hvac/{method}",
		"{target}/{method}",
		"a/{method}/b/{target}/{service}",
	}
	for _, s := range good {
		if _, err := ParseTopicTemplate(s); err != nil {
			t.Errorf("ParseTopicTemplate(%q): %v", s, err)
		}
	}
	bad := map[string]string{
		"":                                 "empty",
		"mqttrpc/{service}/{method}":       "no {target}",
		"mqttrpc/{service}/{target}":       "no {method}",
		"$share/{target}/{method}":         "starts with $",
		"a//{target}/{method}":             "empty level",
		"a/{target}/{method}/":             "empty level",
		"a/+/{target}/{method}":            "may not contain",
		"a/#/{target}/{method}":            "may not contain",
		"a/x{site}/{target}/{method}":      "may not contain",
		"a/{Site}/{target}/{method}":       "lower-case name",
		"a/{}/{target}/{method}":           "lower-case name",
		"{target}/{target}/{method}":       "twice",
		"{site}/{site}/{target}/{method}":  "twice",
		"a/\xff/{target}/{method}":         "UTF-8",
		"a/nul\x00/{target}/{method}":      "may not contain",
		"{service}/{service}/{t}/{method}": "twice",
	}
	for s, want := range bad {
		_, err := ParseTopicTemplate(s)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseTopicTemplate(%q) = %v, want an error mentioning %q", s, err, want)
		}
	}
}

func TestTemplateRenderMatchFilter(t *testing.T) {
	tmpl, err := ParseTopicTemplate("plant/{site}/{target}/hvac/{service}/{method}")
	if err != nil {
		t.Fatal(err)
	}
	v := topicValues{service: "x.v1.Hvac", target: "dev-1", method: "Set", custom: map[string]string{"site": "north"}}
	topic, err := tmpl.render(&v)
	if err != nil || topic != "plant/north/dev-1/hvac/x.v1.Hvac/Set" {
		t.Fatalf("render = %q, %v", topic, err)
	}
	var got topicValues
	if !tmpl.match(topic, "x.v1.Hvac", &got) || got.target != "dev-1" || got.method != "Set" || got.custom["site"] != "north" {
		t.Fatalf("match = %+v", got)
	}
	for _, other := range []string{
		"plant/north/dev-1/hvac/x.v1.Other/Set",  // other service
		"plant/north/dev-1/hvac/x.v1.Hvac",       // too short
		"plant/north/dev-1/hvac/x.v1.Hvac/Set/x", // too long
		"plant/north/dev-1/cool/x.v1.Hvac/Set",   // literal differs
	} {
		if tmpl.match(other, "x.v1.Hvac", &topicValues{}) {
			t.Errorf("match(%q) = true", other)
		}
	}
	if f := tmpl.filter(&topicValues{service: "x.v1.Hvac", target: "_all"}); f != "plant/+/_all/hvac/x.v1.Hvac/+" {
		t.Errorf("filter = %q", f)
	}
	for _, bad := range []string{"", "a/b", "a+", "#", "$x", "nul\x00", "\xff"} {
		v := topicValues{service: "x.v1.Hvac", target: "dev-1", method: "Set", custom: map[string]string{"site": bad}}
		if _, err := tmpl.render(&v); err == nil || CodeOf(err) != InvalidArgument {
			t.Errorf("render with site %q: %v, want InvalidArgument", bad, err)
		}
	}
}

func TestTopicMatchesFilter(t *testing.T) {
	cases := []struct {
		filter, topic string
		want          bool
	}{
		{"mqttrpc/responses/+", "mqttrpc/responses/c1", true},
		{"mqttrpc/responses/+", "mqttrpc/responses/c1/x", false},
		{"mqttrpc/responses/+", "mqttrpc/responses", false},
		{"mqttrpc/responses/+", "evil/responses/c1", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"#", "anything/at/all", true},
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
	}
	for _, c := range cases {
		if got := topicMatchesFilter(c.filter, c.topic); got != c.want {
			t.Errorf("topicMatchesFilter(%q, %q) = %v", c.filter, c.topic, got)
		}
	}
}

func TestExpirySeconds(t *testing.T) {
	for d, want := range map[string]uint32{"1ms": 1, "999ms": 1, "1s": 1, "1001ms": 2, "10s": 10} {
		dur, _ := time.ParseDuration(d)
		if got := expirySeconds(dur); got != want {
			t.Errorf("expirySeconds(%s) = %d, want %d", d, got, want)
		}
	}
}
