package labels

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseAndMatch(t *testing.T) {
	dev := map[string]string{"site": "berlin", "hw": "arm64", "ring": "canary"}
	tests := []struct {
		sel  string
		want bool
	}{
		{"site=berlin", true},
		{"site=paris", false},
		{"site=berlin,hw=arm64", true},
		{"site=berlin,hw=x86_64", false},
		{"hw!=x86_64", true},
		{"hw!=arm64", false},
		{"missing!=x", true}, // absent label satisfies !=
		{"missing=x", false}, // absent label never satisfies =
		{" site = berlin , ring=canary ", true},
		{"site=berlin,site!=berlin", false},
	}
	for _, tt := range tests {
		sel, err := Parse(tt.sel)
		require.NoError(t, err, "Parse(%q)", tt.sel)
		assert.Equal(t, tt.want, sel.Match(dev), "Parse(%q).Match(%v)", tt.sel, dev)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		sel     string
		wantMsg string
	}{
		{"", "selector is empty"},
		{"   ", "selector is empty"},
		{"site", "want key=value or key!=value"},
		{"site=", "label value is empty"},
		{"=berlin", "label key is empty"},
		{"site=berlin,", "empty term"},
		{",site=berlin", "empty term"},
		{"site==berlin", "single '='"},
		{"si te=berlin", "character ' ' at 2"},
		{"site=ber/lin", "character '/'"},
		{"-site=a", "must start and end with a letter or digit"},
		{"site=" + strings.Repeat("a", 64), "max 63"},
		{strings.Repeat("a=b,", 40) + "a=b", "max 32"},
		{strings.Repeat("a", 1025), "max 1024"},
	}
	for _, tt := range tests {
		_, err := Parse(tt.sel)
		if assert.Error(t, err, "Parse(%q)", tt.sel) {
			assert.Contains(t, err.Error(), tt.wantMsg, "Parse(%q)", tt.sel)
			assert.True(t, errors.Is(err, ErrInvalid), "Parse(%q) error %v does not wrap ErrInvalid", tt.sel, err)
		}
	}
}

func TestSelectorString(t *testing.T) {
	sel, err := Parse(" site = berlin,hw!=arm64")
	require.NoError(t, err)
	assert.Equal(t, "site=berlin,hw!=arm64", sel.String())
	assert.Equal(t, []Requirement{{"site", Equals, "berlin"}, {"hw", NotEquals, "arm64"}}, sel.Requirements())
}

func TestZeroSelectorMatchesEverything(t *testing.T) {
	assert.True(t, Selector{}.Match(nil))
	assert.True(t, Selector{}.Match(map[string]string{"a": "b"}))
}

func TestValidLabels(t *testing.T) {
	assert.NoError(t, ValidLabels(nil))
	assert.NoError(t, ValidLabels(map[string]string{"site": "berlin", "hw.class": "arm64-v8"}))

	err := ValidLabels(map[string]string{"site": ""})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `label "site": label value is empty`)

	err = ValidLabels(map[string]string{"b": "ok", "a b": "x"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `"a b"`)

	many := map[string]string{}
	for i := range MaxLabels + 1 {
		many["k"+strings.Repeat("x", i%10)+string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	require.Len(t, many, MaxLabels+1)
	assert.ErrorIs(t, ValidLabels(many), ErrInvalid)
}

func TestParseLabel(t *testing.T) {
	k, v, err := ParseLabel("site = berlin")
	require.NoError(t, err)
	assert.Equal(t, [2]string{"site", "berlin"}, [2]string{k, v})
	for _, bad := range []string{"site", "site=", "=x", "a=b=c"} {
		_, _, err := ParseLabel(bad)
		assert.ErrorIs(t, err, ErrInvalid, "ParseLabel(%q)", bad)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"site=a", "a!=b,c=d", "", ",", "a==b", "a=b,"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := Parse(s)
		if err != nil {
			return
		}
		// The canonical form parses to the same selector.
		again, err := Parse(sel.String())
		require.NoError(t, err, "Parse(%q) (canonical form of %q)", sel.String(), s)
		assert.Equal(t, sel.Requirements(), again.Requirements())
	})
}
