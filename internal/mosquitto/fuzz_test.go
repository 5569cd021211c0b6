package mosquitto

import (
	"errors"
	"testing"
)

// FuzzParsePasswd: a password file is read back by broker sync. No panic;
// a refusal wraps ErrFormat; an accepted entry has a valid username and a
// hash, and WritePasswd renders the entries to a file that parses to the
// same entries.
func FuzzParsePasswd(f *testing.F) {
	f.Add([]byte("# comment\ndev-1:$7$101$c2FsdA==$" + "AAAA\n\n"))
	f.Add([]byte("a:b\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := ParsePasswd(data)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("ParsePasswd error %v does not wrap ErrFormat", err)
			}
			return
		}
		for _, e := range entries {
			if err := ValidUsername(e.User); err != nil || e.Hash == "" {
				t.Fatalf("ParsePasswd accepted %q:%q (%v)", e.User, e.Hash, err)
			}
		}
		out, err := WritePasswd(entries)
		if err != nil {
			return // a hash with a newline cannot be written back: refused there
		}
		again, err := ParsePasswd(out)
		if err != nil || len(again) != len(entries) {
			t.Fatalf("written back, %d entries parse as %d (%v)", len(entries), len(again), err)
		}
	})
}
