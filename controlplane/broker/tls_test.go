package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testCA is a throwaway certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a leaf certificate for cn (a server certificate for
// 127.0.0.1 when server is set, else a client certificate).
func (ca *testCA) issue(t *testing.T, cn string, server bool) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// writePEM writes a certificate and its key as PEM files in dir.
func writePEM(t *testing.T, dir, name string, c tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600))
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	return certFile, keyFile
}

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
	ca := newTestCA(t, "edgefleet test CA")
	rogue := newTestCA(t, "someone else's CA")
	srvCert, srvKey := writePEM(t, dir, "server", ca.issue(t, "broker", true))
	caFile := filepath.Join(dir, "ca.crt")
	require.NoError(t, os.WriteFile(caFile, ca.pem, 0o600))

	t.Run("server TLS", func(t *testing.T) {
		cfg, err := TLSConfig(srvCert, srvKey, "")
		require.NoError(t, err)
		b := newTestBroker(t, func(o *Options) { o.TLS = cfg })
		require.Regexp(t, `^tls://127\.0\.0\.1:\d+$`, b.URL())
		assert.NoError(t, dialTLS(t, b.URL(), "d1", "pw1", &tls.Config{RootCAs: ca.pool}))
		assert.Error(t, dialTLS(t, b.URL(), "d1", "pw1", &tls.Config{RootCAs: rogue.pool}), "the client checks the broker's certificate")
		assert.Error(t, dialTLS(t, "tcp://"+b.Addr(), "d1", "pw1", nil), "plain MQTT on a TLS listener")
	})

	t.Run("mutual TLS", func(t *testing.T) {
		cfg, err := TLSConfig(srvCert, srvKey, caFile)
		require.NoError(t, err)
		b := newTestBroker(t, func(o *Options) { o.TLS = cfg })
		client := func(c ...tls.Certificate) *tls.Config { return &tls.Config{RootCAs: ca.pool, Certificates: c} }
		d1 := ca.issue(t, "d1", false)
		tests := []struct {
			name, user, password string
			cfg                  *tls.Config
			ok                   bool
		}{
			{"own certificate", "d1", "pw1", client(d1), true},
			{"no certificate", "d1", "pw1", client(), false},
			{"another device's certificate (session takeover)", "d2", "pw2", client(d1), false},
			{"certificate from another CA", "d1", "pw1", client(rogue.issue(t, "d1", false)), false},
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
