package testkit

import (
	"os"
	"os/exec"
	"testing"
)

// ChromiumFlags are the flags every test browser runs with: headless, no
// sandbox (tests run as root in CI), and nothing that reaches the network
// on its own (the test machines have none).
var ChromiumFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--no-default-browser-check", "--disable-dev-shm-usage",
}

// ChromiumBin finds Chromium for the browser tests, or skips the test when
// it is not installed (and fails it when CI is set: .ci/run installs it).
func ChromiumBin(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if bin, err := exec.LookPath(name); err == nil {
			return bin
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed, and CI must run the console's browser tests (.ci/run installs it)")
	}
	t.Skip("chromium is not installed (Debian package chromium): the console's browser test needs it")
	return ""
}
