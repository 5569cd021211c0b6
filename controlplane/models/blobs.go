package models

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/edgefleet/edgefleet/internal/atomicfile"
)

// blobPath is where the model with the given hex sha256 lives.
func (r *Registry) blobPath(sum string) string { return filepath.Join(r.opts.BlobDir, sum) }

// writeBlob stores model under its hash unless a file is already there.
func (r *Registry) writeBlob(sum string, model []byte) error {
	path := r.blobPath(sum)
	if _, err := os.Stat(path); err == nil {
		return nil // content-addressed: same name, same bytes
	}
	return atomicfile.Write(path, model, 0o644)
}

// readBlob reads a model file and checks it still hashes to its name.
func (r *Registry) readBlob(sum string, size uint64) ([]byte, error) {
	f, err := os.Open(r.blobPath(sum))
	if err != nil {
		return nil, fmt.Errorf("read model file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, int64(size)+1))
	if err != nil {
		return nil, fmt.Errorf("read model file: %w", err)
	}
	got := sha256.Sum256(data)
	if hex.EncodeToString(got[:]) != sum || uint64(len(data)) != size {
		return nil, fmt.Errorf("model file %s is corrupt: its content does not match its sha256", r.blobPath(sum))
	}
	return data, nil
}

// blobCache keeps recently used byte slices in memory by key, up to max
// bytes: models by sha256 (the most recently used model always stays,
// however large, so a fetch of a big model reads its file once) and
// encoded chunks (Registry.chunkPayload).
type blobCache struct {
	max int64

	// mu guards everything below.
	mu    sync.Mutex
	size  int64
	order *list.List // of *blobEntry, most recent first
	byKey map[string]*list.Element
}

type blobEntry struct {
	sum  string
	data []byte
}

func newBlobCache(max int64) *blobCache {
	return &blobCache{max: max, order: list.New(), byKey: map[string]*list.Element{}}
}

func (c *blobCache) get(sum string) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.byKey[sum]
	if el == nil {
		return nil
	}
	c.order.MoveToFront(el)
	return el.Value.(*blobEntry).data
}

func (c *blobCache) put(sum string, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.byKey[sum]; el != nil {
		c.order.MoveToFront(el)
		return
	}
	c.byKey[sum] = c.order.PushFront(&blobEntry{sum: sum, data: data})
	c.size += int64(len(data))
	for c.size > c.max && c.order.Len() > 1 {
		el := c.order.Back()
		e := el.Value.(*blobEntry)
		c.order.Remove(el)
		delete(c.byKey, e.sum)
		c.size -= int64(len(e.data))
	}
}

// modelBytes returns a model's bytes from the cache or its file.
func (r *Registry) modelBytes(rec *record) ([]byte, error) {
	if data := r.blobs.get(rec.SHA256); data != nil {
		return data, nil
	}
	data, err := r.readBlob(rec.SHA256, rec.Size)
	r.markCorrupt(rec, err)
	if err != nil {
		return nil, err
	}
	r.blobs.put(rec.SHA256, data)
	return data, nil
}
