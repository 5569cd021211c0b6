package topics

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestValidTopicName(t *testing.T) {
	tests := []struct {
		topic string
		ok    bool
	}{
		{"a", true},
		{"a/b/c", true},
		{"/a", true},
		{"a/", true},
		{"a//b", true},
		{"", false},
		{"a/+", false},
		{"a/#", false},
		{"a+b", false},
		{"$SYS/x", false},
		{"a\x00b", false},
		{"a\xffb", false},
		{strings.Repeat("a", MaxTopicLen), true},
		{strings.Repeat("a", MaxTopicLen+1), false},
	}
	for _, tt := range tests {
		err := ValidTopicName(tt.topic)
		if tt.ok {
			assert.NoError(t, err, "ValidTopicName(%.40q)", tt.topic)
		} else {
			assert.ErrorIs(t, err, ErrInvalidTopic, "ValidTopicName(%.40q) = nil, want ErrInvalidTopic", tt.topic)
		}
	}
}

func TestValidFilter(t *testing.T) {
	tests := []struct {
		filter string
		ok     bool
	}{
		{"a/b", true},
		{"#", true},
		{"+", true},
		{"a/+/c", true},
		{"a/#", true},
		{"+/+/#", true},
		{"$SYS/#", true},
		{"", false},
		{"a/#/c", false},
		{"a#", false},
		{"a/b#", false},
		{"a+/b", false},
		{"a/+b", false},
		{"##", false},
		{"a\x00", false},
	}
	for _, tt := range tests {
		err := ValidFilter(tt.filter)
		if tt.ok {
			assert.NoError(t, err, "ValidFilter(%q)", tt.filter)
		} else {
			assert.ErrorIs(t, err, ErrInvalidTopic, "ValidFilter(%q) = nil, want ErrInvalidTopic", tt.filter)
		}
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"a/+", "a/b", true},
		{"a/+", "a/", true},
		{"a/+", "a", false},
		{"a/+", "a/b/c", false},
		{"+/b", "a/b", true},
		{"+/+", "/b", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"#", "a/b", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"ef/v1/dev/+/status", "ef/v1/dev/d1/status", true},
		{"ef/v1/dev/+/status", "ef/v1/dev/d1/x/status", false},
		{"a/#/b", "a/x/b", false},
		{"a/b", "a/+", false},
		{"", "a", false},
		{"a", "", false},
	}
	for _, tt := range tests {
		got := Match(tt.filter, tt.topic)
		assert.Equal(t, tt.want, got, "Match(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
	}
}
