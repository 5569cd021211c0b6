package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/dgraph-io/badger/v4"
)

// badgerReserved is the key prefix badger keeps for itself.
const badgerReserved = "!badger!"

// KV is a key-value view scoped to a namespace of a DB. Keys are stored as
// "<namespace>/<key>"; methods take and return keys without the namespace.
// A namespace sees the keys of namespaces nested under it as "sub/key", never
// those of a sibling: "a1" does not see "a10". Safe for concurrent use.
type KV struct {
	db     *DB
	prefix string // namespace path plus trailing "/"
	err    error  // set when the namespace was invalid
}

// Namespace returns the view nested under sub, joined with "/".
func (kv *KV) Namespace(sub string) *KV {
	if kv.err != nil {
		return kv
	}
	n := &KV{db: kv.db}
	if err := validNamespace(sub); err != nil {
		n.err = err
		return n
	}
	n.prefix = kv.prefix + sub + "/"
	return n
}

// Prefix returns the namespace path, without a trailing "/".
func (kv *KV) Prefix() string { return strings.TrimSuffix(kv.prefix, "/") }

func validNamespace(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("%w: prefix is empty", ErrInvalidNamespace)
	case strings.HasPrefix(p, badgerReserved):
		return fmt.Errorf("%w: %q uses badger's reserved prefix %q", ErrInvalidNamespace, p, badgerReserved)
	}
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "" {
			return fmt.Errorf("%w: %q has an empty segment (leading, trailing or double \"/\")", ErrInvalidNamespace, p)
		}
	}
	return nil
}

// key returns the full badger key, checking the view and the key.
func (kv *KV) key(op, key string) ([]byte, error) {
	switch {
	case kv.err != nil:
		return nil, fmt.Errorf("store: %s: %w", op, kv.err)
	case kv.db.closed.Load():
		return nil, fmt.Errorf("store: %s: %w", op, ErrClosed)
	case key == "":
		return nil, fmt.Errorf("store: %s in %q: %w", op, kv.Prefix(), ErrEmptyKey)
	}
	return []byte(kv.prefix + key), nil
}

// Get returns a copy of key's value, or an error wrapping ErrNotFound.
func (kv *KV) Get(key string) ([]byte, error) {
	var out []byte
	err := kv.view("get", func(tx *Tx) error {
		var err error
		out, err = tx.Get(key)
		return err
	})
	return out, err
}

// Set writes key. The write survives a process crash once Set returns, but
// not a power loss; use SetSync at commit points.
func (kv *KV) Set(key string, val []byte) error {
	return kv.Update(func(tx *Tx) error { return tx.Set(key, val) }, false)
}

// SetSync writes key and fsyncs: a commit point that survives power loss.
func (kv *KV) SetSync(key string, val []byte) error {
	return kv.Update(func(tx *Tx) error { return tx.Set(key, val) }, true)
}

// Delete removes key; deleting a missing key is not an error.
func (kv *KV) Delete(key string) error {
	return kv.Update(func(tx *Tx) error { return tx.Delete(key) }, false)
}

// Scan calls fn for every key starting with prefix (may be empty), in key
// order, with the key relative to the namespace and a copy of the value that
// fn may keep. An error from fn stops the scan and is returned as is.
func (kv *KV) Scan(prefix string, fn func(key string, val []byte) error) error {
	if kv.err != nil {
		return fmt.Errorf("store: scan: %w", kv.err)
	}
	if kv.db.closed.Load() {
		return fmt.Errorf("store: scan: %w", ErrClosed)
	}
	full := []byte(kv.prefix + prefix)
	var fnErr error
	err := kv.db.bdb.View(func(txn *badger.Txn) error {
		o := badger.DefaultIteratorOptions
		o.Prefix = full
		o.PrefetchSize = 16
		it := txn.NewIterator(o)
		defer it.Close()
		for it.Seek(full); it.ValidForPrefix(full); it.Next() {
			item := it.Item()
			val, err := item.ValueCopy(nil)
			if err != nil {
				return fmt.Errorf("store: scan %q: read %q: %w", kv.Prefix(), item.Key(), err)
			}
			if err := fn(string(item.Key()[len(kv.prefix):]), val); err != nil {
				fnErr = err
				return err
			}
		}
		return nil
	})
	if fnErr != nil {
		return fnErr
	}
	return err
}

