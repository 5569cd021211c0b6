package deploytest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/cli"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

// The 3-node NATS cluster's container kits (deploy/compose/nats,
// deploy/k8s/nats) cannot run here: no container engine, no Kubernetes.
// These tests check them with what can run: strict schemas and their
// cross-references, the configs `edgefleet broker nats-config` writes
// when run as docs/deploy.md's runbooks say, compared with what the kits
// mount, publish and signal, and each kit's start script run on those
// configs with a real `nats-server -t`.

// natsNode is one NATS node of a kit and the broker sync beside it; every
// path is as the containers see it.
type natsNode struct {
	name string // NODE: the config its start script copies (name.conf)
	host string // the name the other nodes and the control plane reach it by
	// mount path → volume or source, of the node and of its broker sync
	natsMounts, syncMounts map[string]string
	syncArgs               []string          // broker sync's command line, "broker", "sync", …
	syncEnv                map[string]string // broker sync's environment
	user                   string            // uid:gid of the node and of broker sync (asserted equal)
}

// natsKit is how a container kit runs the cluster.
type natsKit struct {
	rel        string // the kit's directory under deploy/
	script     string // each node's start script (sh -c), as sh sees it
	nodes      []natsNode
	mqttPort   int             // the container port devices and the control plane reach MQTT on
	exposed    map[int]bool    // container ports reachable from outside the pod or container
	persistent map[string]bool // volumes that outlive the node's container and pod
	memory     map[string]bool // volumes in memory, shared by a node and its broker sync
	cpArgs     []string        // the control plane's command line
	cpEnv      map[string]string
	cpMounts   map[string]string
	runbook    string // docs/deploy.md's block for the kit
}

// flag is the value of a --name=value argument ("" if absent).
func flagOf(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// natsVersion is the NATS server version `make nats-server` builds.
func natsVersion(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^NATS_VERSION\s*:=\s*(v\S+)$`).FindStringSubmatch(readFile(t, filepath.Join(repoRoot(t), "Makefile")))
	require.NotNil(t, m, "the Makefile pins NATS_VERSION")
	return m[1]
}

// natsImageUser is the USER of deploy/image/nats.Dockerfile.
func natsImageUser(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^USER ([0-9]+:[0-9]+)$`).FindStringSubmatch(string(deployFile(t, "image/nats.Dockerfile")))
	require.NotNil(t, m)
	return m[1]
}

func TestNATSImageVersion(t *testing.T) {
	v := natsVersion(t)
	df := string(deployFile(t, "image/nats.Dockerfile"))
	args := regexp.MustCompile(`(?m)^ARG NATS_VERSION=(\S+)$`).FindAllStringSubmatch(df, -1)
	require.Len(t, args, 2, "both stages declare NATS_VERSION")
	for _, a := range args {
		assert.Equal(t, v, a[1], "the image builds the NATS server the tests ran (Makefile NATS_VERSION)")
	}
	assert.Contains(t, df, "go install -trimpath -ldflags \"-s -w\" github.com/nats-io/nats-server/v2@${NATS_VERSION}", "built from the Go module")
}

// docBlockUnder is the ```sh block right after heading in docs/deploy.md.
func docBlockUnder(t *testing.T, heading string) string {
	t.Helper()
	return docBlockAfter(t, readFile(t, filepath.Join(repoRoot(t), "docs/deploy.md")), heading)
}

// composeMounts maps a compose service's mount paths to their sources.
func composeMounts(s composeService) map[string]string {
	m := map[string]string{}
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		m[parts[1]] = parts[0]
	}
	for _, sec := range s.Secrets {
		m["/run/secrets/"+sec] = "secret " + sec
	}
	return m
}

