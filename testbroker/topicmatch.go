package testbroker

import "strings"

// validFilter reports whether filter is a well-formed MQTT topic filter that
// can match a PUBLISH topic: "+" and "#" only as whole levels, "#" only last,
// and no "$share/" prefix (a shared subscription is not a topic).
func validFilter(filter string) bool {
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

// matchTopic reports whether the topic name matches the topic filter.
func matchTopic(filter, topic string) bool {
	// Wildcards in the first level never match topics starting with "$" [MQTT-4.7.2-1].
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
