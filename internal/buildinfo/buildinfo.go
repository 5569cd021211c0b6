// Package buildinfo is the version and commit a binary was built from:
// stamped by the Makefile (-ldflags -X), else read from the Go build's own
// VCS information, else "devel". Imported by agent/cmd/edgefleet-agent and
// controlplane/cli.
package buildinfo

import (
	"runtime/debug"
	"strings"
)

// Set at link time by make build, make cross and make dist:
//
//	-X github.com/edgefleet/edgefleet/internal/buildinfo.version=v1.2.0
//	-X github.com/edgefleet/edgefleet/internal/buildinfo.commit=<sha>
//
// They are never written at run time.
var (
	version string
	commit  string
)

// Version is the release the binary was built from (git describe), or
// "devel" for a plain go build.
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// Commit is the full commit hash the binary was built from, with "+dirty"
// when the tree had changes, or "" when unknown.
func Commit() string {
	if commit != "" {
		return commit
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev string
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev != "" && dirty && !strings.HasSuffix(rev, "+dirty") {
		rev += "+dirty"
	}
	return rev
}

// String is "VERSION (commit COMMIT)", or just the version when the commit
// is unknown: what `version` commands print.
func String() string {
	if c := Commit(); c != "" {
		short := c
		if len(short) > 12 && !strings.HasSuffix(short, "+dirty") {
			short = short[:12]
		} else if len(short) > 18 {
			short = short[:12] + "+dirty"
		}
		return Version() + " (commit " + short + ")"
	}
	return Version()
}
