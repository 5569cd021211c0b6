package cli

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/edgefleet/edgefleet/controlplane/client"
)

// client builds an API client from the global flags and environment.
func (a *app) client() (*client.Client, error) {
	token, err := a.resolveToken()
	if err != nil {
		return nil, err
	}
	c, err := client.New(a.api, client.Options{Token: token})
	if err != nil {
		return nil, usagef("--api %q: want an http:// or https:// URL", a.api)
	}
	return c, nil
}

// hint adds what to check when the control plane could not be reached.
func hint(err error, base string) error {
	if errors.Is(err, client.ErrUnreachable) {
		return fmt.Errorf("%w (is `edgefleet serve` running at %s? set --api or %s)", err, base, EnvAPI)
	}
	return err
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
