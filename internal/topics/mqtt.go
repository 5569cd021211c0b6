package topics

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxTopicLen is the longest topic name or filter MQTT can carry.
const MaxTopicLen = 65535

// ValidTopicName checks a topic a client may publish to: non-empty, at most
// MaxTopicLen bytes of UTF-8 without NUL, no wildcard, not starting with '$'.
// Brokers drop invalid publishes silently (a QoS 1 publish then never gets
// its PUBACK), so publishers check first.
func ValidTopicName(topic string) error {
	if err := validTopicBytes("topic", topic); err != nil {
		return err
	}
	if strings.ContainsAny(topic, "+#") {
		return fmt.Errorf("topic %q: wildcards are not allowed in a topic name: %w", topic, ErrInvalidTopic)
	}
	if topic[0] == '$' {
		return fmt.Errorf("topic %q: topics starting with '$' are reserved for the broker: %w", topic, ErrInvalidTopic)
	}
	return nil
}

// ValidFilter checks a subscription filter: non-empty, at most MaxTopicLen
// bytes of UTF-8 without NUL, '+' only as a whole level, '#' only as the
// whole last level.
func ValidFilter(filter string) error {
	if err := validTopicBytes("filter", filter); err != nil {
		return err
	}
	levels := strings.Split(filter, "/")
	for i, level := range levels {
		if strings.Contains(level, "#") && (level != "#" || i != len(levels)-1) {
			return fmt.Errorf("filter %q: '#' must be the whole last level: %w", filter, ErrInvalidTopic)
		}
		if strings.Contains(level, "+") && level != "+" {
			return fmt.Errorf("filter %q: '+' must be a whole level: %w", filter, ErrInvalidTopic)
		}
	}
	return nil
}

func validTopicBytes(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty: %w", what, ErrInvalidTopic)
	case len(s) > MaxTopicLen:
		return fmt.Errorf("%s is %d bytes, max %d: %w", what, len(s), MaxTopicLen, ErrInvalidTopic)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s %q: not valid UTF-8: %w", what, s, ErrInvalidTopic)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("%s %q: contains NUL: %w", what, s, ErrInvalidTopic)
	}
	return nil
}

// Match reports whether the topic name matches the filter under MQTT rules:
// '+' matches one level, a trailing '#' matches the parent level and any
// number of children, and wildcards in the first level do not match topics
// starting with '$'. Invalid filters or topics match nothing.
func Match(filter, topic string) bool {
	if ValidFilter(filter) != nil || validTopicBytes("topic", topic) != nil || strings.ContainsAny(topic, "+#") {
		return false
	}
	if topic[0] == '$' && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			// "a/#" matches "a": the remaining filter must be exactly "#".
			return frest == "#"
		case !fmore:
			return false
		}
		filter, topic = frest, trest
	}
}
