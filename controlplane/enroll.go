package controlplane

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/http"
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
	prefixEnroll  = "enroll/" // enroll/{sha256 hex of the token} → enrollRecord
	maxEnrollBody = 64 << 10
)

// Sentinel errors of the enrollment exchange (all answered 401 or 410, with
// a message saying which).
var (
	ErrEnrollUnknown = errors.New("enrollment token unknown")
	ErrEnrollUsed    = errors.New("enrollment token already used")
	ErrEnrollExpired = errors.New("enrollment token expired")
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
func (s *Server) CreateEnrollment(req api.EnrollmentRequest, by string) (api.Enrollment, error) {
	if !s.isReady() {
		return api.Enrollment{}, errNotReady
	}
	if err := topics.ValidDeviceID(req.DeviceID); err != nil {
		return api.Enrollment{}, newErr(api.ErrInvalid, "device_id: %v", err)
	}
	if err := labels.ValidLabels(req.Labels); err != nil {
		return api.Enrollment{}, newErr(api.ErrInvalid, "labels: %v", err)
	}
	ttl := api.DefaultEnrollmentTTL
	if req.TTL != "" {
		var err error
		if ttl, err = time.ParseDuration(req.TTL); err != nil {
			return api.Enrollment{}, newErr(api.ErrInvalid, "ttl %q: want a duration such as 1h or 30m", req.TTL)
		}
	}
	if ttl < api.MinEnrollmentTTL || ttl > api.MaxEnrollmentTTL {
		return api.Enrollment{}, newErr(api.ErrInvalid, "ttl %v: want %v..%v", ttl, api.MinEnrollmentTTL, api.MaxEnrollmentTTL)
	}
	exists := s.reg.exists(req.DeviceID)
	if exists && len(req.Labels) > 0 {
		return api.Enrollment{}, newErr(api.ErrInvalid, "device %q exists; enrollment re-issues its credentials but cannot change its labels", req.DeviceID)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return api.Enrollment{}, fmt.Errorf("create enrollment: %w", err)
	}
	token := api.EnrollTokenPrefix + hex.EncodeToString(raw)
	now := s.clock().UTC()
	rec := enrollRecord{DeviceID: req.DeviceID, Labels: maps.Clone(req.Labels), Created: now, Expires: now.Add(ttl), CreatedBy: by}
	if err := s.kv.SetJSON(enrollKey(token), &rec, true); err != nil {
		return api.Enrollment{}, fmt.Errorf("create enrollment: %w", err)
	}
	s.log.Info("enrollment issued", "device", req.DeviceID, "expires", rec.Expires, "by", by)
	return api.Enrollment{DeviceID: req.DeviceID, Token: token, Expires: rec.Expires, Reenroll: exists}, nil
}

// Enroll exchanges an enrollment token, once, for the device's credentials.
// A new device is registered; an existing one gets a new password and its
// current session is disconnected.
func (s *Server) Enroll(token string) (api.DeviceCredentials, error) {
	if !s.isReady() {
		return api.DeviceCredentials{}, errNotReady
	}
	es := s.security.enrolls
	if !strings.HasPrefix(token, api.EnrollTokenPrefix) || len(token) != len(api.EnrollTokenPrefix)+64 {
		return api.DeviceCredentials{}, fmt.Errorf("enroll: %w: not an enrollment token (want %s followed by 64 hex digits)", ErrEnrollUnknown, api.EnrollTokenPrefix)
	}
	key := enrollKey(token)
	es.mu.Lock()
	defer es.mu.Unlock()
	var rec enrollRecord
	if err := s.kv.GetJSON(key, &rec); errors.Is(err, store.ErrNotFound) {
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
	if s.reg.exists(rec.DeviceID) {
		var pw string
		if pw, err = s.reg.setPassword(rec.DeviceID); err == nil {
			s.disconnectDevice(rec.DeviceID)
			creds = s.credentials(rec.DeviceID, pw)
		}
	} else {
		creds, err = s.RegisterDevice(rec.DeviceID, rec.Labels)
	}
	if err != nil {
		return api.DeviceCredentials{}, fmt.Errorf("enroll %s: %w", rec.DeviceID, err)
	}
	rec.Used = now
	if err := s.kv.SetJSON(key, &rec, true); err != nil {
		return api.DeviceCredentials{}, fmt.Errorf("enroll: %w", err)
	}
	s.log.Info("device enrolled", "device", rec.DeviceID)
	return creds, nil
}

func (s *Server) credentials(id, password string) api.DeviceCredentials {
	return api.DeviceCredentials{
		ID:            id,
		Username:      id,
		Password:      password,
		BrokerURL:     s.BrokerURL(),
		TopicPrefix:   s.scheme.Prefix,
		RootPublicKey: s.keys.RootPEM,
	}
}

func (s *Server) handleCreateEnrollment(w http.ResponseWriter, r *http.Request) {
	var req api.EnrollmentRequest
	if err := decodeJSON(w, r, maxEnrollBody, &req); err != nil {
		writeError(w, err)
		return
	}
	e, err := s.CreateEnrollment(req, Actor(r.Context()))
	if err != nil {
		s.logIfInternal(err, "create enrollment")
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, e)
}

// handleEnroll is the agent's exchange; it needs no API token, so its
// failures count against the same per-address limit as bad API tokens.
func (s *Server) handleEnroll(w http.ResponseWriter, r *http.Request) {
	remote := remoteHost(r)
	if wait := s.security.limiter.blocked(remote); wait > 0 {
		tooManyFailures(w, wait)
		return
	}
	var req api.EnrollRequest
	if err := decodeJSON(w, r, maxEnrollBody, &req); err != nil {
		s.security.limiter.fail(remote)
		writeError(w, err)
		return
	}
	creds, err := s.Enroll(strings.TrimSpace(req.Token))
	var msg string
	if err != nil {
		msg = strings.TrimPrefix(err.Error(), "enroll: ")
	}
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, creds)
	case errors.Is(err, ErrEnrollUnknown):
		s.security.limiter.fail(remote)
		writeJSON(w, http.StatusUnauthorized, api.ErrorResponse{Error: msg})
	case errors.Is(err, ErrEnrollUsed), errors.Is(err, ErrEnrollExpired):
		s.security.limiter.fail(remote)
		writeJSON(w, http.StatusGone, api.ErrorResponse{Error: msg})
	default:
		s.logIfInternal(err, "enroll")
		writeError(w, err)
	}
}
