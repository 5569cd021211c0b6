package httpapi

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

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/store"
)

// Store layout of the tokens, in the API's store namespace:
//
//	tokens/{id}       api.APIToken as JSON, with the sha256 of the secret
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

type tokenRecord struct {
	api.APIToken
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
			rec := &tokenRecord{APIToken: api.APIToken{ID: "initial", Name: api.InitialTokenName, Role: api.RoleAdmin, Created: clock().UTC()}, Hash: initialHash}
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
func (ts *tokenStore) lookup(secret string) (api.APIToken, bool) {
	sum := sha256.Sum256([]byte(secret))
	ts.mu.RLock()
	rec := ts.byHash[sum]
	ts.mu.RUnlock()
	if rec == nil || subtle.ConstantTimeCompare(sum[:], rec.Hash) != 1 {
		return api.APIToken{}, false
	}
	return rec.APIToken, true
}

// get returns the token with id, or false.
func (ts *tokenStore) get(id string) (api.APIToken, bool) {
	ts.mu.RLock()
	defer ts.mu.RUnlock()
	rec := ts.byID[id]
	if rec == nil {
		return api.APIToken{}, false
	}
	return rec.APIToken, true
}

// create makes a token and returns it with its secret.
func (ts *tokenStore) create(name string, role api.Role, by string) (api.CreatedToken, error) {
	if !validTokenName.MatchString(name) {
		return api.CreatedToken{}, api.Errorf(api.ErrInvalid, "token name %q: want 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	if !role.Valid() {
		return api.CreatedToken{}, api.Errorf(api.ErrInvalid, "role %q: want viewer, operator, admin or broker", role)
	}
	raw := make([]byte, 32)
	idRaw := make([]byte, 6)
	if _, err := rand.Read(raw); err != nil {
		return api.CreatedToken{}, fmt.Errorf("create token: %w", err)
	}
	if _, err := rand.Read(idRaw); err != nil {
		return api.CreatedToken{}, fmt.Errorf("create token: %w", err)
	}
	secret := api.TokenPrefix + hex.EncodeToString(raw)
	sum := sha256.Sum256([]byte(secret))
	rec := &tokenRecord{
		APIToken: api.APIToken{ID: "tok_" + hex.EncodeToString(idRaw), Name: name, Role: role, Created: ts.clock().UTC(), CreatedBy: by},
		Hash:     sum[:],
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.byID) >= maxTokens {
		return api.CreatedToken{}, api.Errorf(api.ErrInvalid, "there are already %d tokens; revoke unused ones first", maxTokens)
	}
	for _, r := range ts.byID {
		if r.Name == name {
			return api.CreatedToken{}, api.Errorf(api.ErrExists, "a token named %q already exists (id %s)", name, r.ID)
		}
	}
	if err := ts.kv.SetJSON(prefixTokens+rec.ID, rec, true); err != nil {
		return api.CreatedToken{}, fmt.Errorf("create token: %w", err)
	}
	ts.add(rec)
	return api.CreatedToken{APIToken: rec.APIToken, Token: secret}, nil
}

// list returns every token, by name.
func (ts *tokenStore) list() []api.APIToken {
	ts.mu.RLock()
	out := make([]api.APIToken, 0, len(ts.byID))
	for _, r := range ts.byID {
		out = append(out, r.APIToken)
	}
	ts.mu.RUnlock()
	slices.SortFunc(out, func(a, b api.APIToken) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// revoke deletes a token; it stops working at once. The last admin token
// cannot be revoked (nobody could manage tokens afterwards).
func (ts *tokenStore) revoke(id string) (api.APIToken, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	rec := ts.byID[id]
	if rec == nil {
		return api.APIToken{}, api.Errorf(api.ErrNotFound, "token %q does not exist (edgefleet token list shows the ids)", id)
	}
	if rec.Role == api.RoleAdmin {
		admins := 0
		for _, r := range ts.byID {
			if r.Role == api.RoleAdmin {
				admins++
			}
		}
		if admins == 1 {
			return api.APIToken{}, api.Errorf(api.ErrInvalid, "token %q is the last admin token; create another admin token before revoking it", id)
		}
	}
	if err := ts.kv.Update(func(tx *store.Tx) error { return tx.Delete(prefixTokens + id) }, true); err != nil {
		return api.APIToken{}, fmt.Errorf("revoke token: %w", err)
	}
	delete(ts.byID, id)
	delete(ts.byHash, [sha256.Size]byte(rec.Hash))
	return rec.APIToken, nil
}
