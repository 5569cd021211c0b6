package models

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/store"
)

// A stored model file whose bytes no longer hash to its name (a disk
// fault, an edit by hand) must not go unnoticed: the version is marked
// corrupt in the API, deploying it is refused, and the devices waiting for
// it are shown blocked with the reason. Files are checked at start (in the
// background; a file checked before is skipped while its size and mtime
// are unchanged) and on every read.

// prefixBlobOK keeps, per file checked good, the size and mtime it had.
const prefixBlobOK = "blobok/"

type blobStamp struct {
	Size  int64     `json:"size"`
	MTime time.Time `json:"mtime"`
}

// markCorrupt records why rec's file cannot be served; err nil clears it
// (the file was restored).
func (r *Registry) markCorrupt(rec *record, err error) {
	key := rec.Name + "/" + rec.Version
	r.mu.Lock()
	old, was := r.corrupt[key]
	if err == nil {
		delete(r.corrupt, key)
	} else {
		r.corrupt[key] = err.Error()
	}
	r.mu.Unlock()
	switch {
	case err != nil && (!was || old != err.Error()):
		r.log.Error("model file corrupt: the version cannot be served or deployed until it is uploaded again as a new version",
			"model", rec.Name, "version", rec.Version, "err", err)
	case err == nil && was:
		r.log.Info("model file readable again", "model", rec.Name, "version", rec.Version)
	}
}

// Corrupt is why model@version's stored file cannot be served ("" when it
// can, or the version is unknown).
func (r *Registry) Corrupt(name, version string) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.corrupt[name+"/"+version]
}

// Deployable is nil when model@version exists and its file is sound.
func (r *Registry) Deployable(name, version string) error {
	_, err := r.SHA256(name, version)
	return err
}

// errCorrupt is the API error for a corrupt version.
func errCorrupt(name, version, reason string) error {
	return api.Errorf(api.ErrChecksFailed, "model %s version %s cannot be deployed: its stored file is corrupt (%s); upload the model again as a new version", name, version, reason)
}

// VerifyFiles checks every version's file against its sha256 (the
// unchanged ones checked before are skipped) and marks the corrupt ones;
// it returns how many it found corrupt. It stops early when ctx ends.
func (r *Registry) VerifyFiles(ctx context.Context) int {
	bad := 0
	for _, rec := range r.all() {
		if ctx.Err() != nil {
			break
		}
		if err := r.verifyFile(rec); err != nil {
			r.markCorrupt(rec, err)
			bad++
		}
	}
	return bad
}

// verifyFile hashes rec's file as a stream unless its size and mtime are
// those it had when last found good.
func (r *Registry) verifyFile(rec *record) error {
	path := r.blobPath(rec.SHA256)
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("model file: %w", err)
	}
	stamp := blobStamp{Size: fi.Size(), MTime: fi.ModTime().UTC()}
	var known blobStamp
	if err := r.opts.KV.GetJSON(prefixBlobOK+rec.SHA256, &known); err == nil && known.Size == stamp.Size && known.MTime.Equal(stamp.MTime) && uint64(stamp.Size) == rec.Size {
		return nil
	} else if err != nil && !errors.Is(err, store.ErrNotFound) {
		r.log.Warn("read model file check record", "model", rec.Name, "version", rec.Version, "err", err)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("model file: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("model file: %w", err)
	}
	if uint64(n) != rec.Size || hex.EncodeToString(h.Sum(nil)) != rec.SHA256 {
		return fmt.Errorf("model file %s does not match its sha256 (%d bytes, want %d)", path, n, rec.Size)
	}
	if err := r.opts.KV.SetJSON(prefixBlobOK+rec.SHA256, &stamp, false); err != nil {
		r.log.Warn("store model file check record", "model", rec.Name, "version", rec.Version, "err", err)
	}
	return nil
}
