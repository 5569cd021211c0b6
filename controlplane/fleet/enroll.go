package fleet

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/labels"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// api.Enrollment token lifetimes.
const (
	prefixEnroll = "enroll/" // enroll/{sha256 hex of the token} → enrollRecord
)

// Errors of the enrollment exchange: an unknown token is api.ErrUnauthorized
// (401), a used or expired one api.ErrGone (410); the message says which.
var (
	ErrEnrollUnknown = &api.Error{Kind: api.ErrUnauthorized, Msg: "enrollment token unknown"}
	ErrEnrollUsed    = &api.Error{Kind: api.ErrGone, Msg: "enrollment token already used"}
	ErrEnrollExpired = &api.Error{Kind: api.ErrGone, Msg: "enrollment token expired"}
)

type enrollRecord struct {
	DeviceID  string            `json:"device_id"`
	Labels    map[string]string `json:"labels,omitempty"`
	Created   time.Time         `json:"created"`
	Expires   time.Time         `json:"expires"`
	CreatedBy string            `json:"created_by"`
	Used      time.Time         `json:"used,omitzero"`
}

// enrollStore keeps enrollment records; exchanges are serialised so a
// token is used at most once.
type enrollStore struct {
	kv    *store.KV
	clock func() time.Time
	mu    sync.Mutex // serialises exchange (check, register, mark used)
}

func enrollKey(token string) string {
	sum := sha256.Sum256([]byte(token))
	return prefixEnroll + hex.EncodeToString(sum[:])
}

// CreateEnrollment issues a one-time enrollment token for a device id; by
// names who asked (for the record).
func (f *Fleet) CreateEnrollment(req api.EnrollmentRequest, by string) (api.Enrollment, error) {
	if err := topics.ValidDeviceID(req.DeviceID); err != nil {
		return api.Enrollment{}, api.Errorf(api.ErrInvalid, "device_id: %v", err)
	}
	if err := labels.ValidLabels(req.Labels); err != nil {
		return api.Enrollment{}, api.Errorf(api.ErrInvalid, "labels: %v", err)
	}
	ttl := api.DefaultEnrollmentTTL
	if req.TTL != "" {
		var err error
		if ttl, err = time.ParseDuration(req.TTL); err != nil {
			return api.Enrollment{}, api.Errorf(api.ErrInvalid, "ttl %q: want a duration such as 1h or 30m", req.TTL)
		}
	}
	if ttl < api.MinEnrollmentTTL || ttl > api.MaxEnrollmentTTL {
		return api.Enrollment{}, api.Errorf(api.ErrInvalid, "ttl %v: want %v..%v", ttl, api.MinEnrollmentTTL, api.MaxEnrollmentTTL)
	}
	exists := f.reg.Exists(req.DeviceID)
	if exists && len(req.Labels) > 0 {
		return api.Enrollment{}, api.Errorf(api.ErrInvalid, "device %q exists; enrollment re-issues its credentials but cannot change its labels", req.DeviceID)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return api.Enrollment{}, fmt.Errorf("create enrollment: %w", err)
	}
	token := api.EnrollTokenPrefix + hex.EncodeToString(raw)
	now := f.opts.Clock().UTC()
	rec := enrollRecord{DeviceID: req.DeviceID, Labels: maps.Clone(req.Labels), Created: now, Expires: now.Add(ttl), CreatedBy: by}
	if err := f.opts.KV.SetJSON(enrollKey(token), &rec, true); err != nil {
		return api.Enrollment{}, fmt.Errorf("create enrollment: %w", err)
	}
	f.log.Info("enrollment issued", "device", req.DeviceID, "expires", rec.Expires, "by", by)
	return api.Enrollment{DeviceID: req.DeviceID, Token: token, Expires: rec.Expires, Reenroll: exists}, nil
}

// Enroll exchanges an enrollment token, once, for the device's credentials.
// A new device is registered; an existing one gets a new password and its
// current session is disconnected.
func (f *Fleet) Enroll(token string) (api.DeviceCredentials, error) {
	es := f.enrolls
	if !strings.HasPrefix(token, api.EnrollTokenPrefix) || len(token) != len(api.EnrollTokenPrefix)+64 {
		return api.DeviceCredentials{}, fmt.Errorf("enroll: %w: not an enrollment token (want %s followed by 64 hex digits)", ErrEnrollUnknown, api.EnrollTokenPrefix)
	}
	key := enrollKey(token)
	es.mu.Lock()
	defer es.mu.Unlock()
	var rec enrollRecord
	if err := f.opts.KV.GetJSON(key, &rec); errors.Is(err, store.ErrNotFound) {
		return api.DeviceCredentials{}, fmt.Errorf("enroll: %w: ask the operator for a new one (edgefleet device enroll)", ErrEnrollUnknown)
	} else if err != nil {
		return api.DeviceCredentials{}, fmt.Errorf("enroll: %w", err)
	}
	now := es.clock().UTC()
	switch {
	case !rec.Used.IsZero():
		return api.DeviceCredentials{}, fmt.Errorf("enroll: %w (at %s) by device %s; enrollment tokens work once: ask the operator for a new one", ErrEnrollUsed, rec.Used.Format(time.RFC3339), rec.DeviceID)
	case !now.Before(rec.Expires):
		return api.DeviceCredentials{}, fmt.Errorf("enroll: %w at %s; ask the operator for a new one", ErrEnrollExpired, rec.Expires.Format(time.RFC3339))
	}
	var creds api.DeviceCredentials
	var err error
	if f.reg.Exists(rec.DeviceID) {
		var pw string
		if pw, err = f.reg.setPassword(rec.DeviceID); err == nil {
			f.disconnect(rec.DeviceID)
			creds = f.credentials(rec.DeviceID, pw)
		}
	} else {
		creds, err = f.Register(rec.DeviceID, rec.Labels)
	}
	if err != nil {
		return api.DeviceCredentials{}, fmt.Errorf("enroll %s: %w", rec.DeviceID, err)
	}
	rec.Used = now
	if err := f.opts.KV.SetJSON(key, &rec, true); err != nil {
		return api.DeviceCredentials{}, fmt.Errorf("enroll: %w", err)
	}
	f.log.Info("device enrolled", "device", rec.DeviceID)
	return creds, nil
}
