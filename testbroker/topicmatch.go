package testbroker

import "github.com/mqttrpc/mqttrpc/internal/topicmatch"

// validFilter reports whether filter is a well-formed MQTT topic filter that
// can match a PUBLISH topic (topicmatch.ValidFilter).
func validFilter(filter string) bool { return topicmatch.ValidFilter(filter) }

// matchTopic reports whether the topic name matches the topic filter
// (topicmatch.Match, the one matcher of the repository).
func matchTopic(filter, topic string) bool { return topicmatch.Match(filter, topic) }