// composeNATSKit reads deploy/compose/nats/compose.yaml.
func composeNATSKit(t *testing.T) natsKit {
	t.Helper()
	var c composeFile
	require.NoError(t, decodeStrict(deployFile(t, "compose/nats/compose.yaml"), &c))
	require.ElementsMatch(t, []string{"nats-0", "nats-1", "nats-2", "broker-sync-0", "broker-sync-1", "broker-sync-2", "edgefleet"}, keys(c.Services))
	checkComposeRefs(t, "deploy/compose/nats", c)
	cp := c.Services["edgefleet"]
	k := natsKit{
		rel: "compose/nats", exposed: map[int]bool{}, persistent: map[string]bool{}, memory: map[string]bool{},
		cpArgs: cp.Command, cpEnv: cp.Environment, cpMounts: composeMounts(cp),
		runbook: docBlockUnder(t, "### NATS with docker compose\n"),
	}
	for name, v := range c.Volumes {
		if v.DriverOpts["type"] == "tmpfs" {
			k.memory[name] = true
		} else {
			k.persistent[name] = true
		}
	}
	var published []string
	for i := range 3 {
		name := fmt.Sprintf("nats-%d", i)
		n, bs := c.Services[name], c.Services[fmt.Sprintf("broker-sync-%d", i)]
		require.Len(t, n.Entrypoint, 3, "%s's entrypoint is /bin/sh -c SCRIPT", name)
		assert.Equal(t, []string{"/bin/sh", "-c"}, n.Entrypoint[:2])
		// compose reads $$ as a $.
		script := strings.ReplaceAll(n.Entrypoint[2], "$$", "$")
		if k.script == "" {
			k.script = script
		}
		assert.Equal(t, k.script, script, "%s starts as nats-0 does", name)
		assert.Equal(t, name, n.Environment["NODE"], "%s copies its own config", name)
		assert.Equal(t, "edgefleet/nats:"+natsVersion(t), n.Image, "%s: the image of the NATS version the tests ran", name)
		if assert.NotNil(t, n.Build, "%s is built, not pulled", name) {
			assert.Equal(t, "nats.Dockerfile", n.Build.Dockerfile)
		}
		assert.Equal(t, "service:"+name, bs.Pid, "broker sync beside %s sees its process to signal it", name)
		assert.Equal(t, n.User, bs.User, "broker sync runs as %s's uid, so it may signal it", name)
		assert.Equal(t, cp.Image, bs.Image, "broker sync is the edgefleet image")
		assert.Equal(t, cp.Build, bs.Build, "built like the control plane's")
		if assert.NotNil(t, bs.Healthcheck) {
			assert.True(t, bs.Healthcheck.Disable, "the image's health check asks an API broker sync does not serve")
		}
		if assert.NotNil(t, n.Healthcheck, "%s is checked", name) {
			assert.Contains(t, strings.Join(n.Healthcheck.Test, " "), "/dev/tcp/127.0.0.1/8222", "%s's check asks /healthz on loopback", name)
		}
		env := map[string]string{}
		for e, v := range bs.Environment {
			env[e] = v
		}
		env[cli.EnvAPI] = flagOf(bs.Command, "api")
		for _, p := range n.Ports {
			parts := strings.Split(p, ":")
			port, err := strconv.Atoi(parts[len(parts)-1])
			require.NoError(t, err, "%s: port %q", name, p)
			k.exposed[port] = true
			k.mqttPort = port
			published = append(published, strings.Join(parts[:len(parts)-1], ":"))
		}
		assert.Len(t, n.Ports, 1, "%s publishes MQTT alone", name)
		k.nodes = append(k.nodes, natsNode{
			name: name, host: name, natsMounts: composeMounts(n), syncMounts: composeMounts(bs),
			syncArgs: bs.Command, syncEnv: env, user: n.User,
		})
	}
	assert.Len(t, slices.Compact(slices.Sorted(slices.Values(published))), 3, "each node on its own host port: %v", published)
	return k
}

// k8sPDB is the PodDisruptionBudget deploy/k8s/nats uses.
type k8sPDB struct {
	APIVersion string  `yaml:"apiVersion"`
	Kind       string  `yaml:"kind"`
	Metadata   k8sMeta `yaml:"metadata"`
	Spec       struct {
		MinAvailable int              `yaml:"minAvailable"`
		Selector     k8sLabelSelector `yaml:"selector"`
	} `yaml:"spec"`
}

type k8sAffinity struct {
	PodAntiAffinity struct {
		Preferred []struct {
			Weight          int `yaml:"weight"`
			PodAffinityTerm struct {
				TopologyKey   string           `yaml:"topologyKey"`
				LabelSelector k8sLabelSelector `yaml:"labelSelector"`
			} `yaml:"podAffinityTerm"`
		} `yaml:"preferredDuringSchedulingIgnoredDuringExecution"`
	} `yaml:"podAntiAffinity"`
}

// k8sNATSObjects are deploy/k8s/nats's objects, decoded strictly.
type k8sNATSObjects struct {
	secrets  map[string]k8sSecret // the examples', here and in ../
	sets     map[string]k8sStatefulSet
	services map[string]k8sService
	policies []k8sNetworkPolicy
	pdbs     []k8sPDB
}

func readK8sNATS(t *testing.T) k8sNATSObjects {
	t.Helper()
	var kust struct {
		APIVersion string   `yaml:"apiVersion"`
		Kind       string   `yaml:"kind"`
		Namespace  string   `yaml:"namespace"`
		Resources  []string `yaml:"resources"`
		Images     []struct {
			Name   string `yaml:"name"`
			NewTag string `yaml:"newTag"`
		} `yaml:"images"`
	}
	require.NoError(t, decodeStrict(deployFile(t, "k8s/nats/kustomization.yaml"), &kust))
	assert.Equal(t, "Kustomization", kust.Kind)
	assert.Equal(t, "edgefleet", kust.Namespace)
	tags := map[string]string{}
	for _, im := range kust.Images {
		tags[im.Name] = im.NewTag
	}
	assert.Equal(t, natsVersion(t), tags["edgefleet/nats"], "the NATS image's tag is the version the tests ran")
	assert.NotEmpty(t, tags["edgefleet/edgefleet"], "the control plane's release is pinned")
	assert.NotContains(t, tags, "latest")

	o := k8sNATSObjects{secrets: map[string]k8sSecret{}, sets: map[string]k8sStatefulSet{}, services: map[string]k8sService{}}
	apis := map[string]string{"Secret": "v1", "Service": "v1", "StatefulSet": "apps/v1",
		"NetworkPolicy": "networking.k8s.io/v1", "PodDisruptionBudget": "policy/v1"}
	files := append(slices.Clone(kust.Resources), "secrets.example.yaml", "../secrets.example.yaml")
	for _, file := range files {
		example := strings.HasSuffix(file, "secrets.example.yaml")
		for _, obj := range k8sObjects(t, path.Join("nats", file)) {
			where := fmt.Sprintf("%s: %s %s", file, obj.Kind, obj.Metadata.Name)
			want, ok := apis[obj.Kind]
			if !assert.True(t, ok, "%s: unexpected kind", where) {
				continue
			}
			assert.Equal(t, want, obj.APIVersion, where)
			assert.NotEmpty(t, obj.Metadata.Name, where)
			assert.Equal(t, "edgefleet", obj.Metadata.Namespace, where)
			assert.Equal(t, example, obj.Kind == "Secret", "%s: Secrets only in the examples, never applied with the kit", where)
			var err error
			switch obj.Kind {
			case "Secret":
				var s k8sSecret
				err = decodeStrict(obj.raw, &s)
				o.secrets[s.Metadata.Name] = s
			case "Service":
				var s k8sService
				err = decodeStrict(obj.raw, &s)
				o.services[s.Metadata.Name] = s
			case "StatefulSet":
				var s k8sStatefulSet
				err = decodeStrict(obj.raw, &s)
				o.sets[s.Metadata.Name] = s
			case "NetworkPolicy":
				var p k8sNetworkPolicy
				err = decodeStrict(obj.raw, &p)
				o.policies = append(o.policies, p)
			case "PodDisruptionBudget":
				var p k8sPDB
				err = decodeStrict(obj.raw, &p)
				o.pdbs = append(o.pdbs, p)
			}
			assert.NoError(t, err, "%s: strict decode", where)
		}
	}
	require.ElementsMatch(t, []string{"nats", "edgefleet"}, keys(o.sets))
	return o
}

