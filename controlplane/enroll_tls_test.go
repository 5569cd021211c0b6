package controlplane_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
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

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/broker"
	"github.com/edgefleet/edgefleet/internal/fleettest"
)

// pki is a throwaway CA writing PEM files into dir.
type pki struct {
	t    *testing.T
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fleet CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	p := &pki{t: t, dir: t.TempDir(), cert: cert, key: key}
	require.NoError(t, os.WriteFile(p.caFile(), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	return p
}

func (p *pki) caFile() string { return filepath.Join(p.dir, "ca.crt") }

// issue writes cn.crt and cn.key: a server certificate for 127.0.0.1 or a
// client certificate.
func (p *pki) issue(cn string, server bool) (certFile, keyFile string) {
	p.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(p.t, err)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	require.NoError(p.t, err)
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	require.NoError(p.t, err)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(p.t, err)
	certFile, keyFile = filepath.Join(p.dir, cn+".crt"), filepath.Join(p.dir, cn+".key")
	require.NoError(p.t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(p.t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600))
	return certFile, keyFile
}

// TestEnrolledAgentOverMutualTLS is the whole provisioning path: enroll,
// write the config, run a real agent over mutual TLS, deploy, serve; and a
// device holding another device's certificate is refused.
func TestEnrolledAgentOverMutualTLS(t *testing.T) {
	p := newPKI(t)
	srvCert, srvKey := p.issue("broker", true)
	tlsCfg, err := broker.TLSConfig(srvCert, srvKey, p.caFile())
	require.NoError(t, err)
	ts := newTestServer(t, func(o *controlplane.Options) { o.MQTTTLS = tlsCfg })
	require.Regexp(t, `^tls://`, ts.BrokerURL())

	e := ts.enrollment(api.EnrollmentRequest{DeviceID: "tls-1"})
	cert, key := p.issue("tls-1", false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg, err := agent.Enroll(ctx, agent.EnrollOptions{ControlPlane: ts.APIURL(), Token: e.Token,
		DataDir: t.TempDir(), TLSCAFile: p.caFile(), TLSCertFile: cert, TLSKeyFile: key})
	require.NoError(t, err)
	cfgFile := filepath.Join(t.TempDir(), "agent.yaml")
	require.NoError(t, agent.WriteConfig(cfgFile, cfg, false))
	loaded, err := agent.LoadConfig(cfgFile)
	require.NoError(t, err)
	opts, err := loaded.Options()
	require.NoError(t, err)
	opts.Runtime = testRuntime
	opts.Logger = fleettest.Logger()

	a, err := agent.New(opts)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("agent did not stop")
		}
	})

	ts.mustUpload("fraud", "v1", trainedModel(t, 1))
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"tls-1"}})
	require.Eventually(t, func() bool {
		d, err := ts.Device("tls-1")
		return err == nil && d.Reported["fraud"] != nil && d.Reported["fraud"].State == api.ModelActive
	}, 30*time.Second, 20*time.Millisecond, "the agent activates v1 over mutual TLS")

	// tls-2 is enrolled (valid password) but presents tls-1's certificate.
	e2 := ts.enrollment(api.EnrollmentRequest{DeviceID: "tls-2"})
	cfg2, err := agent.Enroll(ctx, agent.EnrollOptions{ControlPlane: ts.APIURL(), Token: e2.Token,
		DataDir: t.TempDir(), TLSCAFile: p.caFile(), TLSCertFile: cert, TLSKeyFile: key})
	require.NoError(t, err)
	opts2, err := cfg2.Options()
	require.NoError(t, err)
	c, err := dialDeviceTLS(opts2)
	if err == nil {
		c.Disconnect(0)
	}
	assert.Error(t, err, "a certificate for tls-1 cannot open tls-2's session")
}

func dialDeviceTLS(o agent.Options) (paho.Client, error) {
	c := paho.NewClient(paho.NewClientOptions().AddBroker(o.BrokerURL).
		SetClientID(o.DeviceID).SetUsername(o.Username).SetPassword(o.Password).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).SetTLSConfig(o.TLS))
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return nil, context.DeadlineExceeded
	}
	return c, tok.Error()
}
