package topics

import (
	"fmt"
	"strings"
)

// DeviceMayPublish is the deny-by-default publish ACL for a device
// authenticated as dev: only its own status, telemetry, fetch and presence
// topics, never retained (only the control plane publishes retained
// messages), and its own capture topic (field data capture).
//
// The embedded broker asks for every message a device sends or receives,
// so both checks parse the topic in place and allocate nothing.
func (s Scheme) DeviceMayPublish(dev, topic string, retained bool) bool {
	if retained || ValidDeviceID(dev) != nil || !s.validPrefix() {
		return false
	}
	leaf, ok := s.ownLeaf(dev, topic)
	if !ok {
		return false
	}
	switch leaf {
	case leafStatus, leafTelemetry, leafFetch, leafPresence:
		return true
	case leafCapture: // field data capture
		return true
	}
	return false
}

// DeviceMaySubscribe is the deny-by-default subscribe/read ACL for a device
// authenticated as dev. It accepts concrete topics and filters. Allowed: the
// device's own desired, ack, capture-ack, site and chunks topics, the trust topic, and model topics
// <prefix>/models/<name|+>/<version|+>/<manifest|chunks|+>. Everything
// else is refused: any '#', '+' outside those three model levels (in the
// prefix, in place of a device id, or of a fixed level), other devices,
// trailing slashes, empty levels and shared subscriptions.
func (s Scheme) DeviceMaySubscribe(dev, filter string) bool {
	if ValidDeviceID(dev) != nil || !s.validPrefix() {
		return false
	}
	if leaf, ok := s.ownLeaf(dev, filter); ok {
		switch leaf {
		case leafDesired, leafAck, leafSite, leafChunks:
			return true
		case leafCaptureAck: // field data capture
			return true
		}
		return false
	}
	rest, ok := s.cutPrefix(filter)
	if !ok {
		return false
	}
	if rest == levelTrust {
		return true
	}
	rest, ok = strings.CutPrefix(rest, levelModels+"/")
	if !ok {
		return false
	}
	name, rest, ok := strings.Cut(rest, "/")
	if !ok {
		return false
	}
	version, leaf, ok := strings.Cut(rest, "/")
	if !ok || strings.Contains(leaf, "/") {
		return false
	}
	if name != "+" && ValidModelName(name) != nil {
		return false
	}
	if version != "+" && ValidModelVersion(version) != nil {
		return false
	}
	switch leaf {
	case "+", leafManifest, leafChunks:
		return true
	}
	return false
}

// cutPrefix returns what follows "<prefix>/" in topic.
func (s Scheme) cutPrefix(topic string) (rest string, ok bool) {
	p := s.prefix()
	if len(topic) <= len(p) || topic[len(p)] != '/' || topic[:len(p)] != p {
		return "", false
	}
	return topic[len(p)+1:], true
}

// ownLeaf returns the leaf of topic when it is <prefix>/dev/<dev>/<leaf>
// with a leaf of one level.
func (s Scheme) ownLeaf(dev, topic string) (leaf string, ok bool) {
	rest, ok := s.cutPrefix(topic)
	if !ok {
		return "", false
	}
	rest, ok = strings.CutPrefix(rest, levelDev+"/")
	if !ok {
		return "", false
	}
	rest, ok = strings.CutPrefix(rest, dev)
	if !ok || len(rest) < 2 || rest[0] != '/' || strings.Contains(rest[1:], "/") {
		return "", false
	}
	return rest[1:], true
}

// validPrefix is Validate() == nil without allocating.
func (s Scheme) validPrefix() bool {
	p := s.prefix()
	for p != "" {
		level, rest, found := strings.Cut(p, "/")
		if validName("prefix level", level, false) != nil {
			return false
		}
		if found && rest == "" {
			return false // a trailing slash: an empty last level
		}
		p = rest
	}
	return true
}

// Access says what a device may do on a topic pattern.
type Access int

// Accesses of an ACLRule.
const (
	// Write: the device publishes there (never retained: see DeviceMayPublish).
	Write Access = iota + 1
	// Read: the device subscribes there.
	Read
)

// ACLRule is one line of the per-device deny-by-default ACL: Topic is a
// topic or a filter of the scheme in which the device's id is the dev
// argument of DeviceACL.
type ACLRule struct {
	Access Access
	Topic  string
}

