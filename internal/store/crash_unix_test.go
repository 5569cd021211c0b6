//go:build unix

package store

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// crashDirEnv tells a re-executed test binary to act as the crashing child.
const crashDirEnv = "EDGEFLEET_STORE_CRASH_CHILD_DIR"

// TestSetSyncSurvivesKill re-executes this test binary as a child that
// commits with SetSync and Update(sync) and then SIGKILLs itself without
// Close; the parent reopens the directory and must find every commit.
func TestSetSyncSurvivesKill(t *testing.T) {
	if dir := os.Getenv(crashDirEnv); dir != "" {
		crashChild(dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestSetSyncSurvivesKill$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr, "child must die, output:\n%s", out)
	ws, ok := exitErr.Sys().(syscall.WaitStatus)
	require.True(t, ok)
	require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "child must be SIGKILLed, got %v; output:\n%s", ws, out)
	require.Contains(t, string(out), "committed", "child must reach its commit point")

	db, err := Open(Options{Dir: dir})
	require.NoError(t, err, "reopen after kill -9")
	defer func() { require.NoError(t, db.Close()) }()
	kv := db.Namespace("agent/d1")
	got, err := kv.Get("generation")
	require.NoError(t, err)
	assert.Equal(t, "42", string(got))
	big, err := kv.Get("blob")
	require.NoError(t, err)
	assert.Len(t, big, 100<<10)
	for i := range 20 {
		got, err := kv.Get("batch/" + strconv.Itoa(i))
		require.NoError(t, err)
		assert.Equal(t, strconv.Itoa(i), string(got))
	}
}

// crashChild commits and dies by SIGKILL; it never returns normally.
func crashChild(dir string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(3)
	}
	db, err := Open(Options{Dir: dir})
	if err != nil {
		fail(err)
	}
	kv := db.Namespace("agent/d1")
	if err := kv.SetSync("blob", make([]byte, 100<<10)); err != nil { // value log
		fail(err)
	}
	err = kv.Update(func(tx *Tx) error {
		for i := range 20 {
			if err := tx.Set("batch/"+strconv.Itoa(i), []byte(strconv.Itoa(i))); err != nil {
				return err
			}
		}
		return nil
	}, true)
	if err != nil {
		fail(err)
	}
	if err := kv.SetSync("generation", []byte("42")); err != nil {
		fail(err)
	}
	fmt.Println("committed")
	if err := syscall.Kill(os.Getpid(), syscall.SIGKILL); err != nil {
		fail(err)
	}
	fail(errors.New("still alive after SIGKILL"))
}

// TestOpenAfterACrashLeftAnEmptyMemtable: killed between creating a
// memtable file and sizing it, badger leaves an empty .mem file and its
// next Open fails ("Create a new file"); an agent then never starts
// again (seen in the agent's crash tests). Open removes it, under the
// directory lock, and every committed write is still there.
func TestOpenAfterACrashLeftAnEmptyMemtable(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(Options{Dir: dir, GCInterval: -1})
	require.NoError(t, err)
	require.NoError(t, db.Namespace("agent").SetSync("generation", []byte("7")))
	require.NoError(t, db.Close())
	empty := filepath.Join(dir, "000099.mem")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))

	db, err = Open(Options{Dir: dir, GCInterval: -1})
	require.NoError(t, err, "reopen with an empty memtable file")
	got, err := db.Namespace("agent").Get("generation")
	require.NoError(t, err)
	assert.Equal(t, "7", string(got))
	assert.NoFileExists(t, empty)
	require.NoError(t, db.Close())

	// Not while another instance holds the directory: its files are its own.
	db, err = Open(Options{Dir: dir, GCInterval: -1})
	require.NoError(t, err)
	defer func() { require.NoError(t, db.Close()) }()
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	_, err = Open(Options{Dir: dir, GCInterval: -1, LockWait: -1})
	require.Error(t, err, "the directory is locked")
	assert.FileExists(t, empty, "a locked directory's files are left alone")
	require.NoError(t, os.Remove(empty))
}
