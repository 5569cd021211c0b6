package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgefleet/edgefleet/internal/atomicfile"
	"github.com/edgefleet/edgefleet/internal/signing"
)

// Sentinel errors of Enroll.
var (
	// ErrEnrollRefused: the control plane refused the enrollment token
	// (unknown, already used or expired); ask the operator for a new one.
	ErrEnrollRefused = errors.New("enrollment refused")
)

// maxEnrollAnswer bounds the control plane's enrollment answer.
const maxEnrollAnswer = 64 << 10

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

// enrollAnswer is the control plane's DeviceCredentials (the agent does not
// import the control plane).
type enrollAnswer struct {
	ID            string `json:"id"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	BrokerURL     string `json:"broker_url"`
	TopicPrefix   string `json:"topic_prefix"`
	RootPublicKey string `json:"root_public_key"`
}

// Enroll exchanges a one-time enrollment token for the device's
// credentials and provisioning bundle, and returns the agent config built
// from them. It does not write anything; WriteConfig does.
func Enroll(ctx context.Context, o EnrollOptions) (*Config, error) {
	u, err := url.Parse(o.ControlPlane)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("enroll: control plane %q: want an http:// or https:// URL", o.ControlPlane)
	}
	if o.Token == "" {
		return nil, errors.New("enroll: the enrollment token is empty (edgefleet device enroll prints one)")
	}
	if o.DataDir == "" {
		return nil, errors.New("enroll: DataDir is required")
	}
	hc := o.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	body, err := json.Marshal(map[string]string{"token": strings.TrimSpace(o.Token)})
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(o.ControlPlane, "/")+"/api/v1/enroll", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("enroll: cannot reach the control plane: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxEnrollAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("enroll: read answer: %w", err)
	}
	if len(data) > maxEnrollAnswer {
		return nil, fmt.Errorf("enroll: answer larger than %d bytes", maxEnrollAnswer)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusGone, http.StatusTooManyRequests:
			return nil, fmt.Errorf("enroll: %w: %s (HTTP %d)", ErrEnrollRefused, msg, resp.StatusCode)
		}
		return nil, fmt.Errorf("enroll: HTTP %d: %s", resp.StatusCode, msg)
	}
	var a enrollAnswer
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&a); err != nil {
		return nil, fmt.Errorf("enroll: decode answer: %w", err)
	}
	if _, err := signing.ParsePublicKeyPEM([]byte(a.RootPublicKey)); err != nil {
		return nil, fmt.Errorf("enroll: the answer's root public key: %w", err)
	}
	cfg := &Config{
		DeviceID:        a.ID,
		BrokerURL:       a.BrokerURL,
		Username:        a.Username,
		Password:        a.Password,
		RootPublicKey:   a.RootPublicKey,
		DataDir:         o.DataDir,
		InferenceListen: o.InferenceListen,
		TopicPrefix:     a.TopicPrefix,
		TLSCAFile:       o.TLSCAFile,
		TLSCertFile:     o.TLSCertFile,
		TLSKeyFile:      o.TLSKeyFile,
	}
	if _, err := cfg.Options(); err != nil {
		return nil, fmt.Errorf("enroll: the provisioning answer is incomplete: %w", err)
	}
	return cfg, nil
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