// DeviceACL is the device rules every broker ACL is rendered from (the
// mosquitto file with dev "%u", NATS permissions with each device's id), so
// a topic added to the scheme is added to every broker by adding it here.
// They are the rules DeviceMayPublish and DeviceMaySubscribe enforce on the
// embedded broker (a test checks each kind of topic against both).
func (s Scheme) DeviceACL(dev string) []ACLRule {
	return []ACLRule{
		{Write, s.Status(dev)},
		{Write, s.Telemetry(dev)},
		{Write, s.Fetch(dev)},
		{Write, s.Presence(dev)},
		{Read, s.Desired(dev)},
		{Read, s.Ack(dev)},
		// Site sharing: its site document; the chunks it asked for on its
		// own topic (its part of a site's download, or a late asker's).
		{Read, s.Site(dev)},
		{Read, s.DeviceChunks(dev)},
		{Read, s.Trust()},
		{Read, s.model("+", "+", "+")},
		// Field data capture: uploads, and the control plane's acknowledgements.
		{Write, s.Capture(dev)},
		{Read, s.CaptureAck(dev)},
	}
}

// ControlFilter is the filter of everything under the prefix: the control
// plane's login may publish and subscribe there.
func (s Scheme) ControlFilter() string { return s.prefix() + "/#" }

// MosquittoACL renders the same rules as DeviceMayPublish/DeviceMaySubscribe
// as a mosquitto acl_file, with devices matched by the %u pattern (username =
// device id) and controlUser given read/write access to the whole prefix.
//
// mosquitto cannot express two of the embedded broker's rules, so its config
// must add them: `use_username_as_clientid true` (client id = username, so a
// device cannot take over another's session) and an auth plugin or password
// file for the credentials. A mosquitto ACL also cannot forbid retained
// publishes; a device can at most retain a message on its own outbound topics.
//
// ingest is the control plane's number of ingest connections (serve
// --ingest-connections): each logs in as IngestUsername(controlUser, i) and
// may only read telemetry.
func MosquittoACL(s Scheme, controlUser string, ingest int) (string, error) {
	if err := s.Validate(); err != nil {
		return "", fmt.Errorf("topics: mosquitto acl: %w", err)
	}
	if err := ValidControlUser(controlUser); err != nil {
		return "", fmt.Errorf("topics: mosquitto acl: %w", err)
	}
	p := s.prefix()
	var b strings.Builder
	fmt.Fprintf(&b, "# edgefleet ACL for prefix %s (generated by internal/topics; do not edit).\n", p)
	b.WriteString("# Devices: username = client id = device id (%u). Deny by default.\n")
	b.WriteString("# mosquitto.conf must set: use_username_as_clientid true\n")
	for _, r := range s.DeviceACL("%u") {
		access := "write"
		if r.Access == Read {
			access = "read"
		}
		fmt.Fprintf(&b, "pattern %s %s\n", access, r.Topic)
	}
	b.WriteString("\n# Control plane: full access to the prefix.\n")
	fmt.Fprintf(&b, "user %s\n", controlUser)
	fmt.Fprintf(&b, "topic readwrite %s\n", s.ControlFilter())
	if ingest > 0 {
		b.WriteString("\n# Control plane ingest connections: read telemetry only.\n")
	}
	for i := range ingest {
		fmt.Fprintf(&b, "user %s\n", IngestUsername(controlUser, i))
		fmt.Fprintf(&b, "topic read %s\n", s.AllTelemetry())
	}
	return b.String(), nil
}

// ValidControlUser checks the control plane's broker login: non-empty,
// without spaces, newlines, '#', '+' or '/', so every broker's ACL can
// name it.
func ValidControlUser(user string) error {
	if user == "" || strings.ContainsAny(user, " \t\r\n#+/\"\\") {
		return fmt.Errorf("control-plane username %q must be non-empty without spaces, newlines, quotes, '\\', '#', '+' or '/': %w", user, ErrInvalidName)
	}
	return nil
}

// IngestUsername is the login of the control plane's ingest connection i
// (serve --ingest-connections) on an external broker. A broker that makes
// the username the client id (mosquitto's use_username_as_clientid) gives
// each connection its own session only if each has its own username.
func IngestUsername(controlUser string, i int) string {
	return fmt.Sprintf("%s-ingest-%d", controlUser, i)
}
