// Package natsconf renders the configuration of a NATS server cluster that
// carries edgefleet's MQTT traffic: one node's file (JetStream, the MQTT
// listener with replicated streams, routes to the other nodes) and the
// authorization file every node includes, with each login's bcrypt hash
// and deny-by-default permissions rendered from the topic scheme's device
// ACL. NATS rereads the authorization file on a reload (SIGHUP), so logins
// come and go without a restart. Imported by controlplane/brokerauth and
// controlplane/cli.
package natsconf

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/internal/topics"
)

// ErrConfig wraps every error about a value that cannot go into a NATS
// config file.
var ErrConfig = errors.New("natsconf: invalid value")

// Defaults of Node's zero fields.
const (
	DefaultClusterName = "edgefleet"
	DefaultReplicas    = 3
	DefaultHost        = "0.0.0.0"
)

// Node is one server of the cluster.
type Node struct {
	// Name is the node's server_name, unique in the cluster (MQTT needs
	// one). Required.
	Name string
	// Host is the address the listeners bind; default DefaultHost.
	Host string
	// ClientPort (NATS clients, 0: not listening), MQTTPort, ClusterPort
	// (routes) and MonitorPort (HTTP /healthz, 0: none).
	ClientPort, MQTTPort, ClusterPort, MonitorPort int
	// Routes are the other nodes' cluster listeners, host:port.
	Routes []string
	// RoutePassword is the secret the nodes log in to each other's
	// cluster port with (user "route"): without it anyone who reaches
	// that port joins the cluster. Required; NATS needs it in plain text
	// to dial the routes, so the node's file is as secret as the
	// password.
	RoutePassword string
	// StoreDir is JetStream's directory. Required.
	StoreDir string
	// AuthFile is the authorization file the node includes (Authorization's
	// output), a path relative to the node's file: NATS resolves every
	// include against the including file's directory, even an absolute
	// path. Required.
	AuthFile string
	// ClusterName is the cluster's name; default DefaultClusterName.
	ClusterName string
	// Replicas is how many nodes hold each MQTT stream (sessions,
	// retained messages, QoS 1 messages) and consumer; default
	// DefaultReplicas, at most the cluster's size.
	Replicas int
	// MQTTTLSCert and MQTTTLSKey, if set, make the MQTT listener TLS.
	MQTTTLSCert, MQTTTLSKey string
	// PidFile, if set, is where the node writes its pid (for broker sync's
	// --pid-file).
	PidFile string
	// MaxPayload bounds a message, NATS's max_payload; default 2 MiB (a
	// chunk is 1 MiB at most, plus framing).
	MaxPayload int
	// MQTTAckWait, if set, is NATS's MQTT ack_wait: how long a QoS 1
	// message delivered to a client waits for its PUBACK before it is
	// delivered again (NATS's default, 30s). A delivery in flight through
	// a node that dies is delivered again only then: with the default, a
	// device on a surviving node waited 30–40 s for a desired state the
	// control plane published just before the kill (docs/deploy.md). A
	// shorter wait also redelivers to devices whose links take longer
	// than it to take their queued chunks. Whole seconds, at least 1s.
	MQTTAckWait time.Duration
}

