// Package brokerauth is what an external mosquitto or a NATS cluster needs
// from the control plane to let exactly the enrolled devices in: for
// mosquitto a password file in its own format (every device with a
// password, and the control plane's ingest logins) and the ACL for the
// topic scheme; for NATS the authorization file every node includes
// (bcrypt hashes and per-login permissions, internal/natsconf). `edgefleet
// broker sync` fetches them over the API, long-polling, writes the files
// next to the broker and reloads it; the broker then also closes the
// sessions of revoked devices. Imported by controlplane.
package brokerauth

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/fleet"
	"github.com/edgefleet/edgefleet/internal/mosquitto"
	"github.com/edgefleet/edgefleet/internal/natsconf"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// Credentials is the device registry's side.
type Credentials interface {
	BrokerCredentials() fleet.BrokerCredentials
	AuthenticateDevice(username string, password []byte) bool
}

// Options configure a Source. Fields without a documented default are
// required.
type Options struct {
	Credentials Credentials
	Scheme      topics.Scheme
	// ControlUser and ControlPassword are the control plane's login on the
	// broker (serve --mqtt-username, --mqtt-password).
	ControlUser     string
	ControlPassword string
	// IngestConnections is serve --ingest-connections: each logs in as
	// topics.IngestUsername with ControlPassword.
	IngestConnections int
	Logger            *slog.Logger
}

// Source renders the mosquitto files and answers the login and ACL checks
// of a broker that asks over HTTP (EMQX).
type Source struct {
	creds  Credentials
	log    *slog.Logger
	scheme topics.Scheme
	// controlUser and controlPassword are the control plane's login;
	// ingestUsers its ingest logins (same password, telemetry only).
	controlUser     string
	controlPassword []byte
	ingestUsers     map[string]bool
	// epoch tells this process's generations from another's: a client
	// holding an ETag from before a restart gets the content at once.
	epoch    string
	reserved map[string]bool // logins no device may have
	ingest   []mosquitto.Entry
	acl      string
	// natsUsers are the control plane's NATS logins (bcrypt hashes of
	// its password), first in every authorization file.
	natsUsers []natsconf.User
}

// New hashes the ingest logins and renders the ACL.
func New(o Options) (*Source, error) {
	if o.ControlUser == "" {
		return nil, errors.New("brokerauth: the control plane logs in to the broker without a username (serve --mqtt-username), which mosquitto's ACL cannot name")
	}
	acl, err := topics.MosquittoACL(o.Scheme, o.ControlUser, o.IngestConnections)
	if err != nil {
		return nil, fmt.Errorf("brokerauth: %w", err)
	}
	epoch := make([]byte, 4)
	if _, err := rand.Read(epoch); err != nil {
		return nil, fmt.Errorf("brokerauth: %w", err)
	}
	s := &Source{creds: o.Credentials, log: o.Logger, epoch: hex.EncodeToString(epoch), acl: acl,
		scheme: o.Scheme, controlUser: o.ControlUser, controlPassword: []byte(o.ControlPassword),
		ingestUsers: map[string]bool{}, reserved: map[string]bool{o.ControlUser: true}}
	if s.log == nil {
		s.log = slog.Default()
	}
	for i := range o.IngestConnections {
		user := topics.IngestUsername(o.ControlUser, i)
		h, err := mosquitto.Hash(o.ControlPassword)
		if err != nil {
			return nil, fmt.Errorf("brokerauth: %w", err)
		}
		s.ingest = append(s.ingest, mosquitto.Entry{User: user, Hash: h})
		s.reserved[user] = true
		s.ingestUsers[user] = true
	}
	if o.ControlPassword != "" {
		// One hash at the default cost: the control plane's password may
		// be one a person chose.
		h, err := bcrypt.GenerateFromPassword([]byte(o.ControlPassword), bcrypt.DefaultCost)
		if err != nil {
			return nil, fmt.Errorf("brokerauth: %w", err)
		}
		u, err := natsconf.ControlUser(o.Scheme, o.ControlUser, string(h))
		if err != nil {
			return nil, fmt.Errorf("brokerauth: %w", err)
		}
		s.natsUsers = append(s.natsUsers, u)
		for _, e := range s.ingest {
			u, err := natsconf.IngestUser(o.Scheme, e.User, string(h))
			if err != nil {
				return nil, fmt.Errorf("brokerauth: %w", err)
			}
			s.natsUsers = append(s.natsUsers, u)
		}
	}
	return s, nil
}

// Mosquitto returns the files. With ifNoneMatch equal to the current
// generation it waits up to wait (or until ctx or stop end) for the next
// one, and reports false when nothing changed.
func (s *Source) Mosquitto(ctx context.Context, ifNoneMatch string, wait time.Duration, stop <-chan struct{}) (api.MosquittoAuth, bool, error) {
	bc, changed, err := s.await(ctx, ifNoneMatch, wait, stop)
	if !changed || err != nil {
		return api.MosquittoAuth{}, false, err
	}
	entries := make([]mosquitto.Entry, 0, len(s.ingest)+len(bc.Entries))
	entries = append(entries, s.ingest...)
	devices := 0
	for _, e := range bc.Entries {
		if s.reserved[e.User] {
			// A device named like the control plane's login must not get
			// its rights (ACL "user" sections) with its own password.
			s.log.Warn("device left out of the broker's password file: its id is a control-plane login", "device", e.User)
			continue
		}
		entries = append(entries, e)
		devices++
	}
	passwd, err := mosquitto.WritePasswd(entries)
	if err != nil {
		return api.MosquittoAuth{}, false, fmt.Errorf("brokerauth: %w", err)
	}
	return api.MosquittoAuth{
		Generation:    s.generation(bc.Generation),
		Passwd:        string(passwd),
		ACL:           s.acl,
		Devices:       devices,
		LegacyDevices: bc.Legacy,
	}, true, nil
}

