package topics

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCaptureTopics(t *testing.T) {
	var s Scheme
	assert.Equal(t, "ef/v1/dev/d1/capture", s.Capture("d1"))
	assert.Equal(t, "ef/v1/dev/d1/capture-ack", s.CaptureAck("d1"))
	assert.True(t, Match(s.AllCapture(), s.Capture("d1")))
	assert.False(t, Match(s.AllCapture(), s.CaptureAck("d1")))
	for _, tt := range []struct {
		topic string
		want  Topic
	}{
		{s.Capture("d1"), Topic{Kind: KindCapture, Device: "d1"}},
		{s.CaptureAck("d1"), Topic{Kind: KindCaptureAck, Device: "d1"}},
	} {
		got, err := s.Parse(tt.topic)
		require.NoError(t, err, "Parse(%q)", tt.topic)
		assert.Equal(t, tt.want, got, "Parse(%q)", tt.topic)
	}
	assert.Equal(t, "capture", KindCapture.String())
	assert.Equal(t, "capture-ack", KindCaptureAck.String())
}

// A device uploads only on its own capture topic and reads only its own
// acknowledgements: exactly that device, never another's, never retained.
func TestCaptureACL(t *testing.T) {
	var s Scheme
	pub := []struct {
		dev, topic string
		retained   bool
		want       bool
	}{
		{"d1", "ef/v1/dev/d1/capture", false, true},
		{"d1", "ef/v1/dev/d1/capture", true, false},
		{"d1", "ef/v1/dev/d2/capture", false, false},
		{"d1", "ef/v1/dev/d1/capture-ack", false, false}, // only the control plane acknowledges
		{"d1", "ef/v1/dev/+/capture", false, false},
	}
	for _, tt := range pub {
		got := s.DeviceMayPublish(tt.dev, tt.topic, tt.retained)
		assert.Equal(t, tt.want, got, "DeviceMayPublish(%q, %q, retained=%v) = %v, want %v", tt.dev, tt.topic, tt.retained, got, tt.want)
	}
	sub := []struct {
		dev, filter string
		want        bool
	}{
		{"d1", "ef/v1/dev/d1/capture-ack", true},
		{"d1", "ef/v1/dev/d2/capture-ack", false},
		{"d1", "ef/v1/dev/+/capture-ack", false},
		{"d1", "ef/v1/dev/d1/capture", false}, // its own uploads are not for it to read
		{"d1", "ef/v1/dev/d2/capture", false},
	}
	for _, tt := range sub {
		got := s.DeviceMaySubscribe(tt.dev, tt.filter)
		assert.Equal(t, tt.want, got, "DeviceMaySubscribe(%q, %q) = %v, want %v", tt.dev, tt.filter, got, tt.want)
	}
	acl, err := MosquittoACL(s, "cp", 0)
	require.NoError(t, err)
	assert.Contains(t, acl, "pattern write ef/v1/dev/%u/capture\n")
	assert.Contains(t, acl, "pattern read ef/v1/dev/%u/capture-ack\n")
}
