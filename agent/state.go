package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Keys of the agent's persisted state, inside its store namespace.
const (
	keyTrust      = "trust"      // newest accepted trust bundle envelope
	keyGeneration = "generation" // highest accepted desired-state generation
	keyDesired    = "desired"    // the desired-state envelope of that generation
	keySeq        = "seq"        // reserved upper bound of report sequence numbers
	keySlotPrefix = "slot/"      // slot/<model name> → slotState JSON
)

// Phase is where an update of one model stands. Every phase is persisted
// before the agent acts on it, so a restart resumes it. It is the contract
// other packages use: ModelStatus.Phase and the phase a PhaseHook is given.
type Phase string

// The update phases, in the order an update passes them.
const (
	PhaseManifest    Phase = "manifest"    // waiting for the signed manifest
	PhaseDownloading Phase = "downloading" // fetching chunks into <sha>.part
	PhaseVerifying   Phase = "verifying"   // every chunk checked: size, sync, rename to <sha>.onnx
	PhaseStaging     Phase = "staging"     // load, test vectors, warm, then commit
)

// Phases returns every update phase in the order an update passes them.
// The slice is the caller's to keep or change.
func Phases() []Phase {
	return []Phase{PhaseManifest, PhaseDownloading, PhaseVerifying, PhaseStaging}
}

// HookPhases returns the phases a PhaseHook is called for, in order: every
// phase but PhaseManifest, which an update enters as its desired state is
// applied. These are the phases fleet-sim can hold an agent at. The slice is
// the caller's.
func HookPhases() []Phase {
	return []Phase{PhaseDownloading, PhaseVerifying, PhaseStaging}
}

// modelRef names one version on disk together with its signed manifest.
type modelRef struct {
	Version  string `json:"version"`
	SHA256   string `json:"sha256"`             // hex of the model bytes
	Manifest []byte `json:"manifest,omitempty"` // signed envelope, proto bytes
}

// is reports whether r (possibly nil) is the version o names: the same
// version and the same bytes.
func (r *modelRef) is(o modelRef) bool {
	return r != nil && r.Version == o.Version && r.SHA256 == o.SHA256
}

type target struct {
	modelRef
	Generation uint64 `json:"generation"`
	Phase      Phase  `json:"phase"`
	// Attempts counts staging attempts across restarts (crash-loop cap).
	Attempts int `json:"attempts"`
	// Rollback is set when the target is the previous version reactivated
	// from disk.
	Rollback bool `json:"rollback,omitempty"`
}

type failure struct {
	Version    string `json:"version"`
	SHA256     string `json:"sha256"`
	Generation uint64 `json:"generation"`
	Reason     string `json:"reason"`
	// RolledBack is set when the version had been serving (on trial) and
	// the agent returned to the previous one.
	RolledBack bool `json:"rolled_back,omitempty"`
	// Transient is set when the update failed on the way (chunks corrupted
	// in transit, every retry used up), not on what was signed: a restarted
	// agent tries the same generation again.
	Transient bool `json:"transient,omitempty"`
}

// trial marks the active version as serving on probation: committed to
// disk, but the agent returns to the previous version by itself if it
// misbehaves before the health period ends.
type trial struct {
	// Since is when the period (re)started, in unix nanoseconds; a restart
	// starts it again.
	Since      int64  `json:"since"`
	Generation uint64 `json:"generation"`
	// Starts counts how often the trial began, across restarts.
	Starts int `json:"starts"`
}

// slotState is the persisted state of one model name: the committed
// version, the one before it (kept on disk for rollback) and the update in
// progress, if any.
type slotState struct {
	Active      *modelRef `json:"active,omitempty"`
	Previous    *modelRef `json:"previous,omitempty"`
	Target      *target   `json:"target,omitempty"`
	Trial       *trial    `json:"trial,omitempty"`
	LastFailure *failure  `json:"last_failure,omitempty"`
}

func slotKey(name string) string { return keySlotPrefix + name }

// clone returns a copy of st that shares nothing a transition changes: the
// next state is built on a clone, so the current one stays what is on disk
// until the write succeeded. (Manifest bytes are shared: never changed in
// place.)
func (st slotState) clone() slotState {
	c := st
	c.Active = clonePtr(st.Active)
	c.Previous = clonePtr(st.Previous)
	c.Target = clonePtr(st.Target)
	c.Trial = clonePtr(st.Trial)
	c.LastFailure = clonePtr(st.LastFailure)
	return c
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

func (a *Agent) loadSlots() (map[string]*slotState, error) {
	out := map[string]*slotState{}
	err := a.kv.Scan(keySlotPrefix, func(key string, _ []byte) error {
		name := strings.TrimPrefix(key, keySlotPrefix)
		st := &slotState{}
		if err := a.kv.GetJSON(key, st); err != nil {
			return fmt.Errorf("slot %s: %w", name, err)
		}
		out[name] = st
		return nil
	})
	return out, err
}

func (a *Agent) loadGeneration() (uint64, []byte, error) {
	b, err := a.kv.Get(keyGeneration)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, err
	}
	if len(b) != 8 {
		return 0, nil, fmt.Errorf("stored generation has %d bytes, want 8", len(b))
	}
	d, err := a.kv.Get(keyDesired)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return 0, nil, err
	}
	return binary.BigEndian.Uint64(b), d, nil
}

// saveGeneration records an accepted desired state atomically with its
// generation, synced: a replay after a crash is still refused.
func (a *Agent) saveGeneration(gen uint64, env []byte) error {
	return a.kv.Update(func(tx *store.Tx) error {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], gen)
		if err := tx.Set(keyGeneration, b[:]); err != nil {
			return err
		}
		return tx.Set(keyDesired, env)
	}, true)
}

func decodeEnvelope(b []byte) (*efpb.Envelope, error) {
	env := &efpb.Envelope{}
	if err := proto.Unmarshal(b, env); err != nil {
		return nil, fmt.Errorf("decode envelope: %w", err)
	}
	return env, nil
}

// reserveSeq hands out report sequence numbers that keep increasing across
// restarts. Blocks of seqBlock numbers are reserved on disk, so a crash
// skips numbers but never repeats one.
const seqBlock = 1024

// ReportSeq is the sequence number of the newest status event or telemetry
// report the agent made (they share one sequence).
func (a *Agent) ReportSeq() uint64 {
	a.statusMu.Lock()
	defer a.statusMu.Unlock()
	return a.seq
}

func (a *Agent) nextSeq() uint64 {
	a.statusMu.Lock()
	defer a.statusMu.Unlock()
	a.seq++
	if a.seq >= a.seqLimit {
		a.seqLimit = a.seq + seqBlock
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], a.seqLimit)
		if err := a.kv.SetSync(keySeq, b[:]); err != nil {
			a.log.Warn("persist report sequence", "err", err)
		}
	}
	return a.seq
}

func (a *Agent) restoreSeq() error {
	b, err := a.kv.Get(keySeq)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(b) != 8 {
		return fmt.Errorf("stored seq has %d bytes, want 8", len(b))
	}
	a.seq = binary.BigEndian.Uint64(b)
	a.seqLimit = a.seq
	return nil
}
