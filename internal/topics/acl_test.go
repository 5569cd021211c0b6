package topics

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDeviceMayPublish(t *testing.T) {
	var s Scheme
	tests := []struct {
		dev, topic string
		retained   bool
		want       bool
	}{
		{"d1", "ef/v1/dev/d1/status", false, true},
		{"d1", "ef/v1/dev/d1/telemetry", false, true},
		{"d1", "ef/v1/dev/d1/fetch", false, true},
		{"d1", "ef/v1/dev/d1/presence", false, true},
		// never retained
		{"d1", "ef/v1/dev/d1/status", true, false},
		{"d1", "ef/v1/dev/d1/presence", true, false},
		// not its own outbound topics
		{"d1", "ef/v1/dev/d1/desired", false, false},
		{"d1", "ef/v1/dev/d1/ack", false, false}, // only the control plane acknowledges
		{"d1", "ef/v1/dev/d1/site", false, false},
		{"d1", "ef/v1/dev/d1/chunks", false, false},
		{"d1", "ef/v1/dev/d2/status", false, false},
		{"d1", "ef/v1/dev/d10/status", false, false},
		{"d1", "ef/v1/trust", false, false},
		{"d1", "ef/v1/models/fraud/1/manifest", false, false},
		{"d1", "ef/v1/models/fraud/1/chunks", false, false},
		// wildcards, trailing slash, empty levels, other prefixes
		{"d1", "ef/v1/dev/+/status", false, false},
		{"d1", "ef/v1/dev/d1/#", false, false},
		{"d1", "#", false, false},
		{"d1", "ef/v1/dev/d1/status/", false, false},
		{"d1", "ef/v1//dev/d1/status", false, false},
		{"d1", "ef/v2/dev/d1/status", false, false},
		{"d1", "/ef/v1/dev/d1/status", false, false},
		{"d1", "$SYS/broker/load", false, false},
		{"d1", "", false, false},
		// invalid device ids never publish anything
		{"", "ef/v1/dev//status", false, false},
		{"+", "ef/v1/dev/+/status", false, false},
		{"#", "ef/v1/dev/#/status", false, false},
		{"a/b", "ef/v1/dev/a/b/status", false, false},
		{".d", "ef/v1/dev/.d/status", false, false},
	}
	for _, tt := range tests {
		got := s.DeviceMayPublish(tt.dev, tt.topic, tt.retained)
		assert.Equal(t, tt.want, got, "DeviceMayPublish(%q, %q, retained=%v) = %v, want %v", tt.dev, tt.topic, tt.retained, got, tt.want)
	}
}

func TestDeviceMaySubscribe(t *testing.T) {
	var s Scheme
	tests := []struct {
		dev, filter string
		want        bool
	}{
		// allowed
		{"d1", "ef/v1/dev/d1/desired", true},
		{"d1", "ef/v1/dev/d1/ack", true},
		{"d1", "ef/v1/dev/d1/site", true},
		{"d1", "ef/v1/dev/d1/chunks", true},
		{"d1", "ef/v1/trust", true},
		{"d1", "ef/v1/models/fraud/1.0/manifest", true},
		{"d1", "ef/v1/models/fraud/1.0/chunks", true},
		{"d1", "ef/v1/models/fraud/1.0/+", true},
		{"d1", "ef/v1/models/+/+/manifest", true},
		{"d1", "ef/v1/models/fraud/+/manifest", true},
		{"d1", "ef/v1/models/+/1.0/chunks", true},
		{"d1", "ef/v1/models/+/+/+", true},
		// other devices and wildcards in the device position
		{"d1", "ef/v1/dev/d2/desired", false},
		{"d1", "ef/v1/dev/d2/ack", false},
		{"d1", "ef/v1/dev/+/ack", false},
		{"d1", "ef/v1/dev/d2/site", false},
		{"d1", "ef/v1/dev/d2/chunks", false},
		{"d1", "ef/v1/dev/+/site", false},
		{"d1", "ef/v1/dev/+/desired", false},
		{"d1", "ef/v1/dev/d1/+", false},
		{"d1", "ef/v1/dev/d1/#", false},
		{"d1", "ef/v1/dev/d1/status", false},
		{"d1", "ef/v1/dev/d1/telemetry", false},
		{"d1", "ef/v1/dev/+/+", false},
		{"d1", "ef/v1/dev/#", false},
		{"d1", "ef/v1/+/d1/desired", false},
		// '#' anywhere
		{"d1", "#", false},
		{"d1", "ef/#", false},
		{"d1", "ef/v1/#", false},
		{"d1", "ef/v1/models/#", false},
		{"d1", "ef/v1/models/fraud/#", false},
		{"d1", "ef/v1/models/fraud/1.0/#", false},
		{"d1", "ef/v1/trust/#", false},
		{"d1", "ef/v1/models/#/1.0/manifest", false},
		// '+' in the prefix or a fixed level
		{"d1", "+/v1/dev/d1/desired", false},
		{"d1", "ef/+/dev/d1/desired", false},
		{"d1", "+/+/dev/d1/desired", false},
		{"d1", "ef/+/trust", false},
		{"d1", "ef/v1/+", false},
		{"d1", "+/v1/trust", false},
		{"d1", "ef/v1/+/fraud/1.0/manifest", false},
		{"d1", "+/+/models/+/+/+", false},
		{"d1", "+", false},
		{"d1", "+/+/+/+/+", false},
		{"d1", "ef/v1/models/+/+", false},
		{"d1", "ef/v1/models/+/+/+/+", false},
		// partial-level wildcards, empty levels, trailing slash
		{"d1", "ef/v1/models/fr+/1/manifest", false},
		{"d1", "ef/v1/models//1.0/manifest", false},
		{"d1", "ef/v1/models/fraud//manifest", false},
		{"d1", "ef/v1/models/fraud/1.0/manifest/", false},
		{"d1", "ef/v1/models/fraud/1.0/", false},
		{"d1", "ef/v1/dev/d1/desired/", false},
		{"d1", "ef/v1/trust/", false},
		{"d1", "ef/v1//trust", false},
		{"d1", "/ef/v1/trust", false},
		{"d1", "", false},
		// unknown model leaf, other prefix, $-topics, shared subscriptions
		{"d1", "ef/v1/models/fraud/1.0/secret", false},
		{"d1", "ef/v2/dev/d1/desired", false},
		{"d1", "$SYS/#", false},
		{"d1", "$share/g/ef/v1/dev/d1/desired", false},
		{"d1", "$share/g/ef/v1/models/+/+/manifest", false},
		// invalid device ids
		{"", "ef/v1/dev//desired", false},
		{"+", "ef/v1/dev/+/desired", false},
		{"#", "ef/v1/trust", false},
		{"d1/x", "ef/v1/dev/d1/x/desired", false},
	}
	for _, tt := range tests {
		got := s.DeviceMaySubscribe(tt.dev, tt.filter)
		assert.Equal(t, tt.want, got, "DeviceMaySubscribe(%q, %q) = %v, want %v", tt.dev, tt.filter, got, tt.want)
	}
}

