package broker

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/testkit"
)

func dialTLS(t *testing.T, url, user, password string, cfg *tls.Config) error {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID(user).SetUsername(user).SetPassword(password).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).SetTLSConfig(cfg)
	c := paho.NewClient(o)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(waitFor), "connect %s", user)
	if err := tok.Error(); err != nil {
		return err
	}
	c.Disconnect(0)
	return nil
}

func TestBrokerTLSAndMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testkit.NewCA(t, "edgefleet test CA")
	rogue := testkit.NewCA(t, "someone else's CA")
	srvCert, srvKey := testkit.WritePEM(t, dir, "server", ca.Issue(t, "broker", true))
	caFile := filepath.Join(dir, "ca.crt")
	require.NoError(t, os.WriteFile(caFile, ca.PEM, 0o600))

	t.Run("server TLS", func(t *testing.T) {
		cfg, err := TLSConfig(srvCert, srvKey, "")
		require.NoError(t, err)
		b := newTestBroker(t, func(o *Options) { o.TLS = cfg })
		require.Regexp(t, `^tls://127\.0\.0\.1:\d+$`, b.URL())
		assert.NoError(t, dialTLS(t, b.URL(), "d1", "pw1", &tls.Config{RootCAs: ca.Pool}))
		assert.Error(t, dialTLS(t, b.URL(), "d1", "pw1", &tls.Config{RootCAs: rogue.Pool}), "the client checks the broker's certificate")
		assert.Error(t, dialTLS(t, "tcp://"+b.Addr(), "d1", "pw1", nil), "plain MQTT on a TLS listener")
	})

	t.Run("mutual TLS", func(t *testing.T) {
		cfg, err := TLSConfig(srvCert, srvKey, caFile)
		require.NoError(t, err)
		b := newTestBroker(t, func(o *Options) { o.TLS = cfg })
		client := func(c ...tls.Certificate) *tls.Config { return &tls.Config{RootCAs: ca.Pool, Certificates: c} }
		d1 := ca.Issue(t, "d1", false)
		tests := []struct {
			name, user, password string
			cfg                  *tls.Config
			ok                   bool
		}{
			{"own certificate", "d1", "pw1", client(d1), true},
			{"no certificate", "d1", "pw1", client(), false},
			{"another device's certificate (session takeover)", "d2", "pw2", client(d1), false},
			{"certificate from another CA", "d1", "pw1", client(rogue.Issue(t, "d1", false)), false},
			{"own certificate, wrong password", "d1", "nope", client(d1), false},
		}
		for _, tt := range tests {
			err := dialTLS(t, b.URL(), tt.user, tt.password, tt.cfg)
			if tt.ok {
				assert.NoError(t, err, tt.name)
			} else {
				assert.Error(t, err, tt.name)
			}
		}
	})

	t.Run("bad files", func(t *testing.T) {
		_, err := TLSConfig(srvCert, "", "")
		assert.Error(t, err)
		_, err = TLSConfig(srvCert, srvKey, srvKey)
		assert.ErrorContains(t, err, "no PEM certificate")
		_, err = TLSConfig(filepath.Join(dir, "missing"), srvKey, "")
		assert.Error(t, err)
	})
}
