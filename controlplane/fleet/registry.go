package fleet

import (
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"golang.org/x/crypto/bcrypt"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/ingest"
	"github.com/edgefleet/edgefleet/internal/labels"
	"github.com/edgefleet/edgefleet/internal/mosquitto"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Store layout of the registry, in the fleet's store namespace:
//
//	devices/{id}  api.Device as JSON (without Desired and Online)
//	creds/{id}    credential: salt and sha256(salt || password), and the
//	              password hashed for mosquitto's password file
//	desired/{id}  desiredRecord: newest generation and its signed envelope
const (
	prefixDevices = "devices/"
	prefixCreds   = "creds/"
	prefixDesired = "desired/"
)

// Bounds on what a device can make the control plane remember.
const (
	maxReportedModels = 64  // models per device: in its desired state, Reported and Telemetry
	maxReasonLen      = 512 // bytes of a status reason kept
	maxAgentVersion   = 64  // bytes of an agent version kept
	// lastSeenPersistEvery bounds badger writes caused by telemetry: the
	// in-memory last_seen is always current, the stored one at most this old.
	lastSeenPersistEvery = 30 * time.Second
)

// credential is a device's MQTT password, hashed. The password is 32 random
// bytes the control plane generated, so one salted sha256 is enough for
// the embedded broker, which checks it on every connect: there is nothing
// to brute-force that a slow KDF would protect (KDFs exist for low-entropy
// human passwords). Mosquitto is the password hashed as mosquitto_passwd
// does, for the password file an external mosquitto reads (broker sync);
// credentials made before it existed lack it. Bcrypt is its bcrypt hash
// (cost bcrypt.MinCost: the password is random, see above), for a NATS
// cluster's authorization file; only a control plane on an external
// broker makes it (RegistryOptions.Bcrypt: ~2 ms of CPU per device).
type credential struct {
	Salt      []byte `json:"salt"`
	Hash      []byte `json:"hash"`
	Mosquitto string `json:"mosquitto,omitempty"`
	Bcrypt    string `json:"bcrypt,omitempty"`
}

// newCredential generates a device password and its credential.
func (r *Registry) newCredential() (password string, cred credential, err error) {
	raw := make([]byte, 32)
	salt := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		return "", credential{}, fmt.Errorf("generate password: %w", err)
	}
	if _, err := rand.Read(salt); err != nil {
		return "", credential{}, fmt.Errorf("generate password: %w", err)
	}
	password = base64.RawURLEncoding.EncodeToString(raw)
	mq, err := mosquitto.Hash(password)
	if err != nil {
		return "", credential{}, err
	}
	cred = credential{Salt: salt, Hash: hashPassword(salt, []byte(password)), Mosquitto: mq}
	if r.bcrypt {
		h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
		if err != nil {
			return "", credential{}, fmt.Errorf("generate password: %w", err)
		}
		cred.Bcrypt = string(h)
	}
	return password, cred, nil
}

func hashPassword(salt, password []byte) []byte {
	h := sha256.New()
	h.Write(salt)
	h.Write(password)
	return h.Sum(nil)
}

// desiredRecord is a device's newest desired state. The envelope is the
// source of truth; api.Device.Desired is decoded from it.
type desiredRecord struct {
	Generation uint64 `json:"generation"`
	Envelope   []byte `json:"envelope"`
}

// desiredRecordV1 starts a desiredRecord's binary encoding: the format
// byte, the generation as a uvarint, then the envelope's bytes. Records
// written before it are JSON (they start with '{') and are still read; a
// deployment rewrites them. JSON put the envelope in base64 and took about
// a tenth of a deployment's CPU per device to decode and encode again
// (docs/benchmarks.md, 2026-12-07).
const desiredRecordV1 = 0x01

func (r desiredRecord) encode() []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(r.Envelope))
	b = append(b, desiredRecordV1)
	b = binary.AppendUvarint(b, r.Generation)
	return append(b, r.Envelope...)
}

func decodeDesiredRecord(b []byte) (desiredRecord, error) {
	var r desiredRecord
	switch {
	case len(b) > 0 && b[0] == desiredRecordV1:
		gen, n := binary.Uvarint(b[1:])
		if n <= 0 {
			return r, errors.New("desired-state record: bad generation")
		}
		r.Generation, r.Envelope = gen, b[1+n:]
		return r, nil
	case len(b) > 0 && b[0] == '{':
		if err := json.Unmarshal(b, &r); err != nil {
			return r, fmt.Errorf("desired-state record: %w", err)
		}
		return r, nil
	}
	return r, fmt.Errorf("desired-state record: unknown format (%d bytes)", len(b))
}