// k8sNATSKit reads deploy/k8s/nats and checks its references.
func k8sNATSKit(t *testing.T) natsKit {
	t.Helper()
	o := readK8sNATS(t)
	ports := map[string]map[string]int{} // workload → port name → container port
	for name, s := range o.sets {
		pod := s.Spec.Template.Spec
		assert.Equal(t, s.Spec.Selector.MatchLabels, s.Spec.Template.Metadata.Labels, "%s: selector matches the pod labels", name)
		assert.True(t, pod.SecurityContext.RunAsNonRoot, "%s runs as non-root", name)
		vols := map[string]bool{}
		for _, v := range pod.Volumes {
			vols[v.Name] = true
			if v.Secret != nil {
				assert.Contains(t, o.secrets, v.Secret.SecretName, "%s: volume %s's Secret is in an example", name, v.Name)
			}
		}
		for _, c := range s.Spec.VolumeClaimTemplates {
			vols[c.Metadata.Name] = true
		}
		ports[name] = map[string]int{}
		for _, c := range pod.Containers {
			for _, p := range c.Ports {
				ports[name][p.Name] = p.ContainerPort
			}
		}
		for _, c := range pod.Containers {
			for _, m := range c.VolumeMounts {
				assert.True(t, vols[m.Name], "%s/%s: mount %s names a volume or claim", name, c.Name, m.Name)
			}
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					ref := e.ValueFrom.SecretKeyRef
					assert.Contains(t, o.secrets[ref.Name].StringData, ref.Key, "%s: env %s from Secret %s key %s", name, e.Name, ref.Name, ref.Key)
				}
				if regexp.MustCompile(`(?i)password|secret|token$`).MatchString(e.Name) {
					assert.NotEmpty(t, e.ValueFrom, "%s: %s comes from a Secret, never inline", name, e.Name)
				}
			}
			for _, p := range []*k8sProbe{c.ReadinessProbe, c.LivenessProbe} {
				if p != nil && assert.NotNil(t, p.HTTPGet, "%s: HTTP probes", name) {
					assert.Contains(t, ports[name], p.HTTPGet.Port, "%s: probe port %s is a named port", name, p.HTTPGet.Port)
					assert.True(t, strings.HasPrefix(p.HTTPGet.Path, "/healthz"), "%s: probes ask the health endpoint", name)
				}
			}
			if assert.NotNil(t, c.SecurityContext.AllowPrivilegeEscalation, "%s/%s", name, c.Name) {
				assert.False(t, *c.SecurityContext.AllowPrivilegeEscalation, "%s/%s: no privilege escalation", name, c.Name)
			}
			assert.True(t, c.SecurityContext.ReadOnlyRootFilesystem, "%s/%s: read-only root", name, c.Name)
			assert.NotEmpty(t, c.Resources.Limits["memory"], "%s/%s: memory limit", name, c.Name)
		}
	}
	workload := func(sel map[string]string) string {
		for name, s := range o.sets {
			if maps(s.Spec.Template.Metadata.Labels, sel) {
				return name
			}
		}
		return ""
	}
	k := natsKit{rel: "k8s/nats", exposed: map[int]bool{}, persistent: map[string]bool{}, memory: map[string]bool{},
		runbook: docBlockUnder(t, "### NATS on Kubernetes\n")}
	for name, svc := range o.services {
		target := workload(svc.Spec.Selector)
		if !assert.NotEmpty(t, target, "Service %s selects a workload", name) {
			continue
		}
		for _, p := range svc.Spec.Ports {
			if assert.Contains(t, ports[target], p.TargetPort, "Service %s: targetPort %s is a port of %s", name, p.TargetPort, target) && target == "nats" {
				k.exposed[ports[target][p.TargetPort]] = true
			}
		}
	}
	admits := policyAdmits(t, o.policies, workload, func(target, port string) bool { _, ok := ports[target][port]; return ok })
	for port := range admits["nats"] {
		k.exposed[ports["nats"][port]] = true
	}
	assert.Equal(t, map[string][]string{"cluster": {"nats"}, "mqtts": {"*"}}, admits["nats"],
		"the nodes: routes only from each other, MQTT over TLS from anywhere, nothing else (the monitoring port has no login)")
	assert.Equal(t, map[string][]string{"api": {"nats", `label:map[edgefleet.io/api-client:true]`}}, admits["edgefleet"],
		"the control plane: the API from broker sync and labelled clients only")

	// The cluster: three nodes started together, stable names through a
	// headless Service published before they are ready, a disruption
	// budget that keeps a quorum.
	set := o.sets["nats"]
	pod := set.Spec.Template.Spec
	assert.Equal(t, 3, set.Spec.Replicas)
	assert.Equal(t, "Parallel", set.Spec.PodManagementPolicy, "a node is ready only with a JetStream leader: OrderedReady would wait for nats-0 forever")
	headless, ok := o.services[set.Spec.ServiceName]
	if assert.True(t, ok, "the StatefulSet's serviceName %s is a Service", set.Spec.ServiceName) {
		assert.Equal(t, "None", headless.Spec.ClusterIP, "Service %s is headless: one name per pod", headless.Metadata.Name)
		assert.True(t, headless.Spec.PublishNotReadyAddresses, "the pods' names resolve before they are ready: a node needs its routes to become ready")
		assert.Equal(t, set.Spec.Template.Metadata.Labels, headless.Spec.Selector)
		assert.True(t, slices.ContainsFunc(headless.Spec.Ports, func(p k8sServicePort) bool { return p.TargetPort == "cluster" }), "the headless Service names the route port")
	}
	if assert.Len(t, o.pdbs, 1) {
		pdb := o.pdbs[0]
		assert.Equal(t, set.Spec.Template.Metadata.Labels, pdb.Spec.Selector.MatchLabels, "the budget covers the nodes")
		assert.Equal(t, set.Spec.Replicas/2+1, pdb.Spec.MinAvailable, "a voluntary disruption leaves JetStream a quorum")
	}
	if assert.NotNil(t, pod.Affinity, "the nodes spread over machines") && assert.Len(t, pod.Affinity.PodAntiAffinity.Preferred, 1) {
		term := pod.Affinity.PodAntiAffinity.Preferred[0].PodAffinityTerm
		assert.Equal(t, "kubernetes.io/hostname", term.TopologyKey)
		assert.Equal(t, set.Spec.Template.Metadata.Labels, term.LabelSelector.MatchLabels)
	}
	assert.True(t, pod.ShareProcessNamespace, "broker sync signals the node: one pid namespace")
	user := fmt.Sprintf("%d:%d", pod.SecurityContext.RunAsUser, pod.SecurityContext.RunAsGroup)
	assert.Equal(t, natsImageUser(t), user, "the pod runs as the image's nats user")
	assert.Equal(t, pod.SecurityContext.RunAsGroup, pod.SecurityContext.FSGroup, "the mounted Secrets and claims are the nodes' group's")
	for _, c := range set.Spec.VolumeClaimTemplates {
		k.persistent[c.Metadata.Name] = true
	}
	for _, v := range pod.Volumes {
		if v.EmptyDir != nil && v.EmptyDir.Medium == "Memory" {
			k.memory[v.Name] = true
		}
	}
	containers := map[string]k8sContainer{}
	for _, c := range pod.Containers {
		containers[c.Name] = c
	}
	require.ElementsMatch(t, []string{"nats", "broker-sync"}, keys(containers))
	nc, bs := containers["nats"], containers["broker-sync"]
	assert.Equal(t, "edgefleet/nats", nc.Image)
	assert.Equal(t, "edgefleet/edgefleet", bs.Image, "broker sync is the edgefleet image")
	assert.Equal(t, []string{"/bin/sh", "-c"}, nc.Command)
	require.Len(t, nc.Args, 1)
	k.script = nc.Args[0]
	assert.NotContains(t, k.script, "$(", "kubelet would expand $(VAR) in args")
	i := slices.IndexFunc(nc.Env, func(e k8sEnvVar) bool { return e.Name == "NODE" })
	if assert.GreaterOrEqual(t, i, 0, "the node's NODE") && assert.NotNil(t, nc.Env[i].ValueFrom) && assert.NotNil(t, nc.Env[i].ValueFrom.FieldRef) {
		assert.Equal(t, "metadata.name", nc.Env[i].ValueFrom.FieldRef.FieldPath, "NODE is the pod's name, nats-N")
	}
	k.mqttPort = ports["nats"]["mqtts"]
	mounts := func(c k8sContainer) map[string]string {
		m := map[string]string{}
		for _, vm := range c.VolumeMounts {
			m[vm.MountPath] = vm.Name
		}
		return m
	}
	env := map[string]string{}
	for _, e := range bs.Env {
		env[e.Name] = e.Value
	}
	volume := func(vols []k8sVolume, name string) k8sVolume {
		t.Helper()
		i := slices.IndexFunc(vols, func(v k8sVolume) bool { return v.Name == name })
		require.GreaterOrEqual(t, i, 0, "volume %q", name)
		return vols[i]
	}
	if v := volume(pod.Volumes, mountOf(mounts(bs), env[cli.EnvTokenFile])); assert.NotNil(t, v.Secret, "broker sync's token is a Secret") {
		assert.True(t, v.Secret.Optional, "the pod starts before the token exists (the control plane makes it)")
	}
	for n := range set.Spec.Replicas {
		name := fmt.Sprintf("%s-%d", set.Metadata.Name, n)
		k.nodes = append(k.nodes, natsNode{
			name: name, host: fmt.Sprintf("%s.%s.%s.svc", name, set.Spec.ServiceName, set.Metadata.Namespace),
			natsMounts: mounts(nc), syncMounts: mounts(bs), syncArgs: bs.Args, syncEnv: env, user: user,
		})
	}

	// The control plane: as deploy/k8s/edgefleet.yaml's, on the cluster.
	cp := o.sets["edgefleet"]
	require.Len(t, cp.Spec.Template.Spec.Containers, 1)
	c := cp.Spec.Template.Spec.Containers[0]
	k.cpArgs, k.cpMounts, k.cpEnv = c.Args, mounts(c), map[string]string{}
	for _, e := range c.Env {
		k.cpEnv[e.Name] = e.Value
	}
	var base k8sStatefulSet
	for _, obj := range k8sObjects(t, "edgefleet.yaml") {
		if obj.Kind == "StatefulSet" {
			require.NoError(t, decodeStrict(obj.raw, &base))
		}
	}
	// Take out what the NATS variant adds and changes: the rest is equal.
	strip := func(s k8sStatefulSet) k8sStatefulSet {
		spec := &s.Spec.Template.Spec
		spec.Containers = slices.Clone(spec.Containers)
		c := &spec.Containers[0]
		c.Args = slices.DeleteFunc(slices.Clone(c.Args), func(a string) bool {
			return strings.HasPrefix(a, "--mqtt-url=") || strings.HasPrefix(a, "--public-mqtt-url=") || a == "--mqtt-persistent-session"
		})
		c.Env = slices.DeleteFunc(slices.Clone(c.Env), func(e k8sEnvVar) bool { return e.Name == "SSL_CERT_FILE" })
		c.VolumeMounts = slices.DeleteFunc(slices.Clone(c.VolumeMounts), func(m k8sVolumeMount) bool { return m.Name == "nats-ca" })
		spec.Volumes = slices.DeleteFunc(slices.Clone(spec.Volumes), func(v k8sVolume) bool { return v.Name == "nats-ca" })
		return s
	}
	assert.Equal(t, strip(base), strip(cp), "the control plane is deploy/k8s/edgefleet.yaml's but for the broker")
	if ca := mountOf(k.cpMounts, k.cpEnv["SSL_CERT_FILE"]); assert.NotEmpty(t, ca, "SSL_CERT_FILE is mounted") {
		if v := volume(cp.Spec.Template.Spec.Volumes, ca); assert.NotNil(t, v.Secret) {
			assert.Contains(t, o.secrets[v.Secret.SecretName].StringData, path.Base(k.cpEnv["SSL_CERT_FILE"]), "the CA file is a key of Secret %s", v.Secret.SecretName)
		}
	}
	// broker sync reaches the control plane's Service.
	api := regexp.MustCompile(`^http://([a-z0-9-]+):([0-9]+)$`).FindStringSubmatch(env[cli.EnvAPI])
	if assert.NotNil(t, api, "broker sync's %s names a Service: %q", cli.EnvAPI, env[cli.EnvAPI]) {
		svc, ok := o.services[api[1]]
		if assert.True(t, ok, "broker sync's API Service %s exists", api[1]) {
			assert.Equal(t, "edgefleet", workload(svc.Spec.Selector), "it selects the control plane")
			assert.True(t, slices.ContainsFunc(svc.Spec.Ports, func(p k8sServicePort) bool {
				return fmt.Sprint(p.Port) == api[2] && p.TargetPort == "api"
			}), "Service %s serves the API on port %s", api[1], api[2])
		}
	}
	// The runbook makes every Secret the kit mounts or reads.
	made := map[string]bool{}
	for _, m := range regexp.MustCompile(`create secret (?:generic|tls) (\S+)`).FindAllStringSubmatch(k.runbook, -1) {
		made[m[1]] = true
	}
	for name, s := range o.sets {
		for _, v := range s.Spec.Template.Spec.Volumes {
			if v.Secret != nil {
				assert.True(t, made[v.Secret.SecretName], "%s's Secret %s is made by the runbook", name, v.Secret.SecretName)
			}
		}
		for _, c := range s.Spec.Template.Spec.Containers {
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					assert.True(t, made[e.ValueFrom.SecretKeyRef.Name], "%s's Secret %s is made by the runbook", name, e.ValueFrom.SecretKeyRef.Name)
				}
			}
		}
	}
	return k
}

