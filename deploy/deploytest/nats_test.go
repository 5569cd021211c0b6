package deploytest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/cli"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/mqttc"
	"github.com/edgefleet/edgefleet/internal/natsconf"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

// natsAgents is how many agents the cluster test runs, natsEarly how many
// of them are in the rollout's first stage.
const (
	natsAgents = 51
	natsEarly  = 34
)

// startNATS starts a 3-node NATS cluster from what `edgefleet broker
// nats-config` writes: its authorization file as it is, and node configs
// rendered by the same code with each node's own ports (the command gives
// every node the same ports: they run on different hosts). Every node
// writes its pid file into the cluster's directory.
func startNATS(t *testing.T, cpPassword string) *testkit.NATSCluster {
	t.Helper()
	testkit.NATSBin(t)
	out := t.TempDir()
	pw := filepath.Join(out, "mqtt-password")
	require.NoError(t, os.WriteFile(pw, []byte(cpPassword+"\n"), 0o600))
	// A cluster's own route password: no node of another test's cluster
	// dialling a port this one took again can join it.
	routePassword := fmt.Sprintf("route-%d", time.Now().UnixNano())
	rpw := filepath.Join(out, "route-password")
	require.NoError(t, os.WriteFile(rpw, []byte(routePassword), 0o600))
	var buf testkit.Buffer
	code := cli.Main(context.Background(), []string{"broker", "nats-config",
		"--node", "n0=nats-0.nats", "--node", "n1=nats-1.nats", "--node", "n2=nats-2.nats",
		"--control-user", controlUser, "--control-password-file", pw, "--route-password-file", rpw, "--out-dir", out,
		"--store-dir", filepath.Join(out, "js"), "--pid-file", filepath.Join(out, "nats.pid")}, &buf, &buf)
	require.Equal(t, 0, code, "broker nats-config: %s", buf.String())
	for i := range 3 {
		// nats-server -t: the written node configs are valid as they are.
		run(t, out, testkit.NATSBin(t), "-c", fmt.Sprintf("n%d.conf", i), "-t")
	}
	auth, err := os.ReadFile(filepath.Join(out, cli.NATSAuthFile))
	require.NoError(t, err)
	return testkit.StartNATSCluster(t, 3, func(dir string, i int, ports []testkit.NATSPorts) string {
		require.NoError(t, os.WriteFile(filepath.Join(dir, cli.NATSAuthFile), auth, 0o600))
		var routes []string
		for j, p := range ports {
			if j != i {
				routes = append(routes, fmt.Sprintf("127.0.0.1:%d", p.Cluster))
			}
		}
		conf, err := natsconf.NodeConfig(natsconf.Node{
			Name: fmt.Sprintf("n%d", i), Host: "127.0.0.1",
			MQTTPort: ports[i].MQTT, ClusterPort: ports[i].Cluster, MonitorPort: ports[i].Monitor,
			Routes: routes, StoreDir: filepath.Join(dir, fmt.Sprintf("js%d", i)), AuthFile: cli.NATSAuthFile,
			PidFile: filepath.Join(dir, fmt.Sprintf("n%d.pid", i)), RoutePassword: routePassword,
		})
		require.NoError(t, err)
		return conf
	})
}

