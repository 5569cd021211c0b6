package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/edgefleet/edgefleet/controlplane"
)

// maxResponse bounds an API answer the CLI reads.
const maxResponse = 64 << 20

// client talks to the control plane's REST API.
type client struct {
	base  string
	token string
	hc    *http.Client
}

// client builds an API client from the global flags and environment.
func (a *app) client() (*client, error) {
	u, err := url.Parse(a.api)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usagef("--api %q: want an http:// or https:// URL", a.api)
	}
	token, err := a.resolveToken()
	if err != nil {
		return nil, err
	}
	return &client{base: strings.TrimSuffix(a.api, "/"), token: token, hc: &http.Client{}}, nil
}

// resolveToken picks the token: --token, --token-file, $EDGEFLEET_TOKEN,
// $EDGEFLEET_TOKEN_FILE, in that order.
func (a *app) resolveToken() (string, error) {
	if a.token != "" && a.tokenFile != "" {
		return "", usagef("give --token or --token-file, not both")
	}
	token, file := a.token, a.tokenFile
	if token == "" && file == "" {
		token, file = a.getenv(EnvToken), a.getenv(EnvTokenFile)
	}
	if token == "" && file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("read token file: %w", err)
		}
		token = strings.TrimSpace(string(b))
		if token == "" {
			return "", fmt.Errorf("token file %s is empty", file)
		}
	}
	if token == "" {
		return "", errors.New("no API token: pass --token or --token-file, or set " + EnvToken + " (serve prints the token at its first start)")
	}
	return token, nil
}

// do sends a request and decodes a 2xx JSON answer into out (if non-nil).
// Other answers become an error carrying the API's message.
func (c *client) do(ctx context.Context, method, path string, body io.Reader, contentType string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("cannot reach the control plane at %s (is `edgefleet serve` running? set --api or %s): %w", c.base, EnvAPI, err)
		}
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e controlplane.ErrorResponse
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s (HTTP %d)", e.Error, resp.StatusCode)
		}
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(data))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

func (c *client) doJSON(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	return c.do(ctx, method, path, body, "application/json", out)
}
