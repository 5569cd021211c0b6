package httpapi

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/store"
)

// keyAdminToken holds the sha256 of the admin API token (never the token).
const keyAdminToken = "admin/token_sha256"

// ensureAdminToken returns the stored token hash, generating a token first
// when none exists; token is non-empty only when it was just generated.
func ensureAdminToken(kv *store.KV) (hash []byte, token string, err error) {
	hash, err = kv.Get(keyAdminToken)
	switch {
	case err == nil:
		if len(hash) != sha256.Size {
			return nil, "", fmt.Errorf("admin token: stored hash has %d bytes, want %d", len(hash), sha256.Size)
		}
		return hash, "", nil
	case !errors.Is(err, store.ErrNotFound):
		return nil, "", fmt.Errorf("admin token: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, "", fmt.Errorf("admin token: %w", err)
	}
	token = api.TokenPrefix + hex.EncodeToString(raw)
	sum := sha256.Sum256([]byte(token))
	if err := kv.SetSync(keyAdminToken, sum[:]); err != nil {
		return nil, "", fmt.Errorf("admin token: %w", err)
	}
	return sum[:], token, nil
}