// Start script lines: copy the node's config, seed the logins, start.
var (
	natsCopy = regexp.MustCompile(`(?m)^cp (\S+)/\$\{NODE\}\.conf (\S+)\n`)
	natsExec = regexp.MustCompile(`(?m)^exec nats-server -c (\S+)\n`)
)

// natsConfigRun runs the runbook's `edgefleet broker nats-config` as it is
// written, with its secret files and output directory moved into dir, and
// returns what it wrote and the flags it was given.
func natsConfigRun(t *testing.T, runbook, dir string) (map[string]string, map[string]string) {
	t.Helper()
	var cmd []string
	for l := range strings.SplitSeq(strings.ReplaceAll(runbook, "\\\n", " "), "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[0] == "edgefleet" && f[1] == "broker" && f[2] == "nats-config" {
			require.Nil(t, cmd, "one nats-config in the runbook")
			cmd = f[1:]
		}
	}
	require.NotNil(t, cmd, "the runbook runs broker nats-config:\n%s", runbook)
	flags := map[string]string{}
	for i := 0; i+1 < len(cmd); i++ {
		if strings.HasPrefix(cmd[i], "--") && cmd[i] != "--node" {
			flags[cmd[i]] = cmd[i+1]
		}
	}
	out := filepath.Join(dir, "out")
	for i := range cmd {
		if i == 0 {
			continue
		}
		switch cmd[i-1] {
		case "--control-password-file":
			cmd[i] = filepath.Join(dir, "mqtt-password")
			require.NoError(t, os.WriteFile(cmd[i], []byte("cp-secret-password"), 0o600))
		case "--route-password-file":
			cmd[i] = filepath.Join(dir, "route-password")
			require.NoError(t, os.WriteFile(cmd[i], []byte("route-secret-password"), 0o600))
		case "--out-dir":
			cmd[i] = out
		}
	}
	var buf testkit.Buffer
	code := cli.Main(context.Background(), cmd, &buf, &buf)
	require.Equal(t, 0, code, "the runbook's broker nats-config: %s", buf.String())
	files := map[string]string{}
	ents, err := os.ReadDir(out)
	require.NoError(t, err)
	for _, e := range ents {
		files[e.Name()] = readFile(t, filepath.Join(out, e.Name()))
	}
	return files, flags
}

