package mosquitto

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A line mosquitto_passwd 2.0.11 wrote for dev1 / secret1: a known answer
// that holds where mosquitto is not installed.
const knownLine = "dev1:$7$101$8mHNMpO5Sj7kSvRu$NC2AdqicsfWCJR0qN+KBfxjgVm/CBuCulpf5Lsu1XgXz5gdDrYBbVq5Dam27RrwpNXIFW6Tmzk/vQlGKqIFInA=="

func TestVerifyMosquittoPasswdHash(t *testing.T) {
	entries, err := ParsePasswd([]byte(knownLine + "\n"))
	require.NoError(t, err)
	require.Len(t, entries, 1)
	assert.Equal(t, "dev1", entries[0].User)
	ok, err := Verify(entries[0].Hash, "secret1")
	require.NoError(t, err)
	assert.True(t, ok)
	ok, err = Verify(entries[0].Hash, "secret2")
	require.NoError(t, err)
	assert.False(t, ok)

	// And a line the installed mosquitto_passwd writes now.
	bin, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Skip("mosquitto_passwd is not installed (Debian package mosquitto)")
	}
	f := filepath.Join(t.TempDir(), "passwd")
	out, err := exec.Command(bin, "-c", "-b", f, "edgefleet-cp", "pa:ss word").CombinedOutput()
	require.NoError(t, err, "%s", out)
	b, err := os.ReadFile(f)
	require.NoError(t, err)
	entries, err = ParsePasswd(b)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	ok, err = Verify(entries[0].Hash, "pa:ss word")
	require.NoError(t, err)
	assert.True(t, ok, "our PBKDF2 agrees with mosquitto_passwd's")
}

func TestHashRoundTrip(t *testing.T) {
	h1, err := Hash("s3cret")
	require.NoError(t, err)
	h2, err := Hash("s3cret")
	require.NoError(t, err)
	assert.NotEqual(t, h1, h2, "every hash has its own salt")
	assert.True(t, strings.HasPrefix(h1, "$7$101$"), h1)
	for _, h := range []string{h1, h2} {
		ok, err := Verify(h, "s3cret")
		require.NoError(t, err)
		assert.True(t, ok)
		ok, err = Verify(h, "s3cre")
		require.NoError(t, err)
		assert.False(t, ok)
	}
}

func TestVerifyRefusesMalformedHashes(t *testing.T) {
	good, err := Hash("pw")
	require.NoError(t, err)
	p := strings.Split(good, "$")
	for name, h := range map[string]string{
		"empty":          "",
		"sha512 scheme":  "$6$" + p[3] + "$" + p[4],
		"no iterations":  "$7$$" + p[3] + "$" + p[4],
		"huge iteration": "$7$99999999$" + p[3] + "$" + p[4],
		"bad salt":       "$7$101$!!$" + p[4],
		"short key":      "$7$101$" + p[3] + "$AAAA",
		"extra field":    good + "$x",
	} {
		_, err := Verify(h, "pw")
		assert.ErrorIs(t, err, ErrFormat, name)
	}
}

func TestWritePasswd(t *testing.T) {
	h, err := Hash("pw")
	require.NoError(t, err)
	b, err := WritePasswd([]Entry{{"b", h}, {"a", h}})
	require.NoError(t, err)
	assert.Equal(t, "b:"+h+"\na:"+h+"\n", string(b), "order kept")
	back, err := ParsePasswd(append([]byte("# comment\n\n"), b...))
	require.NoError(t, err)
	assert.Equal(t, []Entry{{"b", h}, {"a", h}}, back)

	for name, e := range map[string][]Entry{
		"colon in user":   {{"a:b", h}},
		"space in user":   {{"a b", h}},
		"newline in user": {{"a\nb:" + h + "\nc", h}},
		"empty user":      {{"", h}},
		"twice":           {{"a", h}, {"a", h}},
		"newline in hash": {{"a", h + "\nevil:" + h}},
		"plain password":  {{"a", "secret"}},
	} {
		_, err := WritePasswd(e)
		assert.ErrorIs(t, err, ErrFormat, name)
	}
	_, err = ParsePasswd([]byte("nocolon\n"))
	assert.ErrorIs(t, err, ErrFormat)
}
