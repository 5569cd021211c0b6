package agent

import "testing"

// FuzzParseConfig: any config file is either refused with an error or
// turned into Options (or refused there); nothing panics.
func FuzzParseConfig(f *testing.F) {
	for _, seed := range []string{
		"device_id: d1\nbroker_url: tcp://127.0.0.1:1883\npassword: p\ndata_dir: /tmp/x\nroot_public_key: |\n  -----BEGIN PUBLIC KEY-----\n  MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n  -----END PUBLIC KEY-----\n",
		"device_id: d1\nunknown: 1\n",
		"heartbeat_interval: -1s\n",
		"tls_cert_file: /nonexistent\n",
		"---\n---\n",
		"device_id: [1, 2]\n",
		"&a [*a]",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		_, _ = c.Options()
	})
}