// TestNATSClusterRolloutFailover runs the fleet on a real 3-node NATS
// cluster (MQTT + JetStream, the configuration broker nats-config writes,
// the devices' logins kept by broker sync --nats-auth-file): 51 agents
// spread over the nodes by their broker URL lists take fraud@1.0.0 and
// report inferences; a staged rollout of 2.0.0 to 34 of them loses the
// node the control plane is connected to (kill -9) once the first device
// is active: every agent of the stage converges, the other 17 never get a
// desired state naming 2.0.0, and every report the broker acknowledged
// is counted exactly once. The node comes back, and a revoked device is
// disconnected and refused without restarting a node.
func TestNATSClusterRolloutFailover(t *testing.T) {
	cpPassword := fmt.Sprintf("cp-%d", time.Now().UnixNano())
	nc := startNATS(t, cpPassword)
	list := strings.Join(nc.MQTTURLs(), ",")
	cp := startControlPlane(t, func(o *controlplane.Options) {
		o.MQTTURL, o.Username, o.Password = list, controlUser, cpPassword
		o.MQTTPersistentSession = true
	})

	// broker sync keeps the authorization file the nodes include (one
	// file here: the three nodes share a directory) and reloads them.
	tok := regexp.MustCompile(`\n\s+(ef_\S+)\n`).FindStringSubmatch(cp.cli("token", "create", "--name", "nats", "--role", "broker"))
	require.NotNil(t, tok)
	authFile := filepath.Join(nc.Dir, cli.NATSAuthFile)
	reload := fmt.Sprintf("kill -HUP $(cat %[1]s/n0.pid) $(cat %[1]s/n1.pid) $(cat %[1]s/n2.pid)", nc.Dir)
	syncOut := brokerSync(t, "--api", cp.srv.APIURL(), "--token", tok[1], "broker", "sync",
		"--nats-auth-file", authFile, "--reload-command", reload, "--file-mode", "0600", "--poll", "5s")

	ids := make([]string, natsAgents)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%02d", i)
	}
	ring := func(i int) string {
		if i < natsEarly {
			return "early"
		}
		return "late"
	}
	creds := map[string]api.DeviceCredentials{}
	for i, id := range ids {
		c, err := cp.srv.RegisterDevice(id, map[string]string{"fleet": "nats", "ring": ring(i)})
		require.NoError(t, err)
		assert.Equal(t, list, c.BrokerURL, "devices are told every node")
		creds[id] = c
	}
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(authFile)
		return err == nil && strings.Count(string(b), `{user: "dev-`) == natsAgents
	}, time.Minute, 50*time.Millisecond, "broker sync never wrote the devices' logins: %s", syncOut)

	// The agents share one badger (namespaces), as fleet-sim's do.
	db, err := store.Open(store.Options{Dir: t.TempDir(), Profile: store.ProfileServer})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	agents := map[string]*agent.Agent{}
	firstNode := map[string]int{}
	for _, id := range ids {
		opts := fleettest.AgentOptions(t, creds[id], cp.rt)
		opts.Store = db.Namespace("agents/" + id)
		opts.QoS0Subscriptions = true
		agents[id] = fleettest.RunAgent(t, opts)
		urls, err := mqttc.BrokerURLs(list, id)
		require.NoError(t, err)
		for n, u := range nc.MQTTURLs() {
			if u == urls[0] {
				firstNode[id] = n
			}
		}
	}
	perNode := map[int]int{}
	for _, n := range firstNode {
		perNode[n]++
	}
	t.Logf("agents per node: %v", perNode)
	for n := range 3 {
		assert.Greater(t, perNode[n], natsAgents/6, "the agents spread over the nodes")
	}

	// Everyone on 1.0.0, and two inferences each.
	model := func(version string) {
		f := filepath.Join(cp.dir, "fraud-"+version+".onnx")
		cp.cli("model", "train", "--out", f, "--seed", "1", "--rows", "4000")
		cp.cli("model", "push", "--name", "fraud", "--version", version, "--file", f)
	}
	model("1.0.0")
	cp.cli("deploy", "fraud@1.0.0", "--selector", "fleet=nats")
	active := func(id, version string) bool {
		d, err := cp.srv.Device(id)
		rep := d.Reported["fraud"]
		return err == nil && rep != nil && rep.State == api.ModelActive && rep.ActiveVersion == version
	}
	lagging := func(version string, devs []string) string {
		var b strings.Builder
		for _, id := range devs {
			if d, err := cp.srv.Device(id); err == nil && !active(id, version) {
				fmt.Fprintf(&b, "\n  %s online=%v reported=%+v", id, d.Online, d.Reported["fraud"])
			}
		}
		return b.String()
	}
	waitAll := func(version string, devs []string, within time.Duration) {
		t.Helper()
		require.Eventually(t, func() bool {
			for _, id := range devs {
				if !active(id, version) {
					return false
				}
			}
			return true
		}, within, 100*time.Millisecond, "not every device reported fraud@%s active: %s", version, lagging(version, devs))
	}
	waitAll("1.0.0", ids, 5*time.Minute)
	for _, id := range ids {
		inferFraud(t, agents[id].InferenceAddr(), "1.0.0")
	}
	gens := map[string]uint64{}
	for _, id := range ids {
		d, err := cp.srv.Device(id)
		require.NoError(t, err)
		require.NotNil(t, d.Desired)
		gens[id] = d.Desired.Generation
	}

	// The staged rollout: the early ring, then (never promoted) the rest.
	model("2.0.0")
	st, err := cp.srv.CreateRollout(context.Background(), api.RolloutSpec{
		Model: "fraud", Version: "2.0.0", Selector: "fleet=nats",
		Stages: []api.RolloutStage{{Selector: "ring=early"}, {Percent: 100}},
		Bake:   api.Duration(time.Hour),
	}, "test")
	require.NoError(t, err)
	early, late := ids[:natsEarly], ids[natsEarly:]
	require.Eventually(t, func() bool {
		for _, id := range early {
			if active(id, "2.0.0") {
				return true
			}
		}
		return false
	}, 3*time.Minute, 20*time.Millisecond, "no device of the first stage took 2.0.0")

	// kill -9 the node the control plane is connected to (the first of
	// its list): it and the agents there fail over.
	cpURLs, err := mqttc.BrokerURLs(list, controlUser)
	require.NoError(t, err)
	victim := -1
	for n, u := range nc.MQTTURLs() {
		if u == cpURLs[0] {
			victim = n
		}
	}
	done := 0
	for _, id := range early {
		if active(id, "2.0.0") {
			done++
		}
	}
	killed := time.Now()
	nc.Kill(victim)
	t.Logf("killed node n%d (the control plane's and %d agents'), %d of %d devices of the stage active on 2.0.0",
		victim, perNode[victim], done, natsEarly)

	waitAll("2.0.0", early, 5*time.Minute)
	t.Logf("every device of the stage active on 2.0.0 %s after the kill", time.Since(killed).Round(time.Millisecond))
	for _, id := range late {
		d, err := cp.srv.Device(id)
		require.NoError(t, err)
		assert.Equal(t, gens[id], d.Desired.Generation, "%s outside the stage got a new desired state", id)
		assert.True(t, active(id, "1.0.0"), "%s outside the stage still serves 1.0.0", id)
		for _, rec := range d.Recent {
			assert.NotEqual(t, "2.0.0", rec.TargetVersion, "%s outside the stage heard of 2.0.0", id)
		}
	}
	r, err := cp.srv.Rollout(st.ID, false)
	require.NoError(t, err)
	assert.Equal(t, 0, r.Stage, "the rollout stays in its first stage")

	// Every acknowledged report arrived once: the two inferences of each
	// agent on 1.0.0 are counted exactly, nothing is left in an outbox.
	admin, err := client.New(cp.srv.APIURL(), client.Options{Token: cp.token})
	require.NoError(t, err)
	// Heartbeats go on, so a report made since is allowed to wait for its
	// acknowledgement; every one made before this point must be in.
	made := map[string]uint64{}
	for id, a := range agents {
		made[id] = a.ReportSeq()
	}
	require.Eventually(t, func() bool {
		m, err := admin.ModelMetrics(context.Background(), "fraud", "1.0.0", api.MetricsQuery{})
		if err != nil || m.Total.Rows < 2*natsAgents {
			return false
		}
		for id, a := range agents {
			if a.QueuedReportsUpTo(made[id]) > 0 {
				return false
			}
		}
		return true
	}, 2*time.Minute, 100*time.Millisecond, "reports missing after the failover")
	m, err := admin.ModelMetrics(context.Background(), "fraud", "1.0.0", api.MetricsQuery{})
	require.NoError(t, err)
	assert.Equal(t, uint64(2*natsAgents), m.Total.Rows, "every inference is counted once")
	for id, a := range agents {
		assert.Zero(t, a.ReportsDropped(), "%s dropped reports", id)
	}

	// The node comes back; a revoked device is closed and refused without
	// a restart, the others stay.
	nc.Restart(victim)
	revoked := late[len(late)-1]
	cp.cli("device", "revoke", revoked)
	require.Eventually(t, func() bool {
		d, err := cp.srv.Device(revoked)
		return err == nil && !d.Online
	}, time.Minute, 100*time.Millisecond, "the revoked device is still online")
	o := paho.NewClientOptions().SetClientID(revoked).SetUsername(revoked).SetPassword(creds[revoked].Password).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	for _, u := range nc.MQTTURLs() {
		o.AddBroker(u)
	}
	require.Eventually(t, func() bool {
		c := paho.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(20 * time.Second) {
			return false
		}
		if tok.Error() == nil {
			c.Disconnect(0)
			return false
		}
		return true
	}, time.Minute, 200*time.Millisecond, "the revoked device can still log in")
	stay := late[0]
	require.Eventually(t, func() bool {
		d, err := cp.srv.Device(stay)
		return err == nil && d.Online
	}, time.Minute, 100*time.Millisecond, "%s went offline", stay)
}
