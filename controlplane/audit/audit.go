// Package audit is the control plane's append-only record of every operator
// action and every automatic decision, with the figures behind it. Imported
// by controlplane, controlplane/console, controlplane/httpapi,
// controlplane/monitor, controlplane/retrain and controlplane/rollout.
package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/internal/store"
)

// Entry is one audited event.
type Entry struct {
	// Seq orders entries; assigned by Record.
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Actor is who acted: a token's name, "system" for automatic
	// decisions, or a device id.
	Actor string `json:"actor"`
	// Action names what was done, e.g. "model.upload", "deploy",
	// "rollout.pause", "rollout.gate_breached".
	Action string `json:"action"`
	// Target is what it was done to, e.g. "fraud@2.0.0" or a rollout id.
	Target string `json:"target,omitempty"`
	// Result is "ok" or the error a user saw.
	Result string `json:"result"`
	// Details carries the figures behind a decision.
	Details map[string]any `json:"details,omitempty"`
}

// Query selects entries; zero fields select everything.
type Query struct {
	Since  time.Time
	Action string // exact action, or a prefix ending in "." ("rollout.")
	Target string
	Limit  int // newest Limit entries; 0 means 1000
}

// Log appends entries to a store namespace.
type Log struct {
	kv    *store.KV
	clock func() time.Time

	mu  sync.Mutex // guards seq and serialises appends
	seq uint64
}

const keyPrefix = "e/"

// Open returns the log kept in kv (its own namespace) and recovers the last
// sequence number. clock nil means time.Now.
func Open(kv *store.KV, clock func() time.Time) (*Log, error) {
	if clock == nil {
		clock = time.Now
	}
	l := &Log{kv: kv, clock: clock}
	err := kv.Scan(keyPrefix, func(key string, _ []byte) error {
		n, err := strconv.ParseUint(key[len(keyPrefix):], 16, 64)
		if err == nil && n > l.seq {
			l.seq = n
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: open: %w", err)
	}
	return l, nil
}

func key(seq uint64) string { return fmt.Sprintf("%s%016x", keyPrefix, seq) }

// Record appends e, stamping its sequence number and (if zero) its time.
// The write is synced: an audited action is never lost to a crash.
func (l *Log) Record(e Entry) (Entry, error) {
	if e.Action == "" {
		return e, errors.New("audit: entry without an action")
	}
	if e.Result == "" {
		e.Result = "ok"
	}
	if e.Time.IsZero() {
		e.Time = l.clock()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e.Seq = l.seq + 1
	b, err := json.Marshal(e)
	if err != nil {
		return e, fmt.Errorf("audit: encode: %w", err)
	}
	if err := l.kv.SetSync(key(e.Seq), b); err != nil {
		return e, fmt.Errorf("audit: record: %w", err)
	}
	l.seq = e.Seq
	return e, nil
}

// Seq is the sequence number of the newest entry (0 for an empty log): a
// reader that cached an answer may keep it while Seq does not move.
func (l *Log) Seq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

// List returns the matching entries, oldest first (at most the newest Limit).
func (l *Log) List(q Query) ([]Entry, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = 1000
	}
	var out []Entry
	err := l.kv.Scan(keyPrefix, func(_ string, val []byte) error {
		var e Entry
		if err := json.Unmarshal(val, &e); err != nil {
			return fmt.Errorf("decode entry: %w", err)
		}
		if !q.Since.IsZero() && e.Time.Before(q.Since) {
			return nil
		}
		if q.Target != "" && e.Target != q.Target {
			return nil
		}
		if q.Action != "" && !matchAction(q.Action, e.Action) {
			return nil
		}
		out = append(out, e)
		if len(out) > limit {
			out = out[1:]
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: list: %w", err)
	}
	return out, nil
}

func matchAction(q, action string) bool {
	if q[len(q)-1] == '.' {
		return len(action) >= len(q) && action[:len(q)] == q
	}
	return q == action
}