// natsConf reads the options of a rendered node config this test needs.
type natsConf struct {
	serverName, listen, pidFile, http, storeDir, clusterListen string
	routes                                                     []string
	mqttListen, certFile, keyFile, include                     string
	replicas                                                   int
}

func parseNATSConf(t *testing.T, s string) natsConf {
	t.Helper()
	one := func(re string) string {
		m := regexp.MustCompile(re).FindStringSubmatch(s)
		require.NotNil(t, m, "%s in:\n%s", re, s)
		return m[1]
	}
	c := natsConf{
		serverName: one(`(?m)^server_name: "(.*)"$`), listen: one(`(?m)^listen: "(.*)"$`),
		pidFile: one(`(?m)^pid_file: "(.*)"$`), http: one(`(?m)^http: "(.*)"$`),
		storeDir: one(`(?m)^jetstream \{\n  store_dir: "(.*)"\n\}$`), clusterListen: one(`(?m)^cluster \{\n  name: .*\n  listen: "(.*)"$`),
		mqttListen: one(`(?m)^mqtt \{\n  listen: "(.*)"$`), certFile: one(`(?m)^    cert_file: "(.*)"$`),
		keyFile: one(`(?m)^    key_file: "(.*)"$`), include: one(`(?m)^include "(.*)"$`),
	}
	var err error
	c.replicas, err = strconv.Atoi(one(`(?m)^  stream_replicas: ([0-9]+)$`))
	require.NoError(t, err)
	for _, m := range regexp.MustCompile(`(?m)^    "(nats-route://.*)"$`).FindAllStringSubmatch(s, -1) {
		c.routes = append(c.routes, m[1])
	}
	return c
}

