package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/internal/atomicfile"
	"github.com/edgefleet/edgefleet/internal/signing"
)

// Sentinel errors of Enroll.
var (
	// ErrEnrollRefused: the control plane refused the enrollment token
	// (unknown, already used or expired); ask the operator for a new one.
	ErrEnrollRefused = errors.New("enrollment refused")
)

// EnrollOptions configure Enroll.
type EnrollOptions struct {
	// ControlPlane is the control plane's API base URL (http(s)://host:port).
	ControlPlane string
	// Token is the one-time enrollment token (`edgefleet device enroll`).
	Token string
	// DataDir and InferenceListen go into the written config.
	DataDir         string
	InferenceListen string
	// TLSCAFile, TLSCertFile and TLSKeyFile go into the config's tls_*
	// keys (a TLS broker's CA; this device's client certificate).
	TLSCAFile, TLSCertFile, TLSKeyFile string
	// HTTPClient is used for the request; nil means a client with a 30 s timeout.
	HTTPClient *http.Client
}

// Enroll exchanges a one-time enrollment token for the device's
// credentials and provisioning bundle, and returns the agent config built
// from them. It does not write anything; WriteConfig does.
func Enroll(ctx context.Context, o EnrollOptions) (*Config, error) {
	if o.Token == "" {
		return nil, errors.New("enroll: the enrollment token is empty (edgefleet device enroll prints one)")
	}
	if o.DataDir == "" {
		return nil, errors.New("enroll: DataDir is required")
	}
	// Every local input is checked before the token is spent: a typo in a
	// certificate path must not cost the operator a new token.
	local := Config{TLSCAFile: o.TLSCAFile, TLSCertFile: o.TLSCertFile, TLSKeyFile: o.TLSKeyFile}
	if _, err := local.tlsConfig(); err != nil {
		return nil, fmt.Errorf("enroll: %w (the enrollment token was not used)", err)
	}
	hc := o.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	c, err := client.New(o.ControlPlane, client.Options{HTTP: hc})
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	creds, err := c.Enroll(ctx, strings.TrimSpace(o.Token))
	var se *client.StatusError
	switch {
	case errors.As(err, &se) && (se.Status == http.StatusUnauthorized || se.Status == http.StatusGone || se.Status == http.StatusTooManyRequests):
		return nil, fmt.Errorf("enroll: %w: %s (HTTP %d)", ErrEnrollRefused, se.Message, se.Status)
	case err != nil:
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if _, err := signing.ParsePublicKeyPEM([]byte(creds.RootPublicKey)); err != nil {
		return nil, fmt.Errorf("enroll: the answer's root public key: %w", err)
	}
	cfg := ConfigFor(creds, o.DataDir, o.InferenceListen)
	cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile = o.TLSCAFile, o.TLSCertFile, o.TLSKeyFile
	if _, err := cfg.Options(); err != nil {
		return nil, fmt.Errorf("enroll: the provisioning answer is incomplete: %w", err)
	}
	return cfg, nil
}

// ConfigFor is the config of a device provisioned with creds (from a
// registration or an enrollment), its data directory and local inference
// address; every other key keeps its default.
func ConfigFor(creds api.DeviceCredentials, dataDir, inferenceListen string) *Config {
	return &Config{
		DeviceID:        creds.ID,
		BrokerURL:       creds.BrokerURL,
		Username:        creds.Username,
		Password:        creds.Password,
		RootPublicKey:   creds.RootPublicKey,
		DataDir:         dataDir,
		InferenceListen: inferenceListen,
		TopicPrefix:     creds.TopicPrefix,
	}
}

// WriteConfig writes cfg as YAML to path with mode 0600 (it holds the
// password), atomically; it refuses to replace an existing file unless
// overwrite is set.
func WriteConfig(path string, cfg *Config, overwrite bool) error {
	if !overwrite {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("write config: %s exists; refusing to replace it (pass --force)", path)
		}
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}
