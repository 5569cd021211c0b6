package scenario

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: scenario files are decoded strictly (unknown keys are
// errors). No panic, whatever the bytes; the shipped scenarios are the
// seeds.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob("../scenarios/*.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(minimal))
	reg := NewRegistry()
	f.Fuzz(func(t *testing.T, data []byte) {
		sc, err := Parse(data, reg)
		if err == nil && sc == nil {
			t.Fatal("Parse returned neither a scenario nor an error")
		}
	})
}
