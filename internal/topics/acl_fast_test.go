package topics

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// refMayPublish and refMaySubscribe are the ACL as first written: every
// allowed topic built and compared. DeviceMayPublish and DeviceMaySubscribe
// parse in place instead (the broker asks for every message) and must
// decide exactly as these do.
func refMayPublish(s Scheme, dev, topic string, retained bool) bool {
	if retained || ValidDeviceID(dev) != nil || s.Validate() != nil {
		return false
	}
	switch topic {
	case s.Status(dev), s.Telemetry(dev), s.Fetch(dev), s.Presence(dev), s.Capture(dev):
		return true
	}
	return false
}

func refMaySubscribe(s Scheme, dev, filter string) bool {
	if ValidDeviceID(dev) != nil || s.Validate() != nil {
		return false
	}
	switch filter {
	case s.Desired(dev), s.Ack(dev), s.Site(dev), s.DeviceChunks(dev), s.Trust(), s.CaptureAck(dev):
		return true
	}
	rest, ok := strings.CutPrefix(filter, s.prefix()+"/"+levelModels+"/")
	if !ok {
		return false
	}
	levels := strings.Split(rest, "/")
	if len(levels) != 3 {
		return false
	}
	if levels[0] != "+" && ValidModelName(levels[0]) != nil {
		return false
	}
	if levels[1] != "+" && ValidModelVersion(levels[1]) != nil {
		return false
	}
	switch levels[2] {
	case "+", leafManifest, leafChunks:
		return true
	}
	return false
}

// TestACLDecidesAsTheReference: over every topic of up to 6 levels from a
// vocabulary of the scheme's words, ids, model names and malformed levels,
// with several prefixes (valid and not) and devices, the in-place ACL
// decides as the reference.
func TestACLDecidesAsTheReference(t *testing.T) {
	levels := []string{"ef", "v1", "dev", "d1", "d10", "d", "desired", "ack", "site", "chunks", "capture", "capture-ack",
		"status", "telemetry", "fetch", "presence", "models", "fraud", "1.0", ".x", "manifest", "trust", "+", "#", ""}
	gen := func(depth int) []string {
		out := topicsOver(levels, depth)
		for _, tail := range [][]string{{"models", "fraud", "1.0", "manifest"}, {"models", "+", "+", "+"}, {"models", "fraud", "1.0", "chunks", "x"}} {
			out = append(out, "ef/v1/"+strings.Join(tail, "/"), "ef/v1/"+strings.Join(tail, "/")+"/", "x/"+strings.Join(tail, "/"))
		}
		return out
	}
	deep, shallow := gen(4), gen(3) // ef/v1/dev/<id>/<leaf> is 5 levels: the default prefix gets one level less below
	check := func(s Scheme, dev string, topics []string) {
		t.Helper()
		mismatches := 0
		for _, topic := range topics {
			for _, retained := range []bool{false, true} {
				if got, want := s.DeviceMayPublish(dev, topic, retained), refMayPublish(s, dev, topic, retained); got != want {
					mismatches++
					assert.Equal(t, want, got, "Scheme{%q}.DeviceMayPublish(%q, %q, %v)", s.Prefix, dev, topic, retained)
				}
			}
			if got, want := s.DeviceMaySubscribe(dev, topic), refMaySubscribe(s, dev, topic); got != want {
				mismatches++
				assert.Equal(t, want, got, "Scheme{%q}.DeviceMaySubscribe(%q, %q)", s.Prefix, dev, topic)
			}
			if mismatches > 20 {
				t.FailNow()
			}
		}
	}
	// A one-level prefix sees every shape of 5 levels, the device's own
	// topics included.
	check(Scheme{Prefix: "ef"}, "d1", deep)
	for _, s := range []Scheme{{}, {Prefix: "ef/"}, {Prefix: "ef//v1"}, {Prefix: "/ef"}, {Prefix: "e+f"}} {
		for _, dev := range []string{"d1", "", "d/1", ".d"} {
			check(s, dev, shallow)
		}
	}
	for _, dev := range []string{"d1", "d"} { // the default prefix on the full topics
		check(Scheme{}, dev, []string{"ef/v1/dev/d1/desired", "ef/v1/dev/d1/ack", "ef/v1/dev/d1/site", "ef/v1/dev/d1/chunks",
			"ef/v1/dev/d1/capture-ack", "ef/v1/dev/d1/capture", "ef/v1/dev/d1/status", "ef/v1/dev/d1/telemetry", "ef/v1/dev/d1/fetch",
			"ef/v1/dev/d1/presence", "ef/v1/dev/d10/status", "ef/v1/dev/d1/status/x", "ef/v1/dev/d1/", "ef/v1/dev/d1", "ef/v1/dev/+/status",
			"ef/v1/trust", "ef/v1/trust/", "ef/v1/models/fraud/1.0/manifest", "ef/v1/models/+/+/#", "ef/v1/models/.x/1/chunks", "ef/v2/trust"})
	}
}

// TestACLAllocatesNothing: the checks the embedded broker makes for every
// delivery and every device publish allocate nothing.
func TestACLAllocatesNothing(t *testing.T) {
	var s Scheme
	for _, c := range []struct {
		name string
		f    func() bool
	}{
		{"chunk delivery", func() bool { return s.DeviceMaySubscribe("dev-1", "ef/v1/models/fraud/2/chunks") }},
		{"desired delivery", func() bool { return s.DeviceMaySubscribe("dev-1", "ef/v1/dev/dev-1/desired") }},
		{"ack delivery", func() bool { return s.DeviceMaySubscribe("dev-1", "ef/v1/dev/dev-1/ack") }},
		{"trust", func() bool { return s.DeviceMaySubscribe("dev-1", "ef/v1/trust") }},
		{"status publish", func() bool { return s.DeviceMayPublish("dev-1", "ef/v1/dev/dev-1/status", false) }},
	} {
		require.True(t, c.f(), c.name)
		assert.Zero(t, testing.AllocsPerRun(100, func() { c.f() }), "%s allocates", c.name)
	}
}
