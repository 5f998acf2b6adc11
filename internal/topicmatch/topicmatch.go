// Package topicmatch is MQTT topic filter matching, shared by the rpc
// runtime (response-topic policies, which packets a connection's
// subscriptions cover) and testbroker (fault rules), so that both follow
// one set of rules, the $ rule of MQTT-4.7.2-1 included.
package topicmatch

import "strings"

// Match reports whether the topic name matches the topic filter. Wildcards
// in the first level never match a topic starting with "$" (MQTT-4.7.2-1):
// "#" does not match "$SYS/...". "a/#" also matches "a".
func Match(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		filterLevel, filterRest, filterMore := strings.Cut(filter, "/")
		if filterLevel == "#" {
			return true
		}
		topicLevel, topicRest, topicMore := strings.Cut(topic, "/")
		if filterLevel != "+" && filterLevel != topicLevel {
			return false
		}
		if !filterMore || !topicMore {
			// "a/#" also matches "a", the parent level.
			return filterMore == topicMore || (filterMore && filterRest == "#")
		}
		filter, topic = filterRest, topicRest
	}
}

// ValidFilter reports whether filter is a well-formed MQTT topic filter
// that can match a PUBLISH topic: "+" and "#" only as whole levels, "#"
// only last, no NUL, and no "$share/" prefix (a shared subscription is not
// a topic).
func ValidFilter(filter string) bool {
	if filter == "" || strings.ContainsRune(filter, 0) || strings.HasPrefix(filter, "$share/") {
		return false
	}
	levels := strings.Split(filter, "/")
	for i, level := range levels {
		if strings.ContainsAny(level, "+#") && level != "+" && level != "#" {
			return false
		}
		if level == "#" && i != len(levels)-1 {
			return false
		}
	}
	return true
}
