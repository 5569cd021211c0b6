package infer

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func touch(t *testing.T, path string) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte("x"), 0o644))
	return path
}

func TestFindLibraryOrder(t *testing.T) {
	root := t.TempDir()
	explicit := touch(t, filepath.Join(root, "explicit", LibraryName))
	env := touch(t, filepath.Join(root, "env", LibraryName))
	exeDir := filepath.Join(root, "opt", "edgefleet", "bin")
	besideExe := filepath.Join(exeDir, LibraryName)
	libDir := filepath.Join(root, "opt", "edgefleet", "lib", LibraryName)
	module := filepath.Join(root, "src", "edgefleet")
	touch(t, filepath.Join(module, "go.mod"))
	wd := filepath.Join(module, "internal", "infer")
	require.NoError(t, os.MkdirAll(wd, 0o755))
	x64 := filepath.Join(module, "third_party", "onnxruntime", "linux-x64", LibraryName)
	arm64 := touch(t, filepath.Join(module, "third_party", "onnxruntime", "linux-arm64", LibraryName))

	tests := []struct {
		name    string
		places  libraryPlaces
		create  []string // files to create before the lookup
		want    string
		wantErr string
	}{
		{"explicit wins", libraryPlaces{explicit: explicit, env: env, exeDir: exeDir, wd: wd, goos: "linux", goarch: "amd64"},
			nil, explicit, ""},
		{"explicit missing is an error", libraryPlaces{explicit: filepath.Join(root, "nope.so"), env: env, goos: "linux", goarch: "amd64"},
			nil, "", "nope.so does not exist"},
		{"env next", libraryPlaces{env: env, exeDir: exeDir, wd: wd, goos: "linux", goarch: "amd64"},
			nil, env, ""},
		{"env missing is an error", libraryPlaces{env: filepath.Join(root, "typo.so"), exeDir: exeDir, goos: "linux", goarch: "amd64"},
			nil, "", EnvLibrary + "=" + filepath.Join(root, "typo.so")},
		{"module arm64", libraryPlaces{exeDir: exeDir, wd: wd, goos: "linux", goarch: "arm64"},
			nil, arm64, ""},
		{"lib dir beside the executable", libraryPlaces{exeDir: exeDir, wd: wd, goos: "linux", goarch: "arm64"},
			[]string{libDir}, libDir, ""},
		{"beside the executable first", libraryPlaces{exeDir: exeDir, wd: wd, goos: "linux", goarch: "arm64"},
			[]string{besideExe}, besideExe, ""},
		{"nothing found lists what was tried", libraryPlaces{exeDir: filepath.Join(root, "empty"), wd: wd, goos: "linux", goarch: "amd64"},
			nil, "", "tried " + filepath.Join(root, "empty", LibraryName) + ", " +
				filepath.Join(root, "empty", "..", "lib", LibraryName) + ", " + x64 + "); run `make deps`"},
		{"unsupported platform", libraryPlaces{wd: wd, goos: "plan9", goarch: "386"},
			nil, "", "no bundled onnxruntime for plan9/386; set " + EnvLibrary},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, f := range tt.create {
				touch(t, f)
				t.Cleanup(func() { os.Remove(f) })
			}
			got, err := findLibrary(tt.places)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.ErrorIs(t, err, ErrLibraryNotFound)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, filepath.Clean(tt.want), got)
		})
	}
}

func TestFindLibraryInThisModule(t *testing.T) {
	t.Setenv(EnvLibrary, "")
	got, err := FindLibrary("")
	require.NoError(t, err, "run `make deps` (scripts/fetch-onnxruntime.sh) first")
	wd, err := os.Getwd()
	require.NoError(t, err)
	root, ok := moduleRoot(wd)
	require.True(t, ok)
	dir, err := platformDir(runtime.GOOS, runtime.GOARCH)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(root, "third_party", "onnxruntime", dir, LibraryName), got)
}
