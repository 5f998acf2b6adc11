package rpc

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/mqttrpc/mqttrpc/internal/topicmatch"
)

// DefaultTopicTemplate is the request topic template of a method whose proto
// declares none.
const DefaultTopicTemplate = "mqttrpc/{service}/{target}/{method}"

// DefaultResponsePrefix is the prefix of the default response topics:
// a client with ID X receives its responses on "mqttrpc/responses/X".
const DefaultResponsePrefix = "mqttrpc/responses/"

// Reserved targets.
const (
	// TargetAny addresses any one server of a share group (load balancing).
	TargetAny = "_any"
	// TargetAll addresses every server of the service (broadcast).
	TargetAll = "_all"
)

// Built-in token names of a topic template.
const (
	tokenService = "service"
	tokenTarget  = "target"
	tokenMethod  = "method"
)

// TopicTemplate is a parsed request topic template such as
// "mqttrpc/{service}/{target}/{method}" or "plant/{site}/{target}/hvac/{method}".
//
// A template is a sequence of topic levels separated by "/". Each level is
// either literal text or exactly one token in braces. {target} and {method}
// must each appear once; {service} at most once; any other token (a custom
// token such as {site}) at most once, its value given per call with
// WithToken. Literal levels may not be empty or contain "+", "#", "{", "}" or
// NUL, and the template may not start with "$".
type TopicTemplate struct {
	raw    string
	levels []topicLevel
	custom []string // names of custom tokens, in order of appearance
}

type topicLevel struct {
	literal string // set when token == ""
	token   string
}

// ParseTopicTemplate parses and validates a topic template.
func ParseTopicTemplate(s string) (*TopicTemplate, error) {
	if s == "" {
		return nil, fmt.Errorf("topic template is empty")
	}
	if !utf8.ValidString(s) {
		return nil, fmt.Errorf("topic template %q is not valid UTF-8", s)
	}
	if strings.HasPrefix(s, "$") {
		return nil, fmt.Errorf("topic template %q starts with $, which brokers reserve", s)
	}
	t := &TopicTemplate{raw: s}
	seen := map[string]bool{}
	for part := range strings.SplitSeq(s, "/") {
		switch {
		case part == "":
			return nil, fmt.Errorf("topic template %q has an empty level", s)
		case strings.HasPrefix(part, "{") && strings.HasSuffix(part, "}"):
			name := part[1 : len(part)-1]
			if !validTokenName(name) {
				return nil, fmt.Errorf("topic template %q: token %q must be a lower-case name like {site} (letters, digits, _)", s, part)
			}
			if seen[name] {
				return nil, fmt.Errorf("topic template %q uses {%s} twice", s, name)
			}
			seen[name] = true
			t.levels = append(t.levels, topicLevel{token: name})
			if name != tokenService && name != tokenTarget && name != tokenMethod {
				t.custom = append(t.custom, name)
			}
		case strings.ContainsAny(part, "+#{}\x00"):
			return nil, fmt.Errorf("topic template %q: level %q may not contain +, #, {, } or NUL; a token must fill a whole level", s, part)
		default:
			t.levels = append(t.levels, topicLevel{literal: part})
		}
	}
	for _, required := range []string{tokenTarget, tokenMethod} {
		if !seen[required] {
			return nil, fmt.Errorf("topic template %q has no {%s} level", s, required)
		}
	}
	return t, nil
}

