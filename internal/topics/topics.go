// Package topics defines edgefleet's MQTT topic scheme, the names it allows
// (device ids, model names and versions), the per-device deny-by-default ACL
// (for the embedded broker and as a mosquitto ACL file), and MQTT topic and
// filter syntax checks; it has no dependencies. Imported by agent,
// controlplane/..., fleet-sim/..., internal/mqttc and internal/transfer.
package topics

import (
	"errors"
	"fmt"
	"strings"
)

// DefaultPrefix is the prefix used by a zero Scheme.
const DefaultPrefix = "ef/v1"

// MaxNameLen is the longest device id, model name or model version accepted.
const MaxNameLen = 64

// Sentinel errors; returned errors wrap one of these.
var (
	// ErrInvalidName: a device id, model name, model version or prefix level
	// is not 1..64 characters of [A-Za-z0-9._-] not starting with '.'.
	ErrInvalidName = errors.New("invalid name")
	// ErrInvalidTopic: a topic name or filter is not valid MQTT, or a topic
	// is not part of the scheme.
	ErrInvalidTopic = errors.New("invalid topic")
)

// Leaf names of the scheme.
const (
	leafDesired   = "desired"
	leafFetch     = "fetch"
	leafStatus    = "status"
	leafTelemetry = "telemetry"
	leafPresence  = "presence"
	leafAck       = "ack"
	leafManifest  = "manifest"
	leafChunks    = "chunks"
	levelDev      = "dev"
	levelModels   = "models"
	levelTrust    = "trust"
)

// Scheme builds and parses edgefleet topics under a configurable prefix.
// The zero value uses DefaultPrefix. Device ids and model names passed to
// the builders are not validated; validate them at the edge with
// ValidDeviceID, ValidModelName and ValidModelVersion.
//
//	<prefix>/dev/{id}/desired                      cp → agent, QoS 1, retained
//	<prefix>/dev/{id}/fetch|status|telemetry|presence  agent → cp, QoS 1
//	<prefix>/dev/{id}/ack                          cp → agent, QoS 1 (reports the control plane persisted)
//	<prefix>/models/{name}/{version}/manifest      cp → agents, QoS 1, retained
//	<prefix>/models/{name}/{version}/chunks        cp → agents, QoS 1
//	<prefix>/trust                                 cp → agents, QoS 1, retained (root-signed trust bundle)
type Scheme struct {
	// Prefix is one or more topic levels, each a valid name; "" means DefaultPrefix.
	Prefix string
}

func (s Scheme) prefix() string {
	if s.Prefix == "" {
		return DefaultPrefix
	}
	return s.Prefix
}

// Validate reports whether the prefix is usable: non-empty levels made of
// name characters (so it holds no wildcard and does not start with '$').
func (s Scheme) Validate() error {
	for _, level := range strings.Split(s.prefix(), "/") {
		if err := validName("prefix level", level, false); err != nil {
			return fmt.Errorf("topics: prefix %q: %w", s.Prefix, err)
		}
	}
	return nil
}

func (s Scheme) dev(id, leaf string) string {
	return s.prefix() + "/" + levelDev + "/" + id + "/" + leaf
}

func (s Scheme) model(name, version, leaf string) string {
	return s.prefix() + "/" + levelModels + "/" + name + "/" + version + "/" + leaf
}

// Desired is the device's signed desired-state topic (cp → agent, retained).
func (s Scheme) Desired(dev string) string { return s.dev(dev, leafDesired) }

// Fetch is where the device asks for the chunks it lacks (agent → cp).
func (s Scheme) Fetch(dev string) string { return s.dev(dev, leafFetch) }

// Status carries the device's lifecycle events (agent → cp).
func (s Scheme) Status(dev string) string { return s.dev(dev, leafStatus) }

// Telemetry carries the device's counters, accuracy and drift reports (agent → cp).
func (s Scheme) Telemetry(dev string) string { return s.dev(dev, leafTelemetry) }

// Presence carries the device's online/offline state, also its LWT (agent → cp).
func (s Scheme) Presence(dev string) string { return s.dev(dev, leafPresence) }

// Ack carries the control plane's acknowledgements of the device's status
// events and telemetry, by seq, once persisted (cp → agent, not retained).
func (s Scheme) Ack(dev string) string { return s.dev(dev, leafAck) }

// Manifest is the signed manifest of a model version (cp → agents, retained).
func (s Scheme) Manifest(name, version string) string { return s.model(name, version, leafManifest) }

// Chunks carries the chunk payloads of a model version (cp → agents).
func (s Scheme) Chunks(name, version string) string { return s.model(name, version, leafChunks) }

// Trust is the root-signed trust bundle topic (cp → agents, retained).
func (s Scheme) Trust() string { return s.prefix() + "/" + levelTrust }

// AllStatus is the control plane's filter for every device's status topic.
func (s Scheme) AllStatus() string { return s.dev("+", leafStatus) }

// AllTelemetry is the control plane's filter for every device's telemetry topic.
func (s Scheme) AllTelemetry() string { return s.dev("+", leafTelemetry) }

// AllFetch is the control plane's filter for every device's fetch topic.
func (s Scheme) AllFetch() string { return s.dev("+", leafFetch) }

// AllPresence is the control plane's filter for every device's presence topic.
func (s Scheme) AllPresence() string { return s.dev("+", leafPresence) }

