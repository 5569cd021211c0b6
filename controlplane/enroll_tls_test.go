package controlplane_test

import (
	"context"
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
	"github.com/edgefleet/edgefleet/internal/testkit"
)

// TestEnrolledAgentOverMutualTLS is the whole provisioning path: enroll,
// write the config, run a real agent over mutual TLS, deploy, serve; and a
// device holding another device's certificate is refused.
func TestEnrolledAgentOverMutualTLS(t *testing.T) {
	p := testkit.NewCA(t, "fleet CA")
	srvCert, srvKey := p.IssueFiles(t, "broker", true)
	tlsCfg, err := broker.TLSConfig(srvCert, srvKey, p.File)
	require.NoError(t, err)
	ts := newTestServer(t, func(o *controlplane.Options) { o.MQTTTLS = tlsCfg })
	require.Regexp(t, `^tls://`, ts.BrokerURL())

	e := ts.enrollment(api.EnrollmentRequest{DeviceID: "tls-1"})
	cert, key := p.IssueFiles(t, "tls-1", false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg, err := agent.Enroll(ctx, agent.EnrollOptions{ControlPlane: ts.APIURL(), Token: e.Token,
		DataDir: t.TempDir(), TLSCAFile: p.File, TLSCertFile: cert, TLSKeyFile: key})
	require.NoError(t, err)
	cfgFile := filepath.Join(t.TempDir(), "agent.yaml")
	require.NoError(t, agent.WriteConfig(cfgFile, cfg, false))
	loaded, err := agent.LoadConfig(cfgFile)
	require.NoError(t, err)
	opts, err := loaded.Options()
	require.NoError(t, err)
	opts.Runtime = testRuntime
	opts.Logger = fleettest.Logger()

	fleettest.RunAgent(t, opts)

	ts.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"tls-1"}})
	require.Eventually(t, func() bool {
		d, err := ts.Device("tls-1")
		return err == nil && d.Reported["fraud"] != nil && d.Reported["fraud"].State == api.ModelActive
	}, 30*time.Second, 20*time.Millisecond, "the agent activates v1 over mutual TLS")

	// tls-2 is enrolled (valid password) but presents tls-1's certificate.
	e2 := ts.enrollment(api.EnrollmentRequest{DeviceID: "tls-2"})
	cfg2, err := agent.Enroll(ctx, agent.EnrollOptions{ControlPlane: ts.APIURL(), Token: e2.Token,
		DataDir: t.TempDir(), TLSCAFile: p.File, TLSCertFile: cert, TLSKeyFile: key})
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