// Update runs fn in a read-write transaction; all of fn's writes commit
// together or, if fn returns an error, none do. If a concurrent transaction
// wrote a key fn read, fn runs again (so it must have no other side
// effects); after repeated conflicts the error wraps ErrConflict. With sync,
// the commit is fsynced before Update returns.
func (kv *KV) Update(fn func(tx *Tx) error, sync bool) error {
	if kv.err != nil {
		return fmt.Errorf("store: update: %w", kv.err)
	}
	if kv.db.closed.Load() {
		return fmt.Errorf("store: update: %w", ErrClosed)
	}
	var err, fnErr error
	for range updateAttempts {
		err = kv.db.bdb.Update(func(txn *badger.Txn) error {
			fnErr = fn(&Tx{txn: txn, kv: kv})
			return fnErr
		})
		if !errors.Is(err, badger.ErrConflict) || fnErr != nil {
			break
		}
	}
	switch {
	case fnErr != nil:
		return fnErr
	case errors.Is(err, badger.ErrConflict):
		return fmt.Errorf("store: update in %q: %w after %d attempts", kv.Prefix(), ErrConflict, updateAttempts)
	case err != nil:
		return kv.wrapErr("update", err)
	}
	if sync {
		return kv.db.Sync()
	}
	return nil
}

func (kv *KV) view(op string, fn func(tx *Tx) error) error {
	if kv.err != nil {
		return fmt.Errorf("store: %s: %w", op, kv.err)
	}
	if kv.db.closed.Load() {
		return fmt.Errorf("store: %s: %w", op, ErrClosed)
	}
	var fnErr error
	err := kv.db.bdb.View(func(txn *badger.Txn) error {
		fnErr = fn(&Tx{txn: txn, kv: kv})
		return fnErr
	})
	switch {
	case fnErr != nil:
		return fnErr
	case err != nil:
		return kv.wrapErr(op, err)
	}
	return nil
}

// wrapErr wraps a badger error, mapping a closed DB to ErrClosed.
func (kv *KV) wrapErr(op string, err error) error {
	if errors.Is(err, badger.ErrDBClosed) || errors.Is(err, badger.ErrBlockedWrites) {
		return fmt.Errorf("store: %s: %w", op, ErrClosed)
	}
	return fmt.Errorf("store: %s in %q: %w", op, kv.Prefix(), err)
}

// GetJSON decodes key's JSON value into v.
func (kv *KV) GetJSON(key string, v any) error {
	return kv.view("get", func(tx *Tx) error { return tx.GetJSON(key, v) })
}

// SetJSON stores v encoded as JSON; with sync it is a commit point.
func (kv *KV) SetJSON(key string, v any, sync bool) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("store: encode %q: %w", key, err)
	}
	return kv.Update(func(tx *Tx) error { return tx.Set(key, b) }, sync)
}

// Tx is a transaction scoped to a KV's namespace; valid only inside the
// function given to Update.
type Tx struct {
	txn *badger.Txn
	kv  *KV
}

// Get returns a copy of key's value, or an error wrapping ErrNotFound.
func (tx *Tx) Get(key string) ([]byte, error) {
	k, err := tx.kv.key("get", key)
	if err != nil {
		return nil, err
	}
	item, err := tx.txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("store: get %q in %q: %w", key, tx.kv.Prefix(), ErrNotFound)
	}
	if err != nil {
		return nil, tx.kv.wrapErr("get", err)
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return nil, tx.kv.wrapErr("get", err)
	}
	return v, nil
}

// Set writes key when the transaction commits.
func (tx *Tx) Set(key string, val []byte) error {
	k, err := tx.kv.key("set", key)
	if err != nil {
		return err
	}
	if err := tx.txn.Set(k, val); err != nil {
		if errors.Is(err, badger.ErrTxnTooBig) {
			return fmt.Errorf("store: set %q in %q: %w", key, tx.kv.Prefix(), ErrTxnTooBig)
		}
		return fmt.Errorf("store: set %q in %q: %w", key, tx.kv.Prefix(), err)
	}
	return nil
}

// Delete removes key when the transaction commits.
func (tx *Tx) Delete(key string) error {
	k, err := tx.kv.key("delete", key)
	if err != nil {
		return err
	}
	if err := tx.txn.Delete(k); err != nil {
		if errors.Is(err, badger.ErrTxnTooBig) {
			return fmt.Errorf("store: delete %q in %q: %w", key, tx.kv.Prefix(), ErrTxnTooBig)
		}
		return fmt.Errorf("store: delete %q in %q: %w", key, tx.kv.Prefix(), err)
	}
	return nil
}

// GetJSON decodes key's JSON value into v.
func (tx *Tx) GetJSON(key string, v any) error {
	b, err := tx.Get(key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("store: decode %q in %q: %w", key, tx.kv.Prefix(), err)
	}
	return nil
}

// SetJSON writes v encoded as JSON when the transaction commits.
func (tx *Tx) SetJSON(key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("store: encode %q: %w", key, err)
	}
	return tx.Set(key, b)
}