// Kind says which topic of the scheme a Topic is.
type Kind int

// Topic kinds; the zero Kind is not a valid kind.
const (
	KindDesired Kind = iota + 1
	KindFetch
	KindStatus
	KindTelemetry
	KindPresence
	KindManifest
	KindChunks
	KindTrust
	KindAck
)

var kindNames = [...]string{
	KindDesired:   leafDesired,
	KindFetch:     leafFetch,
	KindStatus:    leafStatus,
	KindTelemetry: leafTelemetry,
	KindPresence:  leafPresence,
	KindManifest:  leafManifest,
	KindChunks:    leafChunks,
	KindTrust:     levelTrust,
	KindAck:       leafAck,
}

func (k Kind) String() string {
	if k <= 0 || int(k) >= len(kindNames) {
		return fmt.Sprintf("Kind(%d)", int(k))
	}
	return kindNames[k]
}

// Topic is a parsed topic of the scheme. Device is set for the dev/ kinds,
// Model and Version for manifest and chunks.
type Topic struct {
	Kind    Kind
	Device  string
	Model   string
	Version string
}

var devLeaves = map[string]Kind{
	leafDesired:   KindDesired,
	leafFetch:     KindFetch,
	leafStatus:    KindStatus,
	leafTelemetry: KindTelemetry,
	leafPresence:  KindPresence,
	leafAck:       KindAck,
}

// Parse splits a concrete topic name of the scheme into its parts. Topics
// outside the prefix, unknown leaves, invalid names and wildcards are errors
// wrapping ErrInvalidTopic.
func (s Scheme) Parse(topic string) (Topic, error) {
	p := s.prefix() + "/"
	rest, ok := strings.CutPrefix(topic, p)
	if !ok {
		return Topic{}, fmt.Errorf("topics: parse %q: not under prefix %q: %w", topic, s.prefix(), ErrInvalidTopic)
	}
	levels := strings.Split(rest, "/")
	switch {
	case len(levels) == 1 && levels[0] == levelTrust:
		return Topic{Kind: KindTrust}, nil
	case len(levels) == 3 && levels[0] == levelDev:
		kind, ok := devLeaves[levels[2]]
		if !ok {
			return Topic{}, fmt.Errorf("topics: parse %q: unknown device topic %q: %w", topic, levels[2], ErrInvalidTopic)
		}
		if err := ValidDeviceID(levels[1]); err != nil {
			return Topic{}, fmt.Errorf("topics: parse %q: %w: %w", topic, ErrInvalidTopic, err)
		}
		return Topic{Kind: kind, Device: levels[1]}, nil
	case len(levels) == 4 && levels[0] == levelModels:
		var kind Kind
		switch levels[3] {
		case leafManifest:
			kind = KindManifest
		case leafChunks:
			kind = KindChunks
		default:
			return Topic{}, fmt.Errorf("topics: parse %q: unknown model topic %q: %w", topic, levels[3], ErrInvalidTopic)
		}
		if err := ValidModelName(levels[1]); err != nil {
			return Topic{}, fmt.Errorf("topics: parse %q: %w: %w", topic, ErrInvalidTopic, err)
		}
		if err := ValidModelVersion(levels[2]); err != nil {
			return Topic{}, fmt.Errorf("topics: parse %q: %w: %w", topic, ErrInvalidTopic, err)
		}
		return Topic{Kind: kind, Model: levels[1], Version: levels[2]}, nil
	}
	return Topic{}, fmt.Errorf("topics: parse %q: not a topic of the scheme: %w", topic, ErrInvalidTopic)
}

// ValidDeviceID checks a device id: 1..64 characters of [A-Za-z0-9._-], not
// starting with '.'. The id is also the MQTT username and client id.
func ValidDeviceID(id string) error { return validName("device id", id, false) }

// ValidModelName checks a model name: 1..64 characters of [A-Za-z0-9._-],
// starting with a letter or digit, so it is a safe MQTT topic level and
// file name (never "." or "..", never an option). It is the one check of
// model names everywhere: uploads, manifests, device messages.
func ValidModelName(name string) error { return validName("model name", name, true) }

// ValidModelVersion checks a model version with the rules of
// ValidModelName.
func ValidModelVersion(v string) error { return validName("model version", v, true) }

func validName(what, s string, alnumFirst bool) error {
	if s == "" || len(s) > MaxNameLen {
		return fmt.Errorf("%s %q: length %d, want 1..%d: %w", what, s, len(s), MaxNameLen, ErrInvalidName)
	}
	if alnumFirst && !alnum(s[0]) {
		return fmt.Errorf("%s %q: must start with a letter or digit: %w", what, s, ErrInvalidName)
	}
	if s[0] == '.' {
		return fmt.Errorf("%s %q: must not start with '.': %w", what, s, ErrInvalidName)
	}
	for i := 0; i < len(s); i++ {
		if !nameByte(s[i]) {
			return fmt.Errorf("%s %q: character %q at %d not allowed (use A-Z a-z 0-9 . _ -): %w", what, s, rune(s[i]), i, ErrInvalidName)
		}
	}
	return nil
}

func alnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }

func nameByte(c byte) bool { return alnum(c) || c == '.' || c == '_' || c == '-' }
