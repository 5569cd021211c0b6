package controlplane

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/internal/store"
)

// Role is what an API token may do. Each role includes the ones before it.
type Role string

// The API roles.
const (
	// RoleViewer reads: every GET endpoint except the token list.
	RoleViewer Role = "viewer"
	// RoleOperator also deploys, uploads models and runs rollouts.
	RoleOperator Role = "operator"
	// RoleAdmin also manages devices, enrollments, credentials, tokens and keys.
	RoleAdmin Role = "admin"
)

func (r Role) rank() int {
	switch r {
	case RoleViewer:
		return 1
	case RoleOperator:
		return 2
	case RoleAdmin:
		return 3
	}
	return 0
}

// ParseRole checks a role name.
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if r.rank() == 0 {
		return "", newErr(ErrInvalid, "role %q: want viewer, operator or admin", s)
	}
	return r, nil
}

// Allows reports whether a token of role r may act where need is required.
func (r Role) Allows(need Role) bool { return r.rank() >= need.rank() && r.rank() > 0 }

// InitialTokenName names the admin token generated at the first start.
const InitialTokenName = "initial"

// Store layout of the tokens, in the "cp" namespace:
//
//	tokens/{id}       APIToken as JSON, with the sha256 of the secret
//	tokens_migrated   present once the first-start admin token became a record
const (
	prefixTokens      = "tokens/"
	keyTokensMigrated = "tokens_migrated"
)

// maxTokens bounds how many API tokens may exist.
const maxTokens = 1000

// validTokenName: 1..64 of letters, digits, '.', '_', '-', starting with a
// letter or digit.
var validTokenName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// APIToken describes an API token; the secret is never stored or listed.
type APIToken struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Role    Role      `json:"role"`
	Created time.Time `json:"created"`
	// CreatedBy is the name of the token that created it ("" for initial).
	CreatedBy string `json:"created_by,omitempty"`
}

// CreateTokenRequest is the body of POST /api/v1/tokens.
type CreateTokenRequest struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

// CreatedToken is the answer to a token creation: the secret is shown once.
type CreatedToken struct {
	APIToken
	Token string `json:"token"`
}

type tokenRecord struct {
	APIToken
	Hash []byte `json:"hash"`
}

// tokenStore holds the API tokens in memory (looked up by the sha256 of
// the presented secret) and writes them through to the store.
type tokenStore struct {
	kv    *store.KV
	clock func() time.Time

	mu     sync.RWMutex // guards byID and byHash
	byID   map[string]*tokenRecord
	byHash map[[sha256.Size]byte]*tokenRecord
}