func validTokenName(name string) bool {
	if name == "" {
		return false
	}
	for i, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r == '_':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// String returns the template as written.
func (t *TopicTemplate) String() string { return t.raw }

// CustomTokens returns the names of the template's custom tokens, such as
// "site", in order of appearance.
func (t *TopicTemplate) CustomTokens() []string { return append([]string(nil), t.custom...) }

// topicValues are the token values of one topic.
type topicValues struct {
	service string
	target  string
	method  string
	custom  map[string]string
}

func (v *topicValues) get(token string) string {
	switch token {
	case tokenService:
		return v.service
	case tokenTarget:
		return v.target
	case tokenMethod:
		return v.method
	}
	return v.custom[token]
}

// render builds the request topic. Every value must be a valid token value
// (checkTokenValue); the caller checks the target, the values it was not
// given by the user are checked here.
func (t *TopicTemplate) render(v *topicValues) (string, error) {
	n := len(t.levels) - 1
	for _, l := range t.levels {
		if l.token == "" {
			n += len(l.literal)
			continue
		}
		val := v.get(l.token)
		if err := checkTokenValue(l.token, val); err != nil {
			return "", err
		}
		n += len(val)
	}
	var b strings.Builder
	b.Grow(n)
	for i, l := range t.levels {
		if i > 0 {
			b.WriteByte('/')
		}
		if l.token == "" {
			b.WriteString(l.literal)
		} else {
			b.WriteString(v.get(l.token))
		}
	}
	return b.String(), nil
}

// filter builds a subscription filter: tokens with a value in v are filled
// in, the others become "+".
func (t *TopicTemplate) filter(v *topicValues) string {
	var b strings.Builder
	for i, l := range t.levels {
		if i > 0 {
			b.WriteByte('/')
		}
		switch {
		case l.token == "":
			b.WriteString(l.literal)
		case v.get(l.token) != "":
			b.WriteString(v.get(l.token))
		default:
			b.WriteByte('+')
		}
	}
	return b.String()
}

// match reports whether topic fits the template with the given service name
// and fills v with the token values it finds. It allocates only for custom
// tokens.
func (t *TopicTemplate) match(topic, service string, v *topicValues) bool {
	rest := topic
	for i, l := range t.levels {
		var level string
		if i == len(t.levels)-1 {
			if strings.IndexByte(rest, '/') >= 0 {
				return false
			}
			level = rest
		} else {
			j := strings.IndexByte(rest, '/')
			if j < 0 {
				return false
			}
			level, rest = rest[:j], rest[j+1:]
		}
		switch l.token {
		case "":
			if level != l.literal {
				return false
			}
		case tokenService:
			if level != service {
				return false
			}
		case tokenTarget:
			v.target = level
		case tokenMethod:
			v.method = level
		default:
			if v.custom == nil {
				v.custom = make(map[string]string, len(t.custom))
			}
			v.custom[l.token] = level
		}
	}
	v.service = service
	return true
}

// checkTokenValue enforces the rules for values put into a topic level, so
// that no value can inject levels or wildcards: non-empty UTF-8 without "/",
// "+", "#" or NUL, not starting with "$".
func checkTokenValue(token, val string) error {
	switch {
	case val == "":
		return Errorf(InvalidArgument, "topic token {%s} is empty", token)
	case !utf8.ValidString(val):
		return Errorf(InvalidArgument, "topic token {%s} value %q is not valid UTF-8", token, val)
	case strings.ContainsAny(val, "/+#\x00"):
		return Errorf(InvalidArgument, "topic token {%s} value %q may not contain /, +, # or NUL", token, val)
	case badMQTTString(val) >= 0:
		return Errorf(InvalidArgument, "topic token {%s} value %q may not contain control characters, which MQTT brokers refuse", token, val)
	case val[0] == '$':
		return Errorf(InvalidArgument, "topic token {%s} value %q may not start with $", token, val)
	}
	return nil
}

// checkID checks an ID chosen by a user (server ID, client ID, target):
// a valid token value that does not start with "_", which the protocol
// reserves for _any and _all.
func checkID(kind, id string) error {
	if err := checkTokenValue(kind, id); err != nil {
		return err
	}
	if id[0] == '_' {
		return Errorf(InvalidArgument, "%s %q may not start with _ (reserved for _any and _all)", kind, id)
	}
	return nil
}

// ResponseTopicFilter returns a response-topic policy that allows topics
// matching any of the MQTT topic filters (with + and # wildcards).
func ResponseTopicFilter(filters ...string) func(topic string) bool {
	return func(topic string) bool {
		for _, f := range filters {
			if topicMatchesFilter(f, topic) {
				return true
			}
		}
		return false
	}
}

// topicMatchesFilter implements MQTT topic filter matching with the $ rule
// (MQTT-4.7.2-1): the repository's one matcher, shared with testbroker.
func topicMatchesFilter(filter, topic string) bool { return topicmatch.Match(filter, topic) }