func portOf(t *testing.T, hostPort string) int {
	t.Helper()
	i := strings.LastIndex(hostPort, ":")
	require.Positive(t, i, hostPort)
	p, err := strconv.Atoi(hostPort[i+1:])
	require.NoError(t, err, hostPort)
	return p
}

// checkNATSKit compares a kit with the configs its runbook's broker
// nats-config writes.
func checkNATSKit(t *testing.T, k natsKit, files, flags map[string]string) {
	t.Helper()
	copyLine := natsCopy.FindStringSubmatch(k.script)
	seed := scriptSeed.FindStringSubmatch(k.script)
	run := natsExec.FindStringSubmatch(k.script)
	require.NotNil(t, copyLine, "the start script copies the node's config:\n%s", k.script)
	require.NotNil(t, seed, "the start script seeds the logins:\n%s", k.script)
	require.NotNil(t, run, "the start script starts nats-server:\n%s", k.script)
	assert.Equal(t, len(k.script), len(copyLine[0])+len(seed[0])+len(run[0]), "the start script is the three lines this test knows:\n%s", k.script)
	seedDir, confPath := copyLine[1], copyLine[2]
	assert.Equal(t, confPath, run[1], "nats-server starts the config the script copied")

	names := make([]string, 0, len(k.nodes))
	for _, n := range k.nodes {
		names = append(names, n.name+".conf")
	}
	assert.ElementsMatch(t, append(names, cli.NATSAuthFile), keys(files), "broker nats-config writes one config per node the kit runs, and the logins")
	assert.Equal(t, controlUser, flags["--control-user"])
	assert.Contains(t, files[cli.NATSAuthFile], `{user: "`+controlUser+`"`, "the first logins are the control plane's")
	assert.Equal(t, controlUser, flagOf(k.cpArgs, "mqtt-username"), "the control plane logs in as nats-config's --control-user")
	assert.Contains(t, k.cpArgs, "--mqtt-persistent-session", "the control plane's session survives its failover")

	var urls []string
	for _, n := range k.nodes {
		where := k.rel + " " + n.name
		conf, ok := files[n.name+".conf"]
		require.True(t, ok, where)
		c := parseNATSConf(t, conf)
		authPath := path.Join(path.Dir(confPath), c.include)

		assert.Equal(t, n.name, c.serverName, where)
		seedVol := mountOf(n.natsMounts, seedDir)
		assert.NotEmpty(t, seedVol, "%s: the seed %s is mounted", where, seedDir)
		assert.False(t, k.memory[seedVol] || k.persistent[seedVol], "%s: the seed is the operator's secret files", where)
		// The copy, the logins broker sync writes and the pid file it
		// signals are on the volume both see, in memory.
		runVol := mountOf(n.natsMounts, confPath)
		assert.True(t, k.memory[runVol], "%s: the config is copied onto a memory volume (%s)", where, runVol)
		assert.Equal(t, path.Join(path.Dir(confPath), cli.NATSAuthFile), authPath, "%s: the node includes the authorization file next to its config", where)
		assert.Equal(t, []string{authPath, seedDir + "/" + cli.NATSAuthFile, authPath}, seed[1:], "%s: the script seeds the logins the node includes, unless broker sync wrote them", where)
		assert.Equal(t, []string{"broker", "sync"}, n.syncArgs[:2])
		assert.Equal(t, authPath, flagOf(n.syncArgs, "nats-auth-file"), "%s: broker sync writes the file the node includes", where)
		assert.Equal(t, c.pidFile, flagOf(n.syncArgs, "pid-file"), "%s: broker sync signals the node's pid_file", where)
		for _, f := range []string{authPath, c.pidFile} {
			assert.Equal(t, runVol, mountOf(n.natsMounts, f), "%s: %s is on the shared volume", where, f)
			assert.Equal(t, runVol, mountOf(n.syncMounts, f), "%s: broker sync sees %s", where, f)
		}
		tokenVol := mountOf(n.syncMounts, n.syncEnv[cli.EnvTokenFile])
		assert.NotEmpty(t, tokenVol, "%s: broker sync's token file is mounted", where)
		assert.NotEqual(t, runVol, tokenVol, "%s: the token is a secret, not a written file", where)
		assert.Equal(t, natsImageUser(t), n.user, "%s: node and broker sync run as the image's nats user", where)

		assert.True(t, k.persistent[mountOf(n.natsMounts, c.storeDir)], "%s: JetStream's %s is on a persistent volume", where, c.storeDir)
		for _, f := range []string{c.certFile, c.keyFile} {
			v := mountOf(n.natsMounts, f)
			assert.NotEmpty(t, v, "%s: TLS file %s is mounted", where, f)
			assert.False(t, k.memory[v] || k.persistent[v], "%s: TLS file %s is the operator's", where, f)
		}
		// Reachable: MQTT (TLS, logins) and routes (route password);
		// never the client port nor the monitoring port (no login).
		assert.Equal(t, k.mqttPort, portOf(t, c.mqttListen), "%s: MQTT listens on the port the kit publishes", where)
		assert.True(t, k.exposed[k.mqttPort], "%s: MQTT is reachable", where)
		assert.True(t, strings.HasPrefix(c.listen, "127.0.0.1:"), "%s: the NATS client port (no TLS for it here) stays on loopback: %s", where, c.listen)
		assert.False(t, k.exposed[portOf(t, c.http)], "%s: the monitoring port %s has no login: not published", where, c.http)
		assert.Equal(t, len(k.nodes), c.replicas, "%s: every MQTT stream on every node", where)
		var want []string
		for _, o := range k.nodes {
			if o.name != n.name {
				want = append(want, fmt.Sprintf("nats-route://route:route-secret-password@%s:%d", o.host, portOf(t, c.clusterListen)))
			}
		}
		assert.ElementsMatch(t, want, c.routes, "%s: routes to the other nodes by the names the kit gives them", where)
		urls = append(urls, fmt.Sprintf("tls://%s:%d", n.host, k.mqttPort))
	}
	assert.Equal(t, strings.Join(urls, ","), flagOf(k.cpArgs, "mqtt-url"), "the control plane knows every node, by the names in the routes")
	assert.True(t, strings.HasPrefix(flagOf(k.cpArgs, "public-mqtt-url"), "tls://"), "devices are told a TLS URL")
	if ca := k.cpEnv["SSL_CERT_FILE"]; assert.NotEmpty(t, ca, "the control plane trusts the nodes' CA") {
		assert.NotEmpty(t, mountOf(k.cpMounts, ca), "the CA %s is mounted into the control plane", ca)
	}

	// Nothing secret in the shipped files.
	dir := filepath.Join(repoRoot(t), "deploy", k.rel)
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range ents {
		if e.IsDir() || e.Name() == "secrets.example.yaml" {
			continue
		}
		b := readFile(t, filepath.Join(dir, e.Name()))
		for _, bad := range []string{"nats-route://", "$2a$", "$2b$", `password: "`, "PRIVATE KEY-----", "ef_"} {
			assert.False(t, strings.Contains(b, bad), "%s/%s holds no secret: it has %q", k.rel, e.Name(), bad)
		}
	}
}