// Every allowed subscription must only match topics a device may read: no
// other device's topics and nothing outside models/trust/own desired.
func TestDeviceMaySubscribeNeverLeaks(t *testing.T) {
	var s Scheme
	otherTopics := []string{
		s.Desired("d2"), s.Ack("d2"), s.Status("d2"), s.Telemetry("d2"), s.Fetch("d2"), s.Presence("d2"),
		s.Desired("d2"), s.Status("d2"), s.Telemetry("d2"), s.Fetch("d2"), s.Presence("d2"),
		s.Site("d2"), s.DeviceChunks("d2"),
		s.Status("d1"), s.Telemetry("d1"), s.Fetch("d1"), s.Presence("d1"),
		"ef/v1/other", "ef/v1/dev/d1", "xx/v1/trust", "$SYS/broker/clients",
	}
	levels := []string{"ef", "v1", "dev", "d1", "desired", "site", "models", "trust", "status", "+", "#", ""}
	filters := topicsOver(levels, 6)
	require.Greater(t, len(filters), 1000000)
	allowed := 0
	for _, f := range filters {
		if !s.DeviceMaySubscribe("d1", f) {
			continue
		}
		allowed++
		require.NoError(t, ValidFilter(f), "allowed filter %q is not a valid filter", f)
		for _, topic := range otherTopics {
			assert.False(t, Match(f, topic), "allowed filter %q matches forbidden topic %q", f, topic)
		}
	}
	assert.Greater(t, allowed, 10, "the vocabulary should produce some allowed filters")
}

func TestMosquittoACL(t *testing.T) {
	acl, err := MosquittoACL(Scheme{}, "edgefleet-cp", 0)
	require.NoError(t, err)
	assert.NotContains(t, acl, "ingest")
	for _, line := range []string{
		"pattern write ef/v1/dev/%u/status\n",
		"pattern write ef/v1/dev/%u/telemetry\n",
		"pattern write ef/v1/dev/%u/fetch\n",
		"pattern write ef/v1/dev/%u/presence\n",
		"pattern read ef/v1/dev/%u/desired\n",
		"pattern read ef/v1/dev/%u/ack\n",
		"pattern read ef/v1/dev/%u/site\n",
		"pattern read ef/v1/dev/%u/chunks\n",
		"pattern read ef/v1/trust\n",
		"pattern read ef/v1/models/+/+/+\n",
		"user edgefleet-cp\ntopic readwrite ef/v1/#\n",
	} {
		assert.Contains(t, acl, line)
	}
	// The user section comes last so that general lines are not scoped to it.
	assert.Greater(t, strings.Index(acl, "user edgefleet-cp"), strings.LastIndex(acl, "pattern "))
	assert.NotContains(t, acl, "readwrite ef/v1/dev/%u")

	custom, err := MosquittoACL(Scheme{Prefix: "acme/ef"}, "cp", 2)
	require.NoError(t, err)
	assert.Contains(t, custom, "pattern read acme/ef/dev/%u/desired\n")
	assert.Contains(t, custom, "user cp\ntopic readwrite acme/ef/#\n")
	assert.Contains(t, custom, "user cp-ingest-0\ntopic read acme/ef/dev/+/telemetry\n")
	assert.Contains(t, custom, "user cp-ingest-1\ntopic read acme/ef/dev/+/telemetry\n")
	assert.NotContains(t, custom, "cp-ingest-2")

	for _, u := range []string{"", "a b", "a\nuser x", "#", "a/b"} {
		_, err := MosquittoACL(Scheme{}, u, 0)
		assert.ErrorIs(t, err, ErrInvalidName, "MosquittoACL(user=%q)", u)
	}
	_, err = MosquittoACL(Scheme{Prefix: "ef/+"}, "cp", 0)
	assert.ErrorIs(t, err, ErrInvalidName)
}

