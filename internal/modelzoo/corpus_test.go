package modelzoo

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite testdata/models from Corpus")

const corpusDir = "../../testdata/models"

// TestCorpusFiles keeps testdata/models (NAME.onnx and
// NAME.samples.json per entry, and nothing else but its README) equal to
// Corpus(); -update rewrites it.
func TestCorpusFiles(t *testing.T) {
	want := map[string][]byte{}
	for _, e := range Corpus() {
		want[e.Name+".onnx"] = e.Model
		want[e.Name+".samples.json"] = e.Samples
	}
	if *update {
		for name, b := range want {
			require.NoError(t, os.WriteFile(filepath.Join(corpusDir, name), b, 0o644))
		}
	}
	entries, err := os.ReadDir(corpusDir)
	require.NoError(t, err)
	var have []string
	total := int64(0)
	for _, e := range entries {
		if e.Name() == "README.md" {
			continue
		}
		have = append(have, e.Name())
		b, err := os.ReadFile(filepath.Join(corpusDir, e.Name()))
		require.NoError(t, err)
		total += int64(len(b))
		assert.True(t, bytes.Equal(want[e.Name()], b), "%s differs from Corpus(): go test ./internal/modelzoo -run TestCorpusFiles -update", e.Name())
	}
	var names []string
	for n := range want {
		names = append(names, n)
	}
	slices.Sort(names)
	slices.Sort(have)
	assert.Equal(t, names, have, "testdata/models holds exactly the corpus")
	assert.Less(t, total, int64(64<<10), "the corpus stays small")
}