// runNATSKitScript runs the kit's start script for every node with its
// paths moved into a temporary root, the seed being the configs broker
// nats-config wrote (paths moved too) and nats-server replaced by
// `nats-server -t`: the config the node starts must pass, its include and
// TLS files resolved where the kit puts them. A second start keeps the
// logins broker sync wrote.
func runNATSKitScript(t *testing.T, k natsKit, files map[string]string) {
	t.Helper()
	bin := testkit.NATSBin(t)
	copyLine := natsCopy.FindStringSubmatch(k.script)
	require.NotNil(t, copyLine)
	seedDir, confPath := copyLine[1], copyLine[2]
	ca := testkit.NewCA(t, "nats-kit-ca")
	for _, n := range k.nodes {
		root := t.TempDir()
		move := func(s string) string {
			s = strings.ReplaceAll(s, `"/etc/nats/`, `"`+root+`/etc/nats/`)
			s = strings.ReplaceAll(s, ` /etc/nats/`, ` `+root+`/etc/nats/`)
			return strings.ReplaceAll(s, `"/data/`, `"`+root+`/data/`)
		}
		c := parseNATSConf(t, files[n.name+".conf"])
		for _, d := range []string{seedDir, path.Dir(confPath), c.storeDir, path.Dir(c.certFile)} {
			require.NoError(t, os.MkdirAll(root+d, 0o700))
		}
		for name, text := range files {
			require.NoError(t, os.WriteFile(root+seedDir+"/"+name, []byte(move(text)), 0o600))
		}
		cert := ca.Issue(t, n.host, true)
		certFile, keyFile := testkit.WritePEM(t, t.TempDir(), "server", cert)
		for from, to := range map[string]string{certFile: c.certFile, keyFile: c.keyFile} {
			b, err := os.ReadFile(from)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(root+to, b, 0o600))
		}
		script := strings.Replace(move(" " + k.script)[1:], "exec nats-server -c", "exec "+bin+" -t -c", 1)
		start := func() string {
			t.Helper()
			cmd := exec.Command("/bin/sh", "-c", script)
			cmd.Env = append(os.Environ(), "NODE="+n.name)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			require.NoError(t, cmd.Run(), "%s %s's start script:\n%s\n%s", k.rel, n.name, script, out.String())
			return out.String()
		}
		out := start()
		assert.Contains(t, out, "configuration file "+root+confPath+" is valid", "%s %s", k.rel, n.name)
		auth := root + path.Join(path.Dir(confPath), cli.NATSAuthFile)
		assert.Equal(t, files[cli.NATSAuthFile], readFile(t, auth), "%s %s: the first logins are the seed's", k.rel, n.name)
		// broker sync has written the devices' logins; the node restarts.
		synced := files[cli.NATSAuthFile] + "# written by broker sync\n"
		require.NoError(t, os.WriteFile(auth, []byte(synced), 0o600))
		start()
		assert.Equal(t, synced, readFile(t, auth), "%s %s: a restart keeps the logins broker sync wrote", k.rel, n.name)
	}
}

