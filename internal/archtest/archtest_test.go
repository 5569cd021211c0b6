package archtest

import (
	"bytes"
	"encoding/json"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const module = "github.com/edgefleet/edgefleet"

// pkg is what go list says of one package.
type pkg struct {
	ImportPath   string
	Name         string
	Dir          string
	GoFiles      []string
	Imports      []string
	TestImports  []string
	XTestImports []string
	Deps         []string
}

func list(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "-deps=false", module+"/...")
	out, err := cmd.Output()
	require.NoError(t, err, "go list")
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p pkg
		require.NoError(t, dec.Decode(&p))
		pkgs = append(pkgs, p)
	}
	require.NotEmpty(t, pkgs)
	return pkgs
}

func rel(path string) string { return strings.TrimPrefix(strings.TrimPrefix(path, module), "/") }

// importedBy finds "Imported by A, B and C." in a package doc: the list,
// with parenthetical remarks dropped, as module-relative paths (a trailing
// "/..." covers a subtree), or the words "tests only" or "nothing yet".
var importedBy = regexp.MustCompile(`(?s)Imported by (.+?)\.(?:\s|$)`)

var paren = regexp.MustCompile(`\([^)]*\)`)

func parseImportedBy(doc string) ([]string, bool) {
	// One line, and "/..." kept apart from the sentence's final period.
	doc = strings.ReplaceAll(strings.Join(strings.Fields(doc), " "), "/...", "/\u2026")
	m := importedBy.FindStringSubmatch(doc)
	if m == nil {
		return nil, false
	}
	s := strings.ReplaceAll(paren.ReplaceAllString(m[1], ""), "/\u2026", "/...")
	s = strings.ReplaceAll(s, " and ", ", ")
	var items []string
	for _, it := range strings.Split(s, ",") {
		if it = strings.TrimSpace(it); it != "" {
			items = append(items, it)
		}
	}
	return items, true
}

func matches(item, importer string) bool {
	if sub, ok := strings.CutSuffix(item, "/..."); ok {
		return importer == sub || strings.HasPrefix(importer, sub+"/")
	}
	return importer == item
}

func packageDoc(t *testing.T, p pkg) string {
	t.Helper()
	fset := token.NewFileSet()
	var doc string
	for _, f := range p.GoFiles {
		af, err := parser.ParseFile(fset, filepath.Join(p.Dir, f), nil, parser.PackageClauseOnly|parser.ParseComments)
		require.NoError(t, err)
		if af.Doc != nil {
			require.Empty(t, doc, "%s: more than one file has a package doc (%s)", p.ImportPath, f)
			doc = af.Doc.Text()
		}
	}
	return doc
}

// TestPackageDocsNameTheirImporters: every package has a doc of a few
// lines saying its job, and its "Imported by" sentence is true.
func TestPackageDocsNameTheirImporters(t *testing.T) {
	pkgs := list(t)
	importers := map[string][]string{}     // package → non-test importers
	testImporters := map[string][]string{} // package → test-only importers
	for _, p := range pkgs {
		for _, i := range p.Imports {
			if strings.HasPrefix(i, module) {
				importers[rel(i)] = append(importers[rel(i)], rel(p.ImportPath))
			}
		}
		for _, i := range slices.Concat(p.TestImports, p.XTestImports) {
			if strings.HasPrefix(i, module) && i != p.ImportPath {
				testImporters[rel(i)] = append(testImporters[rel(i)], rel(p.ImportPath))
			}
		}
	}
	for _, p := range pkgs {
		name := rel(p.ImportPath)
		t.Run(name, func(t *testing.T) {
			doc := packageDoc(t, p)
			want := "Package " + p.Name + " "
			if p.Name == "main" {
				want = "Command " + filepath.Base(p.Dir) + " "
			}
			require.True(t, strings.HasPrefix(doc, want), "%s: the package doc starts %q, want %q…", name, firstLine(doc), want)
			lines := strings.Count(strings.TrimSpace(doc), "\n") + 1
			assert.LessOrEqual(t, lines, 10, "%s: a package doc says its job in a few lines (%d lines)", name, lines)
			if p.Name == "main" {
				return
			}
			items, ok := parseImportedBy(doc)
			require.True(t, ok, "%s: the package doc has no \"Imported by …\" sentence; actual importers: %v", name, importers[name])
			got := importers[name]
			switch {
			case len(items) == 1 && items[0] == "nothing yet":
				assert.Empty(t, got, "%s says nothing imports it", name)
				assert.Empty(t, testImporters[name], "%s says nothing imports it (not even tests)", name)
				return
			case len(items) == 1 && items[0] == "tests only":
				assert.Empty(t, got, "%s says only tests import it", name)
				return
			}
			for _, imp := range got {
				assert.True(t, slices.ContainsFunc(items, func(it string) bool { return matches(it, imp) }),
					"%s is imported by %s, which its doc does not name (it names %v)", name, imp, items)
			}
			for _, it := range items {
				if it == "tests" { // "… and tests"
					assert.NotEmpty(t, testImporters[name], "%s says tests import it; none do", name)
					continue
				}
				assert.True(t, slices.ContainsFunc(got, func(imp string) bool { return matches(it, imp) }),
					"%s's doc names %s as an importer, which does not import it (importers: %v)", name, it, got)
			}
		})
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// TestAgentLinksOnlyTheControlPlaneContract: the agent (and its binary)
// depend on the control plane's API types and client, never on its
// implementation (broker, store layout, server).
func TestAgentLinksOnlyTheControlPlaneContract(t *testing.T) {
	for _, root := range []string{module + "/agent", module + "/agent/cmd/edgefleet-agent"} {
		out, err := exec.Command("go", "list", "-deps", root).Output()
		require.NoError(t, err)
		for _, dep := range strings.Fields(string(out)) {
			if !strings.HasPrefix(dep, module+"/controlplane") {
				continue
			}
			assert.Contains(t, []string{module + "/controlplane/api", module + "/controlplane/client"}, dep,
				"%s depends on %s: the agent may use only the control plane's contract (api) and client", rel(root), rel(dep))
		}
	}
}

// TestAgentBinaryLeavesOutWhatADeviceDoesNotNeed: packages that made the
// agent binary larger (issue 17) and that it does not use must not come
// back through a dependency: the Prometheus client (the agent writes its
// metrics itself) and the profiling handlers.
func TestAgentBinaryLeavesOutWhatADeviceDoesNotNeed(t *testing.T) {
	root := module + "/agent/cmd/edgefleet-agent"
	out, err := exec.Command("go", "list", "-deps", "-tags", "nethttpomithttp2", root).Output()
	require.NoError(t, err)
	deps := map[string]bool{}
	for _, d := range strings.Fields(string(out)) {
		deps[d] = true
	}
	for _, unwanted := range []string{
		"github.com/prometheus/client_golang/prometheus",
		"net/http/pprof",
	} {
		assert.False(t, deps[unwanted], "%s links %s", rel(root), unwanted)
	}
}