type deviceEntry struct {
	dev         api.Device
	prevDesired *api.DesiredSummary // the desired state before dev.Desired (this process only)
	cred        credential
	lastPersist time.Time // when dev was last written to the store
	// snapshots counts the encodings of dev taken for the store (under
	// Registry.mu); persistMu orders their writes, which happen outside
	// Registry.mu, and written is the newest one on disk.
	snapshots uint64
	persistMu sync.Mutex
	written   uint64
	// recent are the latest status events, oldest first (in memory only;
	// at most api.MaxRecentStatus).
	recent []api.StatusRecord
}

// Registry is the set of registered devices: kept in memory (every lookup
// the broker and the ingest path make is a map read) and written through to
// the store. It is opened before the broker, which checks device passwords
// with it.
type Registry struct {
	kv     *store.KV
	clock  func() time.Time
	bcrypt bool // also keep bcrypt hashes (RegistryOptions.Bcrypt)

	// mu guards devices and every field of the entries but persistMu and
	// written. The ingest's write-through to the store happens after mu
	// is released (a slow store must not stall every lookup), ordered per
	// device by deviceEntry.persistMu. Lock order: Fleet.issueMu before
	// Registry.mu (docs/architecture.md); deviceEntry.persistMu is taken
	// without Registry.mu.
	mu      sync.RWMutex
	devices map[string]*deviceEntry
	// credGen counts credential changes; credChanged is closed and
	// replaced at each (see Credentials).
	credGen     uint64
	credChanged chan struct{}
	// ids are the devices' ids, sorted when idsSorted (Visit sorts them
	// when a registration appended one).
	ids       []string
	idsSorted bool
}

// OpenRegistry reads every device, credential and desired state in kv
// (clock nil: time.Now).
func OpenRegistry(kv *store.KV, clock func() time.Time) (*Registry, error) {
	return OpenRegistryWith(kv, RegistryOptions{Clock: clock})
}

// RegistryOptions configure a Registry; zero values are the defaults.
type RegistryOptions struct {
	// Clock is the time source; default time.Now.
	Clock func() time.Time
	// Bcrypt also keeps a bcrypt hash of every new device password, for a
	// NATS broker's authorization file (brokerauth). Off by default: it
	// costs ~2 ms of CPU per registration, which only an external broker
	// needs.
	Bcrypt bool
}

