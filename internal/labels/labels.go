// Package labels validates device labels and parses and matches label
// selectors such as "site=berlin,hw!=arm64". Imported by controlplane/api,
// controlplane/cli, controlplane/console, controlplane/fleet,
// controlplane/rollout and fleet-sim/scenario.
package labels

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Limits on labels and selectors.
const (
	// MaxKeyLen and MaxValueLen bound a label key and value.
	MaxKeyLen   = 63
	MaxValueLen = 63
	// MaxLabels is the most labels one device may carry.
	MaxLabels = 64
	// MaxSelectorLen bounds a selector string.
	MaxSelectorLen = 1024
	// MaxRequirements bounds the comma-separated terms of a selector.
	MaxRequirements = 32
)

// ErrInvalid is wrapped by every error about a malformed label or selector.
var ErrInvalid = errors.New("invalid label")

// ValidKey checks a label key: 1..63 characters of [A-Za-z0-9._-], starting
// and ending with a letter or digit.
func ValidKey(k string) error { return validToken("key", k, MaxKeyLen) }

// ValidValue checks a label value: same rules as a key (empty values are
// refused so that a typo such as "site=" is caught).
func ValidValue(v string) error { return validToken("value", v, MaxValueLen) }

func validToken(what, s string, maxLen int) error {
	if s == "" {
		return fmt.Errorf("label %s is empty: %w", what, ErrInvalid)
	}
	if len(s) > maxLen {
		return fmt.Errorf("label %s %q is %d characters, max %d: %w", what, s, len(s), maxLen, ErrInvalid)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !alnum(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("label %s %q: character %q at %d not allowed (use A-Z a-z 0-9 . _ -): %w", what, s, rune(c), i, ErrInvalid)
		}
	}
	if !alnum(s[0]) || !alnum(s[len(s)-1]) {
		return fmt.Errorf("label %s %q must start and end with a letter or digit: %w", what, s, ErrInvalid)
	}
	return nil
}

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// ValidLabels checks a device's label set: at most MaxLabels entries, each
// key and value valid. A nil or empty map is valid. Errors name the first
// bad entry in key order, so they are deterministic.
func ValidLabels(m map[string]string) error {
	if len(m) > MaxLabels {
		return fmt.Errorf("%d labels, max %d: %w", len(m), MaxLabels, ErrInvalid)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := ValidKey(k); err != nil {
			return err
		}
		if err := ValidValue(m[k]); err != nil {
			return fmt.Errorf("label %q: %w", k, err)
		}
	}
	return nil
}

// ParseLabel parses one "key=value" label, as given to `device add --label`.
func ParseLabel(s string) (key, value string, err error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return "", "", fmt.Errorf("label %q: want key=value: %w", s, ErrInvalid)
	}
	k, v = strings.TrimSpace(k), strings.TrimSpace(v)
	if err := ValidKey(k); err != nil {
		return "", "", fmt.Errorf("label %q: %w", s, err)
	}
	if err := ValidValue(v); err != nil {
		return "", "", fmt.Errorf("label %q: %w", s, err)
	}
	return k, v, nil
}

// Operator is a requirement's comparison.
type Operator int

const (
	// Equals matches a device whose label key has exactly the value.
	Equals Operator = iota + 1
	// NotEquals matches a device whose label key is absent or has another
	// value (as in Kubernetes selectors).
	NotEquals
)

// String returns "=" or "!=".
func (o Operator) String() string {
	switch o {
	case Equals:
		return "="
	case NotEquals:
		return "!="
	default:
		return fmt.Sprintf("Operator(%d)", int(o))
	}
}

// Requirement is one term of a selector.
type Requirement struct {
	Key   string
	Op    Operator
	Value string
}

// String renders the requirement as "key=value" or "key!=value".
func (r Requirement) String() string { return r.Key + r.Op.String() + r.Value }

func (r Requirement) match(l map[string]string) bool {
	v, ok := l[r.Key]
	if r.Op == NotEquals {
		return !ok || v != r.Value
	}
	return ok && v == r.Value
}

// Selector is a conjunction of requirements. The zero Selector has no
// requirements and matches every label set; Parse never returns it.
type Selector struct {
	reqs []Requirement
}

// Parse parses a selector: comma-separated "key=value" or "key!=value"
// terms, all of which must hold (AND). Spaces around terms, keys and values
// are ignored. An empty selector is an error: selecting every device must
// be explicit, not the result of a forgotten flag.
func Parse(s string) (Selector, error) {
	if len(s) > MaxSelectorLen {
		return Selector{}, fmt.Errorf("selector is %d characters, max %d: %w", len(s), MaxSelectorLen, ErrInvalid)
	}
	if strings.TrimSpace(s) == "" {
		return Selector{}, fmt.Errorf("selector is empty (want key=value[,key!=value...]): %w", ErrInvalid)
	}
	terms := strings.Split(s, ",")
	if len(terms) > MaxRequirements {
		return Selector{}, fmt.Errorf("selector has %d terms, max %d: %w", len(terms), MaxRequirements, ErrInvalid)
	}
	sel := Selector{reqs: make([]Requirement, 0, len(terms))}
	for i, term := range terms {
		r, err := parseRequirement(strings.TrimSpace(term))
		if err != nil {
			return Selector{}, fmt.Errorf("selector %q: term %d: %w", s, i+1, err)
		}
		sel.reqs = append(sel.reqs, r)
	}
	return sel, nil
}

func parseRequirement(term string) (Requirement, error) {
	if term == "" {
		return Requirement{}, fmt.Errorf("empty term (stray comma?): %w", ErrInvalid)
	}
	var r Requirement
	var k, v string
	if before, after, ok := strings.Cut(term, "!="); ok {
		r.Op, k, v = NotEquals, before, after
	} else if before, after, ok := strings.Cut(term, "="); ok {
		r.Op, k, v = Equals, before, after
		// "k==v" is a common habit; say so rather than report a bad value.
		if strings.HasPrefix(v, "=") {
			return Requirement{}, fmt.Errorf("%q: use a single '=' (k=v), not '==': %w", term, ErrInvalid)
		}
	} else {
		return Requirement{}, fmt.Errorf("%q: want key=value or key!=value: %w", term, ErrInvalid)
	}
	r.Key, r.Value = strings.TrimSpace(k), strings.TrimSpace(v)
	if err := ValidKey(r.Key); err != nil {
		return Requirement{}, fmt.Errorf("%q: %w", term, err)
	}
	if err := ValidValue(r.Value); err != nil {
		return Requirement{}, fmt.Errorf("%q: %w", term, err)
	}
	return r, nil
}

// Match reports whether every requirement holds for the label set l.
func (s Selector) Match(l map[string]string) bool {
	for _, r := range s.reqs {
		if !r.match(l) {
			return false
		}
	}
	return true
}

// Requirements returns a copy of the selector's terms in order.
func (s Selector) Requirements() []Requirement {
	return append([]Requirement(nil), s.reqs...)
}

// String renders the selector in its canonical form ("a=b,c!=d").
func (s Selector) String() string {
	parts := make([]string, len(s.reqs))
	for i, r := range s.reqs {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}