func TestACLWithInvalidPrefixDeniesAll(t *testing.T) {
	s := Scheme{Prefix: "+"}
	assert.False(t, s.DeviceMaySubscribe("d1", "+/trust"))
	assert.False(t, s.DeviceMaySubscribe("d1", "+/dev/d1/desired"))
	assert.False(t, s.DeviceMayPublish("d1", "+/dev/d1/status", false))
}

// TestDeviceACLCoversEveryKind builds every kind of topic of the scheme
// for a device and checks DeviceACL (which every external broker's ACL is
// rendered from) grants exactly what DeviceMayPublish and
// DeviceMaySubscribe grant on the embedded broker: a kind added to the
// scheme fails here until both agree.
func TestDeviceACLCoversEveryKind(t *testing.T) {
	for _, s := range []Scheme{{}, {Prefix: "acme.co/ef"}} {
		dev, other := "dev.1", "dev.2"
		rules := s.DeviceACL(dev)
		grants := func(access Access, topic string) bool {
			for _, r := range rules {
				if r.Access == access && Match(r.Topic, topic) {
					return true
				}
			}
			return false
		}
		kinds := []Kind{KindCapture, KindCaptureAck} // numbered apart
		for k := Kind(1); k.String() != fmt.Sprintf("Kind(%d)", int(k)); k++ {
			kinds = append(kinds, k)
		}
		for _, k := range kinds {
			var topic, othersTopic string
			switch k {
			case KindDesired, KindAck, KindFetch, KindStatus, KindTelemetry, KindPresence, KindSite, KindCapture, KindCaptureAck:
				topic = s.dev(dev, k.String())
				othersTopic = s.dev(other, k.String())
			case KindDeviceChunks:
				topic, othersTopic = s.DeviceChunks(dev), s.DeviceChunks(other)
			case KindManifest, KindChunks:
				topic = s.model("fraud", "1.2.0", k.String())
			case KindTrust:
				topic = s.Trust()
			default:
				t.Fatalf("kind %v: build its topic here", k)
			}
			parsed, err := s.Parse(topic)
			require.NoError(t, err)
			require.Equal(t, k, parsed.Kind)
			assert.Equal(t, s.DeviceMayPublish(dev, topic, false), grants(Write, topic), "publish %s", topic)
			assert.Equal(t, s.DeviceMaySubscribe(dev, topic), grants(Read, topic), "subscribe %s", topic)
			if othersTopic != "" {
				assert.False(t, grants(Write, othersTopic) || grants(Read, othersTopic), "%s reaches %s", dev, othersTopic)
			}
			subject, err := NATSSubject(topic)
			require.NoError(t, err)
			assert.NotContains(t, subject, "/.", "no level of %s is empty", topic)
		}
	}
}

func TestNATSSubject(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"ef/v1/dev/dev-1/desired", "ef.v1.dev.dev-1.desired"},
		{"ef/v1/models/fraud/1.2.0/manifest", "ef.v1.models.fraud.1//2//0.manifest"},
		{"ef/v1/dev/a.b/status", "ef.v1.dev.a//b.status"},
		{"ef/v1/models/+/+/+", "ef.v1.models.*.*.*"},
		{"ef/v1/#", "ef.v1.>"},
		{"acme.co/ef/trust", "acme//co.ef.trust"},
	} {
		got, err := NATSSubject(tc.in)
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, "NATSSubject(%q)", tc.in)
	}
	for _, bad := range []string{"", "a//b", "/a", "a/", "a/b c", "a/#/b", "a/b+"} {
		_, err := NATSSubject(bad)
		assert.ErrorIs(t, err, ErrInvalidTopic, "NATSSubject(%q)", bad)
	}
}

// topicsOver returns every topic (or filter) of 1 to depth levels, each
// level one of levels.
func topicsOver(levels []string, depth int) []string {
	var out []string
	var rec func(prefix string, depth int)
	rec = func(prefix string, depth int) {
		if depth == 0 {
			return
		}
		for _, l := range levels {
			f := l
			if prefix != "" {
				f = prefix + "/" + l
			}
			out = append(out, f)
			rec(f, depth-1)
		}
	}
	rec("", depth)
	return out
}