// OpenRegistryWith is OpenRegistry with options.
func OpenRegistryWith(kv *store.KV, o RegistryOptions) (*Registry, error) {
	clock := o.Clock
	if clock == nil {
		clock = time.Now
	}
	r := &Registry{kv: kv, clock: clock, bcrypt: o.Bcrypt, devices: map[string]*deviceEntry{}, idsSorted: true, credChanged: make(chan struct{})}
	err := kv.Scan(prefixDevices, func(key string, val []byte) error {
		var d api.Device
		if err := json.Unmarshal(val, &d); err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		d.Online = false
		d.Desired = nil
		r.devices[d.ID] = &deviceEntry{dev: d}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load devices: %w", err)
	}
	for id := range r.devices {
		r.ids = append(r.ids, id)
	}
	slices.Sort(r.ids)
	r.idsSorted = true
	err = kv.Scan(prefixCreds, func(key string, val []byte) error {
		e := r.devices[strings.TrimPrefix(key, prefixCreds)]
		if e == nil {
			return nil // a registration that did not complete
		}
		if err := json.Unmarshal(val, &e.cred); err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load devices: %w", err)
	}
	for _, e := range r.devices {
		// Registration writes the device and its credential together:
		// one without a credential was revoked.
		e.dev.Revoked = len(e.cred.Hash) == 0
	}
	err = kv.Scan(prefixDesired, func(key string, val []byte) error {
		e := r.devices[strings.TrimPrefix(key, prefixDesired)]
		if e == nil {
			return nil
		}
		rec, err := decodeDesiredRecord(val)
		if err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		sum, err := summarizeDesired(rec.Envelope)
		if err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		e.dev.Desired = sum
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load devices: %w", err)
	}
	return r, nil
}

// summarizeDesired decodes the payload of a desired-state envelope we signed.
func summarizeDesired(envBytes []byte) (*api.DesiredSummary, error) {
	env := &efpb.Envelope{}
	if err := proto.Unmarshal(envBytes, env); err != nil {
		return nil, fmt.Errorf("desired state envelope: %w", err)
	}
	d := &efpb.DesiredState{}
	if err := proto.Unmarshal(env.Payload, d); err != nil {
		return nil, fmt.Errorf("desired state payload: %w", err)
	}
	return desiredSummary(d), nil
}

func desiredSummary(d *efpb.DesiredState) *api.DesiredSummary {
	s := &api.DesiredSummary{
		Generation: d.Generation,
		Models:     make([]api.Assignment, 0, len(d.Models)),
		Issued:     time.Unix(d.IssuedUnix, 0).UTC(),
		Expires:    time.Unix(d.ExpiresUnix, 0).UTC(),
	}
	for _, m := range d.Models {
		s.Models = append(s.Models, api.Assignment{Name: m.Name, Version: m.Version})
	}
	for _, m := range d.Shadows {
		s.Shadows = append(s.Shadows, api.Assignment{Name: m.Name, Version: m.Version})
	}
	return s
}

// register creates a device with a fresh random password and returns it.
func (r *Registry) register(id string, lbls map[string]string) (password string, err error) {
	if err := topics.ValidDeviceID(id); err != nil {
		return "", api.Errorf(api.ErrInvalid, "%v", err)
	}
	if err := labels.ValidLabels(lbls); err != nil {
		return "", api.Errorf(api.ErrInvalid, "labels: %v", err)
	}
	password, cred, err := r.newCredential()
	if err != nil {
		return "", fmt.Errorf("register device: %w", err)
	}
	dev := api.Device{ID: id, Labels: maps.Clone(lbls), Created: r.clock().UTC()}

	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.devices[id]; ok {
		return "", api.Errorf(api.ErrExists, "device %q is already registered", id)
	}
	err = r.kv.Update(func(tx *store.Tx) error {
		if _, err := tx.Get(prefixDevices + id); err == nil {
			return api.Errorf(api.ErrExists, "device %q is already registered", id)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err := tx.SetJSON(prefixDevices+id, &dev); err != nil {
			return err
		}
		return tx.SetJSON(prefixCreds+id, &cred)
	}, true)
	if err != nil {
		return "", fmt.Errorf("register device %s: %w", id, err)
	}
	r.devices[id] = &deviceEntry{dev: dev, cred: cred, lastPersist: dev.Created}
	r.credentialsChanged()
	r.idsSorted = r.idsSorted && (len(r.ids) == 0 || r.ids[len(r.ids)-1] < id)
	r.ids = append(r.ids, id)
	return password, nil
}

// AuthenticateDevice implements broker.Authenticator: username is the
// device id, password the one generated at registration.
func (r *Registry) AuthenticateDevice(username string, password []byte) bool {
	r.mu.RLock()
	e := r.devices[username]
	var cred credential
	if e != nil {
		cred = e.cred
	}
	r.mu.RUnlock()
	if e == nil || len(cred.Hash) == 0 {
		return false
	}
	return subtle.ConstantTimeCompare(hashPassword(cred.Salt, password), cred.Hash) == 1
}

// Get returns a copy of one device, with its recent status events.
func (r *Registry) Get(id string) (api.Device, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e := r.devices[id]
	if e == nil {
		return api.Device{}, false
	}
	d := cloneDevice(&e.dev)
	d.Recent = make([]api.StatusRecord, len(e.recent))
	for i, rec := range e.recent {
		d.Recent[len(e.recent)-1-i] = rec
	}
	return d, true
}

// Visit calls fn with every device in id order until fn returns false,
// under the registry's read lock: fn must not keep or change d, nor call
// the registry. It lets a caller filter and count a large fleet without
// copying it (the console's fleet pages, the rollout engine's view); Get
// copies one device. One exception to "not keep": a device's Labels map
// is never changed once registered (a change would replace it), so a
// reader may keep it, read-only.
func (r *Registry) Visit(fn func(d *api.Device) bool) {
	r.mu.RLock()
	if !r.idsSorted {
		r.mu.RUnlock()
		r.mu.Lock()
		if !r.idsSorted {
			slices.Sort(r.ids)
			r.idsSorted = true
		}
		r.mu.Unlock()
		r.mu.RLock()
	}
	defer r.mu.RUnlock()
	for _, id := range r.ids {
		if e := r.devices[id]; e != nil && !fn(&e.dev) {
			return
		}
	}
}

// addRecent remembers a status event of device id (the newest
// api.MaxRecentStatus are kept).
func (r *Registry) addRecent(id string, rec api.StatusRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.devices[id]
	if e == nil {
		return
	}
	if len(e.recent) >= api.MaxRecentStatus {
		e.recent = slices.Delete(e.recent, 0, len(e.recent)-api.MaxRecentStatus+1)
	}
	e.recent = append(e.recent, rec)
}

// Exists reports whether device id is registered.
func (r *Registry) Exists(id string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.devices[id] != nil
}

// List returns copies of the devices matching sel (nil: all), by id.
func (r *Registry) List(sel *labels.Selector) []api.Device {
	r.mu.RLock()
	out := make([]api.Device, 0, len(r.devices))
	for _, e := range r.devices {
		if sel == nil || sel.Match(e.dev.Labels) {
			out = append(out, cloneDevice(&e.dev))
		}
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b api.Device) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// IDs returns the ids of the devices matching sel, sorted.
func (r *Registry) IDs(sel labels.Selector) []string {
	r.mu.RLock()
	var out []string
	for id, e := range r.devices {
		if sel.Match(e.dev.Labels) {
			out = append(out, id)
		}
	}
	r.mu.RUnlock()
	slices.Sort(out)
	return out
}

// Counts returns how many devices are registered and how many online.
func (r *Registry) Counts() (total, online int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, e := range r.devices {
		if e.dev.Online {
			online++
		}
	}
	return len(r.devices), online
}

// trustBehind counts the devices that reported a trust bundle version
// older than newest.
func (r *Registry) trustBehind(newest uint64) int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	n := 0
	for _, e := range r.devices {
		if v := e.dev.TrustVersion; v != 0 && v < newest {
			n++
		}
	}
	return n
}

func cloneDevice(d *api.Device) api.Device {
	c := *d
	c.Labels = maps.Clone(d.Labels)
	if d.Desired != nil {
		ds := *d.Desired
		ds.Models = slices.Clone(d.Desired.Models)
		c.Desired = &ds
	}
	if d.Reported != nil {
		c.Reported = make(map[string]*api.ModelStatus, len(d.Reported))
		for k, v := range d.Reported {
			vv := *v
			c.Reported[k] = &vv
		}
	}
	if d.LastRefusal != nil {
		r := *d.LastRefusal
		c.LastRefusal = &r
	}
	if d.Telemetry != nil {
		t := *d.Telemetry
		t.Models = slices.Clone(d.Telemetry.Models)
		c.Telemetry = &t
	}
	return c
}

// setDesired records the summary of a newly issued desired state; the one
// it replaces stays as the previous (MayFetch).
func (r *Registry) setDesired(id string, sum *api.DesiredSummary) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.devices[id]; e != nil {
		e.prevDesired = e.dev.Desired
		e.dev.Desired = sum
	}
}

// MayFetch tells whether device id is registered and, if so, whether it may
// download model@version: a version of its current or previous desired
// state, or one it reports running or having run before (a device asks only
// for those; anything else would make the control plane publish models for
// nothing, on one stolen credential).
func (r *Registry) MayFetch(id, model, version string) (registered, allowed bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e := r.devices[id]
	if e == nil {
		return false, false
	}
	for _, d := range []*api.DesiredSummary{e.dev.Desired, e.prevDesired} {
		if d == nil {
			continue
		}
		for _, m := range slices.Concat(d.Models, d.Shadows) { // a challenger is fetched too
			if m.Name == model && m.Version == version {
				return true, true
			}
		}
	}
	if st := e.dev.Reported[model]; st != nil && (st.ActiveVersion == version || st.PreviousVersion == version) {
		return true, true
	}
	return true, false
}

// update applies fn to a device under the lock and writes the device
// through when fn asks for it (persist) or when lastSeenPersistEvery has
// passed since the last write. For a device that is unknown or revoked it
// does nothing and returns the ingest drop reason.
//
// The device is encoded under the lock and written after it is released:
// lookups and other devices' updates do not wait for the store. Writes of
// one device are ordered by its persistMu, and an encoding older than the
// one on disk is not written.
func (r *Registry) update(id string, fn func(d *api.Device, now time.Time) (persist bool)) (drop string, err error) {
	drop, w, err := r.apply(id, fn)
	if drop != "" || err != nil || w == nil {
		return drop, err
	}
	_, err = r.writeDevices([]*deviceWrite{w})
	return "", err
}

// deviceWrite is one encoding of a device for the store, taken under
// Registry.mu by apply and written by writeDevices after mu is released.
type deviceWrite struct {
	id   string
	e    *deviceEntry
	b    []byte
	snap uint64    // the entry's snapshots count of this encoding
	at   time.Time // lastPersist this encoding set
	prev time.Time // lastPersist before it
}

// apply is update's part under the lock: fn applied in memory, and the
// encoding to write (nil when nothing needs writing).
func (r *Registry) apply(id string, fn func(d *api.Device, now time.Time) (persist bool)) (drop string, w *deviceWrite, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.devices[id]
	switch {
	case e == nil:
		return ingest.UnknownDevice, nil, nil
	case len(e.cred.Hash) == 0:
		// Revoked: an external broker may let a message through until
		// broker sync has reloaded it; it must not bring the device back.
		return ingest.Revoked, nil, nil
	}
	now := r.clock().UTC()
	persist := fn(&e.dev, now)
	if !persist && now.Sub(e.lastPersist) < lastSeenPersistEvery {
		return "", nil, nil
	}
	stored := e.dev
	stored.Online, stored.Desired = false, nil // not persisted: see loadRegistry
	b, err := json.Marshal(&stored)
	if err != nil {
		return "", nil, fmt.Errorf("persist device %s: %w", id, err)
	}
	e.snapshots++
	w = &deviceWrite{id: id, e: e, b: b, snap: e.snapshots, at: now, prev: e.lastPersist}
	e.lastPersist = now
	return "", w, nil
}

// maxDevicesPerWrite bounds the devices one store transaction writes
// (badger refuses transactions past a size; a device is ~1-2 KiB).
const maxDevicesPerWrite = 256

// writeDevices writes encodings taken by apply in one store transaction
// per maxDevicesPerWrite devices: the newest encoding of each device, and
// none that is older than the one on disk already. It holds the devices'
// persistMu (taken in id order) while it writes. On an error the devices
// it did not write are written again by their next update. It returns the
// transactions it committed.
func (r *Registry) writeDevices(ws []*deviceWrite) (txns int, err error) {
	newest := make(map[*deviceEntry]*deviceWrite, len(ws))
	for _, w := range ws {
		if cur := newest[w.e]; cur == nil || w.snap > cur.snap {
			newest[w.e] = w
		}
	}
	batch := make([]*deviceWrite, 0, len(newest))
	for _, w := range newest {
		batch = append(batch, w)
	}
	slices.SortFunc(batch, func(a, b *deviceWrite) int { return strings.Compare(a.id, b.id) })
	for part := range slices.Chunk(batch, maxDevicesPerWrite) {
		if perr := r.writePart(part); perr != nil {
			err = cmp.Or(err, perr)
			continue
		}
		txns++
	}
	return txns, err
}

func (r *Registry) writePart(part []*deviceWrite) error {
	for _, w := range part {
		w.e.persistMu.Lock()
	}
	defer func() {
		for _, w := range part {
			w.e.persistMu.Unlock()
		}
	}()
	err := r.kv.Update(func(tx *store.Tx) error {
		for _, w := range part {
			if w.e.written > w.snap {
				continue // a newer encoding is on disk already
			}
			if err := tx.Set(prefixDevices+w.id, w.b); err != nil {
				return err
			}
		}
		return nil
	}, false)
	if err != nil {
		r.mu.Lock()
		for _, w := range part {
			if w.e.lastPersist.Equal(w.at) {
				w.e.lastPersist = w.prev // the next update writes again
			}
		}
		r.mu.Unlock()
		if len(part) == 1 {
			return fmt.Errorf("persist device %s: %w", part[0].id, err)
		}
		return fmt.Errorf("persist %d devices: %w", len(part), err)
	}
	for _, w := range part {
		w.e.written = max(w.e.written, w.snap)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

// Site returns a device's site label and whether the device is registered
// with credentials: a revoked device has none, and shares with nobody.
func (r *Registry) Site(id string) (site string, ok bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e := r.devices[id]
	if e == nil || len(e.cred.Hash) == 0 {
		return "", false
	}
	return e.dev.Labels["site"], true
}

// Labels returns a device's labels (nil for an unknown device).
func (r *Registry) Labels(id string) map[string]string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if e := r.devices[id]; e != nil {
		return maps.Clone(e.dev.Labels)
	}
	return nil
}
