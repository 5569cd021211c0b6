package topics

import (
	"fmt"
	"strings"
)

// NATSSubject is the subject NATS server's MQTT layer turns a topic or a
// filter of the scheme into, which its permissions are written in: each
// '/' becomes '.', a '.' inside a level becomes "//" (model versions such
// as 1.2.0, and device ids, may hold dots), '+' becomes '*' and a final
// '#' becomes '>'. Topics with empty levels, whitespace or DEL, which NATS
// maps differently or refuses, and invalid filters are errors wrapping
// ErrInvalidTopic; no topic of the scheme has them.
func NATSSubject(topic string) (string, error) {
	if err := ValidFilter(topic); err != nil {
		return "", fmt.Errorf("topics: nats subject: %w", err)
	}
	levels := strings.Split(topic, "/")
	for i, level := range levels {
		switch {
		case level == "":
			return "", fmt.Errorf("topics: nats subject %q: empty level: %w", topic, ErrInvalidTopic)
		case strings.ContainsAny(level, " \t\n\r\f\x7f"):
			return "", fmt.Errorf("topics: nats subject %q: whitespace or DEL, which NATS refuses: %w", topic, ErrInvalidTopic)
		case level == "+":
			levels[i] = "*"
		case level == "#":
			levels[i] = ">"
		default:
			levels[i] = strings.ReplaceAll(level, ".", "//")
		}
	}
	return strings.Join(levels, "."), nil
}