// await returns the credentials, or with ifNoneMatch equal to the current
// generation waits up to wait (or until ctx or stop end) for the next
// ones and reports false when nothing changed.
func (s *Source) await(ctx context.Context, ifNoneMatch string, wait time.Duration, stop <-chan struct{}) (fleet.BrokerCredentials, bool, error) {
	bc := s.creds.BrokerCredentials()
	if ifNoneMatch != s.generation(bc.Generation) {
		return bc, true, nil
	}
	if wait <= 0 {
		return bc, false, nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-bc.Changed:
		return s.creds.BrokerCredentials(), true, nil
	case <-t.C:
		return bc, false, nil
	case <-ctx.Done():
		return bc, false, ctx.Err()
	case <-stop:
		return bc, false, nil
	}
}

// NATS returns the authorization file of a NATS cluster, long-polled like
// Mosquitto: the control plane's logins, then every device that has a
// bcrypt hash and an id NATS accepts as an MQTT client id. The others are
// listed in Excluded with the reason.
func (s *Source) NATS(ctx context.Context, ifNoneMatch string, wait time.Duration, stop <-chan struct{}) (api.NATSAuth, bool, error) {
	if len(s.natsUsers) == 0 {
		return api.NATSAuth{}, false, api.Errorf(api.ErrExists, "the control plane logs in to the broker without a password (serve --mqtt-password), which a NATS authorization file cannot hold")
	}
	bc, changed, err := s.await(ctx, ifNoneMatch, wait, stop)
	if !changed || err != nil {
		return api.NATSAuth{}, false, err
	}
	out := api.NATSAuth{Generation: s.generation(bc.Generation)}
	exclude := func(id, why string) {
		if out.Excluded == nil {
			out.Excluded = map[string]string{}
		}
		out.Excluded[id] = why
	}
	users := slices.Clone(s.natsUsers)
	for _, e := range bc.Bcrypt {
		if s.reserved[e.User] {
			exclude(e.User, "its id is a control-plane login")
			continue
		}
		u, err := natsconf.DeviceUser(s.scheme, e.User, e.Hash)
		if errors.Is(err, natsconf.ErrDeviceID) {
			exclude(e.User, "NATS refuses MQTT client ids with '.': register the device under another id")
			continue
		}
		if err != nil {
			return api.NATSAuth{}, false, fmt.Errorf("brokerauth: %w", err)
		}
		users = append(users, u)
	}
	for _, id := range bc.NoBcrypt {
		exclude(id, "no bcrypt hash of its password (registered while the control plane ran the embedded broker): enroll it again")
	}
	out.Devices = len(users) - len(s.natsUsers)
	if out.Auth, err = natsconf.Authorization(users); err != nil {
		return api.NATSAuth{}, false, fmt.Errorf("brokerauth: %w", err)
	}
	return out, true, nil
}

func (s *Source) generation(n uint64) string {
	return s.epoch + "-" + strconv.FormatUint(n, 10)
}

// Authenticate answers a broker's login check: a device by its password,
// with the client id equal to the username (so no device can take over
// another's session); the control plane's logins by its password.
func (s *Source) Authenticate(user, clientID string, password []byte) bool {
	if s.reserved[user] {
		return clientID == user && len(s.controlPassword) > 0 &&
			subtle.ConstantTimeCompare(password, s.controlPassword) == 1
	}
	if clientID != user || topics.ValidDeviceID(user) != nil {
		return false
	}
	return s.creds.AuthenticateDevice(user, password)
}

// Authorize answers a broker's ACL check with the rules the embedded
// broker enforces: a device its own topics (topics.Scheme), the control
// plane's login its whole prefix, an ingest login a (shared) subscription
// to telemetry. topic is a filter for subscribes. A shared subscription's
// "$share/<group>/" is stripped first.
func (s *Source) Authorize(user, clientID, topic string, publish, retain bool) bool {
	if clientID != user {
		return false
	}
	if !publish {
		topic = stripShare(topic)
	}
	switch {
	case user == s.controlUser:
		p := s.scheme.Prefix
		if p == "" {
			p = topics.DefaultPrefix
		}
		return strings.HasPrefix(topic, p+"/")
	case s.ingestUsers[user]:
		return !publish && topic == s.scheme.AllTelemetry()
	case publish:
		return s.scheme.DeviceMayPublish(user, topic, retain)
	}
	return s.scheme.DeviceMaySubscribe(user, topic)
}

// stripShare turns "$share/group/filter" into "filter".
func stripShare(filter string) string {
	rest, ok := strings.CutPrefix(filter, "$share/")
	if !ok {
		return filter
	}
	if _, f, ok := strings.Cut(rest, "/"); ok {
		return f
	}
	return filter
}