// loadTokens reads the tokens; on the first run after the upgrade to
// roles, the first-start admin token (hash initialHash) becomes an admin
// token named "initial".
func loadTokens(kv *store.KV, initialHash []byte, clock func() time.Time) (*tokenStore, error) {
	ts := &tokenStore{kv: kv, clock: clock, byID: map[string]*tokenRecord{}, byHash: map[[sha256.Size]byte]*tokenRecord{}}
	err := kv.Scan(prefixTokens, func(key string, val []byte) error {
		var rec tokenRecord
		if err := json.Unmarshal(val, &rec); err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		if len(rec.Hash) != sha256.Size {
			return fmt.Errorf("decode %s: hash has %d bytes", key, len(rec.Hash))
		}
		ts.add(&rec)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load tokens: %w", err)
	}
	if _, err := kv.Get(keyTokensMigrated); errors.Is(err, store.ErrNotFound) {
		if len(initialHash) == sha256.Size {
			rec := &tokenRecord{APIToken: APIToken{ID: "initial", Name: InitialTokenName, Role: RoleAdmin, Created: clock().UTC()}, Hash: initialHash}
			if err := kv.SetJSON(prefixTokens+rec.ID, rec, true); err != nil {
				return nil, fmt.Errorf("load tokens: %w", err)
			}
			ts.add(rec)
		}
		if err := kv.SetSync(keyTokensMigrated, []byte("1")); err != nil {
			return nil, fmt.Errorf("load tokens: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("load tokens: %w", err)
	}
	return ts, nil
}

func (ts *tokenStore) add(rec *tokenRecord) {
	ts.byID[rec.ID] = rec
	ts.byHash[[sha256.Size]byte(rec.Hash)] = rec
}

// lookup returns the token whose secret is presented, or false. The map
// is keyed by the secret's sha256 (a lookup by hash reveals nothing about
// the secret); the final comparison is constant-time anyway.
func (ts *tokenStore) lookup(secret string) (APIToken, bool) {
	sum := sha256.Sum256([]byte(secret))
	ts.mu.RLock()
	rec := ts.byHash[sum]
	ts.mu.RUnlock()
	if rec == nil || subtle.ConstantTimeCompare(sum[:], rec.Hash) != 1 {
		return APIToken{}, false
	}
	return rec.APIToken, true
}

// create makes a token and returns it with its secret.
func (ts *tokenStore) create(name string, role Role, by string) (CreatedToken, error) {
	if !validTokenName.MatchString(name) {
		return CreatedToken{}, newErr(ErrInvalid, "token name %q: want 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	if role.rank() == 0 {
		return CreatedToken{}, newErr(ErrInvalid, "role %q: want viewer, operator or admin", role)
	}
	raw := make([]byte, 32)
	idRaw := make([]byte, 6)
	if _, err := rand.Read(raw); err != nil {
		return CreatedToken{}, fmt.Errorf("create token: %w", err)
	}
	if _, err := rand.Read(idRaw); err != nil {
		return CreatedToken{}, fmt.Errorf("create token: %w", err)
	}
	secret := TokenPrefix + hex.EncodeToString(raw)
	sum := sha256.Sum256([]byte(secret))
	rec := &tokenRecord{
		APIToken: APIToken{ID: "tok_" + hex.EncodeToString(idRaw), Name: name, Role: role, Created: ts.clock().UTC(), CreatedBy: by},
		Hash:     sum[:],
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.byID) >= maxTokens {
		return CreatedToken{}, newErr(ErrInvalid, "there are already %d tokens; revoke unused ones first", maxTokens)
	}
	for _, r := range ts.byID {
		if r.Name == name {
			return CreatedToken{}, newErr(ErrExists, "a token named %q already exists (id %s)", name, r.ID)
		}
	}
	if err := ts.kv.SetJSON(prefixTokens+rec.ID, rec, true); err != nil {
		return CreatedToken{}, fmt.Errorf("create token: %w", err)
	}
	ts.add(rec)
	return CreatedToken{APIToken: rec.APIToken, Token: secret}, nil
}

// list returns every token, by name.
func (ts *tokenStore) list() []APIToken {
	ts.mu.RLock()
	out := make([]APIToken, 0, len(ts.byID))
	for _, r := range ts.byID {
		out = append(out, r.APIToken)
	}
	ts.mu.RUnlock()
	slices.SortFunc(out, func(a, b APIToken) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// revoke deletes a token; it stops working at once. The last admin token
// cannot be revoked (nobody could manage tokens afterwards).
func (ts *tokenStore) revoke(id string) (APIToken, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	rec := ts.byID[id]
	if rec == nil {
		return APIToken{}, newErr(ErrNotFound, "token %q does not exist (edgefleet token list shows the ids)", id)
	}
	if rec.Role == RoleAdmin {
		admins := 0
		for _, r := range ts.byID {
			if r.Role == RoleAdmin {
				admins++
			}
		}
		if admins == 1 {
			return APIToken{}, newErr(ErrInvalid, "token %q is the last admin token; create another admin token before revoking it", id)
		}
	}
	if err := ts.kv.Update(func(tx *store.Tx) error { return tx.Delete(prefixTokens + id) }, true); err != nil {
		return APIToken{}, fmt.Errorf("revoke token: %w", err)
	}
	delete(ts.byID, id)
	delete(ts.byHash, [sha256.Size]byte(rec.Hash))
	return rec.APIToken, nil
}