// TestNATSContainerKits checks deploy/compose/nats and deploy/k8s/nats
// against the configs their runbooks' broker nats-config writes, then runs
// their start script with nats-server -t.
func TestNATSContainerKits(t *testing.T) {
	t.Parallel()
	for name, read := range map[string]func(*testing.T) natsKit{"compose": composeNATSKit, "kubernetes": k8sNATSKit} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			k := read(t)
			files, flags := natsConfigRun(t, k.runbook, t.TempDir())
			checkNATSKit(t, k, files, flags)
			runNATSKitScript(t, k, files)
		})
	}
}

// TestNATSComposeRunbook: the compose runbook writes broker nats-config's
// files where the kit mounts its seed, from the control plane's password
// file, and gives every operator file the owner of the container that
// reads it (bind mounts keep their host owner and mode).
func TestNATSComposeRunbook(t *testing.T) {
	var c composeFile
	require.NoError(t, decodeStrict(deployFile(t, "compose/nats/compose.yaml"), &c))
	runbook := docBlockUnder(t, "### NATS with docker compose\n")
	_, flags := natsConfigRun(t, runbook, t.TempDir())
	assert.Equal(t, "./"+flags["--out-dir"], composeMounts(c.Services["nats-0"])["/etc/nats/seed"], "the nodes' seed is what nats-config wrote")
	assert.Equal(t, "./"+flags["--control-password-file"], c.Secrets["mqtt-password"].File, "the control plane's login is made from its password file")

	type chown struct{ owner, path string }
	var chowns []chown
	for _, m := range regexp.MustCompile(`chown (?:-R )?([0-9]+:[0-9]+) ([^&\n]+)`).FindAllStringSubmatch(runbook, -1) {
		for p := range strings.FieldsSeq(m[2]) {
			chowns = append(chowns, chown{m[1], p})
		}
	}
	require.NotEmpty(t, chowns)
	cpUser := regexp.MustCompile(`(?m)^USER ([0-9]+:[0-9]+)$`).FindStringSubmatch(string(deployFile(t, "image/Dockerfile")))
	require.NotNil(t, cpUser)
	for name, s := range c.Services {
		uid := s.User
		if uid == "" {
			uid = cpUser[1]
		}
		var sources []string
		for _, v := range s.Volumes {
			if src := strings.Split(v, ":")[0]; strings.HasPrefix(src, "./") {
				sources = append(sources, strings.TrimPrefix(src, "./"))
			}
		}
		for _, sec := range s.Secrets {
			sources = append(sources, strings.TrimPrefix(c.Secrets[sec].File, "./"))
		}
		for _, src := range sources {
			covered := false
			for _, ch := range chowns {
				if src == ch.path || strings.HasPrefix(src, ch.path+"/") {
					covered = true
					assert.Equal(t, uid, ch.owner, "%s reads %s: the runbook gives it %s's uid", name, src, name)
				}
			}
			if strings.HasPrefix(src, "secrets/") || strings.HasSuffix(src, ".key") || src == "keys" {
				assert.True(t, covered, "the runbook gives %s (read by %s) an owner", src, name)
			}
		}
	}
}
