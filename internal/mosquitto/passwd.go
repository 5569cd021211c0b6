// Package mosquitto speaks the file formats of the mosquitto broker that
// the control plane keeps for it: password hashes as mosquitto_passwd
// writes them, and whole password files.
//
// Imported by controlplane/fleet, controlplane/brokerauth and controlplane/cli.
package mosquitto

import (
	"bytes"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// mosquitto_passwd's default for mosquitto 2: PBKDF2-HMAC-SHA512, 101
// iterations, a 12-byte salt and a 64-byte key, written as
// $7$<iterations>$<base64 salt>$<base64 key>.
const (
	schemePBKDF2 = "7"
	iterations   = 101
	saltLen      = 12
	keyLen       = sha512.Size
	// maxIterations bounds the work a hash read from a file may ask for.
	maxIterations = 1 << 20
)

// ErrFormat is returned for a hash or a line mosquitto would not accept.
var ErrFormat = errors.New("mosquitto: not a mosquitto password hash")

// Hash hashes password as mosquitto_passwd does, with a fresh salt.
func Hash(password string) (string, error) {
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("mosquitto: hash: %w", err)
	}
	return encode(iterations, salt, password)
}

func encode(iter int, salt []byte, password string) (string, error) {
	key, err := pbkdf2.Key(sha512.New, password, salt, iter, keyLen)
	if err != nil {
		return "", fmt.Errorf("mosquitto: hash: %w", err)
	}
	enc := base64.StdEncoding
	return "$" + schemePBKDF2 + "$" + strconv.Itoa(iter) + "$" + enc.EncodeToString(salt) + "$" + enc.EncodeToString(key), nil
}

// Verify reports whether password matches hash, a $7$ hash as Hash or
// mosquitto_passwd write it. A malformed hash is an error.
func Verify(hash, password string) (bool, error) {
	parts := strings.Split(hash, "$")
	if len(parts) != 5 || parts[0] != "" || parts[1] != schemePBKDF2 {
		return false, ErrFormat
	}
	iter, err := strconv.Atoi(parts[2])
	if err != nil || iter < 1 || iter > maxIterations {
		return false, fmt.Errorf("%w: iterations %q", ErrFormat, parts[2])
	}
	salt, err1 := base64.StdEncoding.DecodeString(parts[3])
	key, err2 := base64.StdEncoding.DecodeString(parts[4])
	if err1 != nil || err2 != nil || len(salt) == 0 || len(key) != keyLen {
		return false, ErrFormat
	}
	got, err := pbkdf2.Key(sha512.New, password, salt, iter, keyLen)
	if err != nil {
		return false, fmt.Errorf("mosquitto: verify: %w", err)
	}
	return subtle.ConstantTimeCompare(got, key) == 1, nil
}

// ValidUsername reports whether mosquitto can read name from a password
// file line: not empty, no ':' (the separator), no whitespace or control
// characters (lines are trimmed and split on newlines).
func ValidUsername(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty username", ErrFormat)
	}
	for _, r := range name {
		if r == ':' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("%w: username %q has ':', whitespace or a control character", ErrFormat, name)
		}
	}
	return nil
}

// Entry is one line of a password file.
type Entry struct {
	User string
	Hash string
}

// WritePasswd renders a password file: one "user:hash" line per entry, in
// the order given. Every entry is checked, so a file that is written is one
// mosquitto reads whole.
func WritePasswd(entries []Entry) ([]byte, error) {
	var b bytes.Buffer
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		if err := ValidUsername(e.User); err != nil {
			return nil, err
		}
		if seen[e.User] {
			return nil, fmt.Errorf("%w: user %q twice", ErrFormat, e.User)
		}
		seen[e.User] = true
		if strings.ContainsAny(e.Hash, ":\r\n") || !strings.HasPrefix(e.Hash, "$") {
			return nil, fmt.Errorf("%w: hash of %q", ErrFormat, e.User)
		}
		b.WriteString(e.User)
		b.WriteByte(':')
		b.WriteString(e.Hash)
		b.WriteByte('\n')
	}
	return b.Bytes(), nil
}

// ParsePasswd reads a password file's entries; blank lines and lines
// starting with '#' are skipped, as mosquitto does.
func ParsePasswd(data []byte) ([]Entry, error) {
	var out []Entry
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || ValidUsername(user) != nil || hash == "" {
			return nil, fmt.Errorf("%w: line %d", ErrFormat, i+1)
		}
		out = append(out, Entry{User: user, Hash: hash})
	}
	return out, nil
}
