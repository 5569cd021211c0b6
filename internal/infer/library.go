package infer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// LibraryName is the file name of the onnxruntime shared library.
const LibraryName = "libonnxruntime.so.1"

// EnvLibrary names the environment variable that overrides where the
// onnxruntime library is looked for.
const EnvLibrary = "EDGEFLEET_ORT_LIB"

// ErrLibraryNotFound is returned when no onnxruntime library was found.
var ErrLibraryNotFound = errors.New("onnxruntime library not found")

// FindLibrary returns the path of the onnxruntime shared library. It tries,
// in order: explicit; $EDGEFLEET_ORT_LIB; next to the executable
// (dir/libonnxruntime.so.1, dir/../lib/libonnxruntime.so.1); and
// <module root>/third_party/onnxruntime/linux-<arch>/libonnxruntime.so.1,
// where the module root is the nearest directory holding go.mod above the
// working directory (for tests and `go run`). An explicit path or the
// environment variable, when set, must exist: a typo is an error, not a
// silent fallback.
func FindLibrary(explicit string) (string, error) {
	var exeDir string
	if exe, err := os.Executable(); err == nil {
		if resolved, err := filepath.EvalSymlinks(exe); err == nil {
			exe = resolved
		}
		exeDir = filepath.Dir(exe)
	}
	wd, _ := os.Getwd()
	return findLibrary(libraryPlaces{
		explicit: explicit,
		env:      os.Getenv(EnvLibrary),
		exeDir:   exeDir,
		wd:       wd,
		goos:     runtime.GOOS,
		goarch:   runtime.GOARCH,
	})
}

// libraryPlaces are FindLibrary's inputs, separated for tests.
type libraryPlaces struct {
	explicit, env, exeDir, wd, goos, goarch string
}

func findLibrary(p libraryPlaces) (string, error) {
	if p.explicit != "" {
		if isFile(p.explicit) {
			return p.explicit, nil
		}
		return "", fmt.Errorf("infer: find library: %w: %s does not exist or is not a file", ErrLibraryNotFound, p.explicit)
	}
	if p.env != "" {
		if isFile(p.env) {
			return p.env, nil
		}
		return "", fmt.Errorf("infer: find library: %w: %s=%s does not exist or is not a file",
			ErrLibraryNotFound, EnvLibrary, p.env)
	}
	var tried []string
	if p.exeDir != "" {
		tried = append(tried,
			filepath.Join(p.exeDir, LibraryName),
			filepath.Join(p.exeDir, "..", "lib", LibraryName))
	}
	archDir, archErr := platformDir(p.goos, p.goarch)
	if archErr == nil && p.wd != "" {
		if root, ok := moduleRoot(p.wd); ok {
			tried = append(tried, filepath.Join(root, "third_party", "onnxruntime", archDir, LibraryName))
		}
	}
	for _, c := range tried {
		if isFile(c) {
			return filepath.Clean(c), nil
		}
	}
	hint := "run `make deps` (scripts/fetch-onnxruntime.sh) or set " + EnvLibrary
	if archErr != nil {
		hint = archErr.Error() + "; set " + EnvLibrary
	}
	if len(tried) == 0 {
		return "", fmt.Errorf("infer: find library: %w; %s", ErrLibraryNotFound, hint)
	}
	return "", fmt.Errorf("infer: find library: %w (tried %s); %s",
		ErrLibraryNotFound, strings.Join(tried, ", "), hint)
}

// platformDir names the third_party/onnxruntime subdirectory for a platform.
func platformDir(goos, goarch string) (string, error) {
	if goos != "linux" {
		return "", fmt.Errorf("no bundled onnxruntime for %s/%s", goos, goarch)
	}
	switch goarch {
	case "amd64":
		return "linux-x64", nil
	case "arm64":
		return "linux-arm64", nil
	default:
		return "", fmt.Errorf("no bundled onnxruntime for %s/%s", goos, goarch)
	}
}

// moduleRoot walks up from dir to the nearest directory holding go.mod.
func moduleRoot(dir string) (string, bool) {
	dir = filepath.Clean(dir)
	for {
		if isFile(filepath.Join(dir, "go.mod")) {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

func isFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}