// NodeConfig renders n as a nats-server configuration file.
func NodeConfig(n Node) (string, error) {
	if n.Name == "" || n.StoreDir == "" || n.AuthFile == "" || n.MQTTPort <= 0 || n.ClusterPort <= 0 || n.RoutePassword == "" {
		return "", fmt.Errorf("%w: a node needs a name, a store dir, an auth file, an MQTT port, a cluster port and a route password", ErrConfig)
	}
	if strings.ContainsAny(n.RoutePassword, "@:/ ") || url.PathEscape(n.RoutePassword) != n.RoutePassword {
		return "", fmt.Errorf("%w: the route password goes into route URLs: use letters, digits and -._~ only", ErrConfig)
	}
	if filepath.IsAbs(n.AuthFile) {
		return "", fmt.Errorf("%w: auth file %q: NATS reads an include relative to the node's config file, so give a relative path", ErrConfig, n.AuthFile)
	}
	if n.Host == "" {
		n.Host = DefaultHost
	}
	if n.ClusterName == "" {
		n.ClusterName = DefaultClusterName
	}
	if n.Replicas == 0 {
		n.Replicas = DefaultReplicas
	}
	if n.MaxPayload == 0 {
		n.MaxPayload = 2 << 20
	}
	if n.MQTTAckWait < 0 || n.MQTTAckWait%time.Second != 0 { // also refuses 0 < wait < 1s
		return "", fmt.Errorf("%w: MQTT ack wait %v: whole seconds, at least 1s", ErrConfig, n.MQTTAckWait)
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	var err error
	q := func(s string) string {
		v, qerr := quote(s)
		err = errors.Join(err, qerr)
		return v
	}
	w("# edgefleet NATS node %s (edgefleet broker nats-config; see docs/deploy.md).\n", n.Name)
	w("server_name: %s\n", q(n.Name))
	if n.ClientPort > 0 {
		w("listen: %s\n", q(fmt.Sprintf("%s:%d", n.Host, n.ClientPort)))
	} else {
		// NATS always opens a client port; keep it on loopback.
		w("listen: \"127.0.0.1:-1\"\n")
	}
	if n.PidFile != "" {
		w("pid_file: %s\n", q(n.PidFile))
	}
	if n.MonitorPort > 0 {
		w("http: %s\n", q(fmt.Sprintf("%s:%d", n.Host, n.MonitorPort)))
	}
	w("max_payload: %d\n", n.MaxPayload)
	w("jetstream {\n  store_dir: %s\n}\n", q(n.StoreDir))
	w("cluster {\n  name: %s\n  listen: %s\n", q(n.ClusterName), q(fmt.Sprintf("%s:%d", n.Host, n.ClusterPort)))
	w("  authorization {\n    user: \"route\"\n    password: %s\n  }\n  routes: [\n", q(n.RoutePassword))
	routes := slices.Clone(n.Routes)
	slices.Sort(routes)
	for _, r := range routes {
		w("    %s\n", q("nats-route://route:"+n.RoutePassword+"@"+r))
	}
	w("  ]\n}\n")
	w("mqtt {\n  listen: %s\n", q(fmt.Sprintf("%s:%d", n.Host, n.MQTTPort)))
	w("  stream_replicas: %d\n", n.Replicas)
	if n.MQTTAckWait > 0 {
		w("  ack_wait: \"%ds\"\n", int(n.MQTTAckWait/time.Second))
	}
	if n.MQTTTLSCert != "" || n.MQTTTLSKey != "" {
		w("  tls {\n    cert_file: %s\n    key_file: %s\n  }\n", q(n.MQTTTLSCert), q(n.MQTTTLSKey))
	}
	w("}\n")
	w("include %s\n", q(n.AuthFile))
	if err != nil {
		return "", err
	}
	return b.String(), nil
}

// User is one login of the authorization file.
type User struct {
	Name string
	// Hash is the password's bcrypt hash ($2a$…, $2b$…).
	Hash string
	// Publish and Subscribe are the NATS subjects the login may use; none
	// means none (deny by default).
	Publish, Subscribe []string
}

// Authorization renders the authorization file: every user with its hash
// and permissions. Users must have distinct names.
func Authorization(users []User) (string, error) {
	var b strings.Builder
	b.WriteString("# edgefleet NATS logins (written by the control plane; do not edit).\n")
	b.WriteString("authorization {\n  users: [\n")
	seen := make(map[string]bool, len(users))
	for _, u := range users {
		if seen[u.Name] {
			return "", fmt.Errorf("%w: user %q twice", ErrConfig, u.Name)
		}
		seen[u.Name] = true
		if !strings.HasPrefix(u.Hash, "$2") {
			return "", fmt.Errorf("%w: user %q: the password must be a bcrypt hash", ErrConfig, u.Name)
		}
		name, err := quote(u.Name)
		if err != nil {
			return "", err
		}
		hash, err := quote(u.Hash)
		if err != nil {
			return "", err
		}
		pub, err := list(u.Publish)
		if err != nil {
			return "", fmt.Errorf("user %q: %w", u.Name, err)
		}
		sub, err := list(u.Subscribe)
		if err != nil {
			return "", fmt.Errorf("user %q: %w", u.Name, err)
		}
		fmt.Fprintf(&b, "    {user: %s, password: %s, permissions: {publish: {allow: %s}, subscribe: {allow: %s}}}\n",
			name, hash, pub, sub)
	}
	b.WriteString("  ]\n}\n")
	return b.String(), nil
}

// noSubject is what an empty allow list holds: NATS reads an empty list as
// "no restriction", so deny-all is an allow list naming a subject no one
// uses (MQTT topics cannot start with '$' here: topics.ValidTopicName).
const noSubject = "$edgefleet.none"

func list(subjects []string) (string, error) {
	if len(subjects) == 0 {
		subjects = []string{noSubject}
	}
	out := make([]string, 0, len(subjects))
	for _, s := range subjects {
		if s == "" || strings.ContainsAny(s, " \t\r\n") {
			return "", fmt.Errorf("%w: subject %q", ErrConfig, s)
		}
		v, err := quote(s)
		if err != nil {
			return "", err
		}
		out = append(out, v)
	}
	return "[" + strings.Join(out, ", ") + "]", nil
}

// quote writes s as a double-quoted NATS config string, inside which
// nothing is a variable or a comment ('$' and "//" are literal there).
func quote(s string) (string, error) {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return "", fmt.Errorf("%w: %q has a control character", ErrConfig, s)
		}
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`, nil
}

// ErrDeviceID is returned for a device id NATS's MQTT layer refuses as a
// client id: one with a '.' (it must be a valid NATS name; the broker
// answers "identifier rejected"). Agents log in with their id as the
// client id, so such a device cannot use a NATS broker.
var ErrDeviceID = errors.New("natsconf: NATS refuses MQTT client ids with '.'")

// DeviceUser is a device's login: its id, its password's bcrypt hash, and
// the subjects of s.DeviceACL(id).
func DeviceUser(s topics.Scheme, id, hash string) (User, error) {
	if err := topics.ValidDeviceID(id); err != nil {
		return User{}, fmt.Errorf("natsconf: %w", err)
	}
	if strings.Contains(id, ".") {
		return User{}, fmt.Errorf("device %q: %w", id, ErrDeviceID)
	}
	u := User{Name: id, Hash: hash}
	for _, r := range s.DeviceACL(id) {
		subject, err := topics.NATSSubject(r.Topic)
		if err != nil {
			return User{}, fmt.Errorf("natsconf: device %s: %w", id, err)
		}
		if r.Access == topics.Write {
			u.Publish = append(u.Publish, subject)
		} else {
			u.Subscribe = append(u.Subscribe, subject)
		}
	}
	return u, nil
}

// ControlUser is the control plane's login: everything under the prefix.
func ControlUser(s topics.Scheme, name, hash string) (User, error) {
	if err := topics.ValidControlUser(name); err != nil {
		return User{}, fmt.Errorf("natsconf: %w", err)
	}
	all, err := topics.NATSSubject(s.ControlFilter())
	if err != nil {
		return User{}, fmt.Errorf("natsconf: %w", err)
	}
	return User{Name: name, Hash: hash, Publish: []string{all}, Subscribe: []string{all}}, nil
}

// IngestUser is one of the control plane's ingest logins: it reads
// telemetry only.
func IngestUser(s topics.Scheme, name, hash string) (User, error) {
	tel, err := topics.NATSSubject(s.AllTelemetry())
	if err != nil {
		return User{}, fmt.Errorf("natsconf: %w", err)
	}
	return User{Name: name, Hash: hash, Subscribe: []string{tel}}, nil
}
