package topics

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBuilders(t *testing.T) {
	var s Scheme
	custom := Scheme{Prefix: "acme/prod/ef"}
	tests := []struct {
		name, got, want string
	}{
		{"Desired", s.Desired("d1"), "ef/v1/dev/d1/desired"},
		{"Fetch", s.Fetch("d1"), "ef/v1/dev/d1/fetch"},
		{"Status", s.Status("d1"), "ef/v1/dev/d1/status"},
		{"Telemetry", s.Telemetry("d1"), "ef/v1/dev/d1/telemetry"},
		{"Presence", s.Presence("d1"), "ef/v1/dev/d1/presence"},
		{"Manifest", s.Manifest("fraud", "1.2.0"), "ef/v1/models/fraud/1.2.0/manifest"},
		{"Chunks", s.Chunks("fraud", "1.2.0"), "ef/v1/models/fraud/1.2.0/chunks"},
		{"Trust", s.Trust(), "ef/v1/trust"},
		{"AllStatus", s.AllStatus(), "ef/v1/dev/+/status"},
		{"AllTelemetry", s.AllTelemetry(), "ef/v1/dev/+/telemetry"},
		{"AllFetch", s.AllFetch(), "ef/v1/dev/+/fetch"},
		{"AllPresence", s.AllPresence(), "ef/v1/dev/+/presence"},
		{"custom Desired", custom.Desired("d1"), "acme/prod/ef/dev/d1/desired"},
		{"custom Trust", custom.Trust(), "acme/prod/ef/trust"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, tt.got, "%s() = %q, want %q", tt.name, tt.got, tt.want)
	}
}

func TestParseRoundTrip(t *testing.T) {
	for _, s := range []Scheme{{}, {Prefix: "acme/prod"}} {
		tests := []struct {
			topic string
			want  Topic
		}{
			{s.Desired("d-1"), Topic{Kind: KindDesired, Device: "d-1"}},
			{s.Fetch("d-1"), Topic{Kind: KindFetch, Device: "d-1"}},
			{s.Status("d-1"), Topic{Kind: KindStatus, Device: "d-1"}},
			{s.Telemetry("d-1"), Topic{Kind: KindTelemetry, Device: "d-1"}},
			{s.Presence("d_1.x"), Topic{Kind: KindPresence, Device: "d_1.x"}},
			{s.Manifest("fraud", "v2"), Topic{Kind: KindManifest, Model: "fraud", Version: "v2"}},
			{s.Chunks("fraud", "1.0.0-rc.1"), Topic{Kind: KindChunks, Model: "fraud", Version: "1.0.0-rc.1"}},
			{s.Trust(), Topic{Kind: KindTrust}},
			{s.Site("d-1"), Topic{Kind: KindSite, Device: "d-1"}},
			{s.DeviceChunks("d-1"), Topic{Kind: KindDeviceChunks, Device: "d-1"}},
		}
		for _, tt := range tests {
			got, err := s.Parse(tt.topic)
			require.NoError(t, err, "Parse(%q)", tt.topic)
			assert.Equal(t, tt.want, got, "Parse(%q) = %+v, want %+v", tt.topic, got, tt.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	var s Scheme
	bad := []string{
		"",
		"ef/v1",
		"ef/v1/",
		"ef/v2/dev/d1/status",
		"xx/v1/dev/d1/status",
		"ef/v1/dev/d1",
		"ef/v1/dev/d1/unknown",
		"ef/v1/dev//status",
		"ef/v1/dev/+/status",
		"ef/v1/dev/#",
		"ef/v1/dev/.hidden/status",
		"ef/v1/dev/d1/status/",
		"ef/v1/dev/d1/status/extra",
		"ef/v1/models/fraud/1/manifest/",
		"ef/v1/models/fraud/1/other",
		"ef/v1/models/fraud/manifest",
		"ef/v1/models/+/1/manifest",
		"ef/v1/models/fr aud/1/manifest",
		"ef/v1/trust/",
		"ef/v1/trust/x",
		"/ef/v1/trust",
		"ef/v1/dev/" + strings.Repeat("a", 65) + "/status",
	}
	for _, topic := range bad {
		got, err := s.Parse(topic)
		assert.ErrorIs(t, err, ErrInvalidTopic, "Parse(%q) = %+v, want ErrInvalidTopic", topic, got)
	}
}

func ptr[T any](v T) *T { return &v }

func TestValidNames(t *testing.T) {
	tests := []struct {
		id string
		ok bool
		// modelOK differs from ok where model names are stricter: they
		// start with a letter or digit.
		modelOK *bool
	}{
		{"d1", true, nil},
		{"A.b_c-9", true, nil},
		{strings.Repeat("x", 64), true, nil},
		{"", false, nil},
		{strings.Repeat("x", 65), false, nil},
		{".d1", false, nil},
		{"d1.", true, nil},
		{"d+1", false, nil},
		{"d#", false, nil},
		{"d/1", false, nil},
		{"d 1", false, nil},
		{"$d", false, nil},
		{"d\x00", false, nil},
		{"dé", false, nil},
		{"-d1", true, ptr(false)},
		{"_d1", true, ptr(false)},
		{"..", false, nil},
	}
	for _, tt := range tests {
		for name, f := range map[string]func(string) error{"ValidDeviceID": ValidDeviceID, "ValidModelName": ValidModelName, "ValidModelVersion": ValidModelVersion} {
			err := f(tt.id)
			ok := tt.ok
			if name != "ValidDeviceID" && tt.modelOK != nil {
				ok = *tt.modelOK
			}
			if ok {
				assert.NoError(t, err, "%s(%q)", name, tt.id)
			} else {
				assert.ErrorIs(t, err, ErrInvalidName, "%s(%q) = nil, want ErrInvalidName", name, tt.id)
			}
		}
	}
}

func TestSchemeValidate(t *testing.T) {
	for _, p := range []string{"", "ef/v1", "acme", "a/b/c"} {
		assert.NoError(t, Scheme{Prefix: p}.Validate(), "Validate(%q)", p)
	}
	for _, p := range []string{"/ef", "ef/", "ef//v1", "+", "ef/#", "$SYS", "ef/v 1"} {
		assert.ErrorIs(t, Scheme{Prefix: p}.Validate(), ErrInvalidName, "Validate(%q)", p)
	}
}

func TestKindString(t *testing.T) {
	assert.Equal(t, "desired", KindDesired.String())
	assert.Equal(t, "trust", KindTrust.String())
	assert.Equal(t, "Kind(0)", Kind(0).String())
	assert.Equal(t, "Kind(99)", Kind(99).String())
}
