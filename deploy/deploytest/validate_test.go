package deploytest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane/cli"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// These tests validate the deployment files that cannot run here (no
// container engine, no Kubernetes, no EMQX) with what can: systemd-analyze,
// strict YAML schemas, promtool, and the control plane's real metrics.

func deployFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", rel))
	require.NoError(t, err)
	return b
}

// decodeStrict decodes one YAML document into v; unknown keys are errors.
func decodeStrict(b []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	return dec.Decode(v)
}

func TestSystemdUnits(t *testing.T) {
	t.Parallel()
	// A root where the units' binaries exist (verify checks ExecStart).
	root := t.TempDir()
	for _, p := range []string{"opt/edgefleet-agent/bin/edgefleet-agent", "usr/local/bin/edgefleet"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(root, p), []byte("#!/bin/sh\n"), 0o755))
	}
	units := map[string][]string{
		"edgefleet-agent.service": {
			"Type=notify", "WatchdogSec=", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
			"ReadWritePaths=/var/lib/edgefleet-agent", "User=edgefleet", "MemoryMax=", "TasksMax=",
			"ExecStart=/opt/edgefleet-agent/bin/edgefleet-agent --config /etc/edgefleet/agent.yaml",
		},
		"edgefleet.service": {
			"Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/var/lib/edgefleet",
			"User=edgefleet", "ExecStart=/usr/local/bin/edgefleet serve",
		},
		// As mosquitto's user (to signal it), writing only the directory of
		// the files it keeps; the token from a file, never argv.
		"edgefleet-broker-sync.service": {
			"User=mosquitto", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=\n",
			"ReadWritePaths=/etc/mosquitto/edgefleet\n", "Environment=EDGEFLEET_TOKEN_FILE=/etc/mosquitto/edgefleet.token",
			"ExecStart=/usr/local/bin/edgefleet broker sync", "--pid-file /run/mosquitto/mosquitto.pid",
			"--passwd-file /etc/mosquitto/edgefleet/passwd", "--acl-file /etc/mosquitto/edgefleet/acl",
			"After=network-online.target mosquitto.service edgefleet.service",
		},
	}
	for name, want := range units {
		t.Run(name, func(t *testing.T) {
			unit := string(deployFile(t, "systemd/"+name))
			for _, w := range want {
				if strings.HasPrefix(w, "--") {
					assert.Contains(t, unit, " "+w+" ", "%s passes %s", name, w)
					continue
				}
				assert.Contains(t, unit, "\n"+w, "%s sets %s", name, w)
			}
			assert.NotContains(t, unit, "--token ", "%s: no token in argv", name)
			verifyUnit(t, root, name, unit)
		})
	}
	t.Run("verify catches a mistake", func(t *testing.T) {
		if _, err := exec.LookPath("systemd-analyze"); err != nil {
			t.Skip("systemd-analyze is not installed (Debian package systemd)")
		}
		unit := strings.Replace(string(deployFile(t, "systemd/edgefleet-agent.service")), "Restart=on-failure", "Restrat=on-failure", 1)
		path := filepath.Join(t.TempDir(), "edgefleet-agent.service")
		require.NoError(t, os.WriteFile(path, []byte(strings.ReplaceAll(unit, "ExecStart=/", "ExecStart="+root+"/")), 0o644))
		_, out := runCode(t, "systemd-analyze", "verify", path)
		assert.Contains(t, out, "Unknown key 'Restrat'", "the verify step can fail")
	})
}

func TestMosquittoACLIsGenerated(t *testing.T) {
	want, err := topics.MosquittoACL(topics.Scheme{}, controlUser, 0)
	require.NoError(t, err)
	assert.Equal(t, want, string(deployFile(t, "mosquitto/acl.conf")),
		"deploy/mosquitto/acl.conf must be topics.MosquittoACL(Scheme{}, %q): regenerate it", controlUser)

	// The Kubernetes ConfigMap carries the same ACL.
	var acl string
	for _, obj := range k8sObjects(t, "mosquitto.yaml") {
		if obj.Kind == "ConfigMap" {
			var cm k8sConfigMap
			require.NoError(t, decodeStrict(obj.raw, &cm))
			acl = cm.Data["edgefleet.acl"]
		}
	}
	assert.Equal(t, want, acl, "deploy/k8s/mosquitto.yaml's edgefleet.acl")

	for _, conf := range []string{"mosquitto/mosquitto.conf", "mosquitto/mosquitto-test.conf", "compose/mosquitto.conf"} {
		lines := confLines(string(deployFile(t, conf)))
		for _, d := range []string{"allow_anonymous false", "use_username_as_clientid true", "max_packet_size 2097152"} {
			assert.Contains(t, lines, d, "%s sets %s", conf, d)
		}
		if conf != "mosquitto/mosquitto-test.conf" {
			for _, d := range []string{"max_queued_messages 1000", "tls_version tlsv1.2"} {
				assert.Contains(t, lines, d, "%s sets %s", conf, d)
			}
		}
		if conf == "compose/mosquitto.conf" {
			assert.Contains(t, lines, "persistence true", "%s keeps retained messages and queues", conf)
		}
	}
}

// TestMosquittoDropInLeavesDebianAlone: deploy/mosquitto/mosquitto.conf is
// a drop-in for Debian's /etc/mosquitto/conf.d; it sets no option that
// Debian's main file sets (mosquitto exits 3 on a repeated pid_file or
// persistence_location, and a second log_dest would log everything twice).
// TestMosquittoProductionConfig starts the two together.
func TestMosquittoDropInLeavesDebianAlone(t *testing.T) {
	main := map[string]bool{}
	for _, l := range confLines(debianMainConf) {
		main[strings.Fields(l)[0]] = true
	}
	require.True(t, main["persistence_location"], "Debian's main file as the test knows it")
	for _, l := range confLines(string(deployFile(t, "mosquitto/mosquitto.conf"))) {
		opt := strings.Fields(l)[0]
		assert.False(t, main[opt], "deploy/mosquitto/mosquitto.conf sets %q, which Debian's main mosquitto.conf sets already", opt)
	}
}

func confLines(s string) []string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// The subset of the compose specification deploy/compose uses; anything
// else in the file is an error (a typo such as "depend_on" would be
// silently ignored by a lenient parser).
type composeFile struct {
	Name     string                    `yaml:"name"`
	Services map[string]composeService `yaml:"services"`
	Secrets  map[string]struct {
		File string `yaml:"file"`
	} `yaml:"secrets"`
	Volumes map[string]struct {
		Driver     string            `yaml:"driver"`
		DriverOpts map[string]string `yaml:"driver_opts"`
	} `yaml:"volumes"`
}

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string            `yaml:"context"`
		Dockerfile string            `yaml:"dockerfile"`
		Args       map[string]string `yaml:"args"`
	} `yaml:"build"`
	Restart     string            `yaml:"restart"`
	User        string            `yaml:"user"`
	Pid         string            `yaml:"pid"`
	DependsOn   yaml.Node         `yaml:"depends_on"`
	Command     []string          `yaml:"command"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Environment map[string]string `yaml:"environment"`
	Secrets     []string          `yaml:"secrets"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	Healthcheck *struct {
		Test     []string `yaml:"test"`
		Interval string   `yaml:"interval"`
		Timeout  string   `yaml:"timeout"`
		Retries  int      `yaml:"retries"`
		Disable  bool     `yaml:"disable"`
	} `yaml:"healthcheck"`
}

// operatorFiles are created by the operator (docs/deploy.md), not shipped.
var operatorFiles = []string{"./secrets/", "./certs", "./keys"}

func TestComposeFile(t *testing.T) {
	var c composeFile
	require.NoError(t, decodeStrict(deployFile(t, "compose/compose.yaml"), &c))
	require.ElementsMatch(t, []string{"mosquitto", "broker-sync", "edgefleet", "prometheus", "grafana"}, keys(c.Services))
	checkComposeRefs(t, "deploy/compose", c)

	cp := c.Services["edgefleet"]
	assert.Contains(t, cp.Command, "--mqtt-url=tcp://mosquitto:1883", "the control plane uses the compose mosquitto")
	assert.Contains(t, cp.Command, "--mqtt-username="+controlUser, "the ACL's control user")
	assert.Contains(t, cp.Command, "--listen=0.0.0.0:8080", "broker-sync reaches the API on the compose network")

	// broker-sync: beside mosquitto, as its uid, in its pid namespace.
	bs, mq := c.Services["broker-sync"], c.Services["mosquitto"]
	assert.Equal(t, "service:mosquitto", bs.Pid, "broker-sync sees mosquitto's process to signal it")
	assert.Equal(t, mq.User, bs.User, "broker-sync runs as mosquitto's uid, so it may signal it")
	assert.Equal(t, "1883:1883", mq.User, "the eclipse-mosquitto image's mosquitto user")
	assert.Equal(t, cp.Image, bs.Image, "broker-sync is the edgefleet image")
	assert.Equal(t, cp.Build, bs.Build, "built like the control plane's (compose would pull an image nothing pushed)")
	if assert.NotNil(t, bs.Healthcheck) {
		assert.True(t, bs.Healthcheck.Disable, "the image's health check asks an API broker-sync does not serve")
	}
	assert.Empty(t, bs.DependsOn.Content, "broker-sync must not wait for the control plane: mosquitto waits for it")
	kit := composeKit(t)
	sync := c.Volumes[kit.syncVolume]
	assert.Equal(t, "tmpfs", sync.DriverOpts["type"], "the sync volume is a tmpfs")
	assert.Contains(t, sync.DriverOpts["o"], "uid=1883,gid=1883", "owned by mosquitto's uid: broker-sync starts first, a plain volume would be root's")
}

// checkComposeRefs checks what a compose file in dir (relative to the
// repository) refers to: secrets are operator files in ./secrets, builds
// have their Dockerfile, dependencies and secrets exist, bind mounts are
// shipped files or the operator's, named volumes are declared, and the
// operator's files stay out of the repository's build context.
func checkComposeRefs(t *testing.T, rel string, c composeFile) {
	t.Helper()
	dir := filepath.Join(repoRoot(t), rel)
	for name, sec := range c.Secrets {
		assert.True(t, strings.HasPrefix(sec.File, "./secrets/"), "secret %s is a file the operator makes in ./secrets", name)
	}
	for name, s := range c.Services {
		assert.True(t, s.Image != "" || s.Build != nil, "service %s has an image or a build", name)
		if s.Build != nil {
			assert.FileExists(t, filepath.Join(dir, s.Build.Context, s.Build.Dockerfile), "service %s's Dockerfile", name)
		}
		for _, dep := range dependsOn(t, s.DependsOn) {
			assert.Contains(t, c.Services, dep, "service %s depends on an existing service", name)
		}
		for _, sec := range s.Secrets {
			assert.Contains(t, c.Secrets, sec, "service %s's secret %s is declared", name, sec)
		}
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			require.GreaterOrEqual(t, len(parts), 2, "volume %q of %s is SRC:DST[:ro]", v, name)
			src := parts[0]
			switch {
			case strings.HasPrefix(src, "."):
				if !slices.ContainsFunc(operatorFiles, func(p string) bool { return strings.HasPrefix(src, p) }) {
					_, err := os.Stat(filepath.Join(dir, src))
					assert.NoError(t, err, "service %s mounts %s, shipped in deploy/", name, src)
				}
			default:
				assert.Contains(t, c.Volumes, src, "service %s's named volume %s is declared", name, src)
			}
		}
	}
	// compose builds with the repository as context: the operator's
	// secrets beside compose.yaml must stay out of it.
	ignore, err := os.ReadFile(filepath.Join(repoRoot(t), ".dockerignore"))
	require.NoError(t, err)
	for _, f := range operatorFiles {
		p := rel + "/" + strings.TrimSuffix(strings.TrimPrefix(f, "./"), "/") + "/"
		assert.Contains(t, confLines(string(ignore)), p, ".dockerignore leaves out the operator's %s", f)
	}
}

func dependsOn(t *testing.T, n yaml.Node) []string {
	t.Helper()
	switch n.Kind {
	case 0:
		return nil
	case yaml.SequenceNode:
		var l []string
		require.NoError(t, n.Decode(&l))
		return l
	case yaml.MappingNode:
		var m map[string]struct {
			Condition string `yaml:"condition"`
		}
		require.NoError(t, n.Decode(&m))
		return keys(m)
	}
	t.Fatalf("depends_on at line %d is neither a list nor a map", n.Line)
	return nil
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Kubernetes objects, strictly: only the fields deploy/k8s uses.
type k8sMeta struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
}

type k8sHeader struct {
	APIVersion string  `yaml:"apiVersion"`
	Kind       string  `yaml:"kind"`
	Metadata   k8sMeta `yaml:"metadata"`
	raw        []byte
}

type k8sConfigMap struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   k8sMeta           `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
}

type k8sSecret struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   k8sMeta           `yaml:"metadata"`
	Type       string            `yaml:"type"`
	StringData map[string]string `yaml:"stringData"`
}

type k8sNamespace struct {
	APIVersion string  `yaml:"apiVersion"`
	Kind       string  `yaml:"kind"`
	Metadata   k8sMeta `yaml:"metadata"`
}

type k8sService struct {
	APIVersion string  `yaml:"apiVersion"`
	Kind       string  `yaml:"kind"`
	Metadata   k8sMeta `yaml:"metadata"`
	Spec       struct {
		Type                     string            `yaml:"type"`
		ClusterIP                string            `yaml:"clusterIP"`
		PublishNotReadyAddresses bool              `yaml:"publishNotReadyAddresses"`
		Selector                 map[string]string `yaml:"selector"`
		Ports                    []k8sServicePort  `yaml:"ports"`
	} `yaml:"spec"`
}

type k8sServicePort struct {
	Name       string `yaml:"name"`
	Port       int    `yaml:"port"`
	TargetPort string `yaml:"targetPort"`
}

type k8sProbe struct {
	TCPSocket *struct {
		Port string `yaml:"port"`
	} `yaml:"tcpSocket"`
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
	InitialDelaySeconds int `yaml:"initialDelaySeconds"`
	PeriodSeconds       int `yaml:"periodSeconds"`
}

type k8sContainer struct {
	Name    string      `yaml:"name"`
	Image   string      `yaml:"image"`
	Command []string    `yaml:"command"`
	Args    []string    `yaml:"args"`
	Env     []k8sEnvVar `yaml:"env"`
	Ports   []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	VolumeMounts []k8sVolumeMount `yaml:"volumeMounts"`
}

type k8sEnvVar struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		SecretKeyRef *struct {
			Name string `yaml:"name"`
			Key  string `yaml:"key"`
		} `yaml:"secretKeyRef"`
		FieldRef *struct {
			FieldPath string `yaml:"fieldPath"`
		} `yaml:"fieldRef"`
	} `yaml:"valueFrom"`
}

type k8sVolumeMount struct {
	Name      string `yaml:"name"`
	MountPath string `yaml:"mountPath"`
	ReadOnly  bool   `yaml:"readOnly"`
}

type k8sStatefulSet struct {
	APIVersion string  `yaml:"apiVersion"`
	Kind       string  `yaml:"kind"`
	Metadata   k8sMeta `yaml:"metadata"`
	Spec       struct {
		ServiceName         string `yaml:"serviceName"`
		Replicas            int    `yaml:"replicas"`
		PodManagementPolicy string `yaml:"podManagementPolicy"`
		Selector            struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata k8sMeta `yaml:"metadata"`
			Spec     struct {
				SecurityContext struct {
					RunAsUser    int  `yaml:"runAsUser"`
					RunAsGroup   int  `yaml:"runAsGroup"`
					FSGroup      int  `yaml:"fsGroup"`
					RunAsNonRoot bool `yaml:"runAsNonRoot"`
				} `yaml:"securityContext"`
				Affinity                      *k8sAffinity   `yaml:"affinity"`
				ShareProcessNamespace         bool           `yaml:"shareProcessNamespace"`
				TerminationGracePeriodSeconds int            `yaml:"terminationGracePeriodSeconds"`
				Containers                    []k8sContainer `yaml:"containers"`
				Volumes                       []k8sVolume    `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
		VolumeClaimTemplates []struct {
			Metadata k8sMeta `yaml:"metadata"`
			Spec     struct {
				AccessModes []string `yaml:"accessModes"`
				Resources   struct {
					Requests map[string]string `yaml:"requests"`
				} `yaml:"resources"`
			} `yaml:"spec"`
		} `yaml:"volumeClaimTemplates"`
	} `yaml:"spec"`
}

type k8sVolume struct {
	Name      string `yaml:"name"`
	ConfigMap *struct {
		Name string `yaml:"name"`
	} `yaml:"configMap"`
	Secret *struct {
		SecretName  string `yaml:"secretName"`
		DefaultMode int    `yaml:"defaultMode"`
		Optional    bool   `yaml:"optional"`
	} `yaml:"secret"`
	EmptyDir *struct {
		Medium    string `yaml:"medium"`
		SizeLimit string `yaml:"sizeLimit"`
	} `yaml:"emptyDir"`
}

type k8sLabelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type k8sNetworkPolicy struct {
	APIVersion string  `yaml:"apiVersion"`
	Kind       string  `yaml:"kind"`
	Metadata   k8sMeta `yaml:"metadata"`
	Spec       struct {
		PodSelector k8sLabelSelector `yaml:"podSelector"`
		PolicyTypes []string         `yaml:"policyTypes"`
		Ingress     []struct {
			From []struct {
				PodSelector       *k8sLabelSelector `yaml:"podSelector"`
				NamespaceSelector *k8sLabelSelector `yaml:"namespaceSelector"`
			} `yaml:"from"`
			Ports []struct {
				Port string `yaml:"port"`
			} `yaml:"ports"`
		} `yaml:"ingress"`
	} `yaml:"spec"`
}

// k8sObjects reads the documents of deploy/k8s/<file>.
func k8sObjects(t *testing.T, file string) []k8sHeader {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(deployFile(t, "k8s/"+file)))
	var out []k8sHeader
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return out
		}
		require.NoError(t, err, file)
		raw, err := yaml.Marshal(&n)
		require.NoError(t, err)
		var h k8sHeader
		require.NoError(t, yaml.Unmarshal(raw, &h))
		h.raw = raw
		out = append(out, h)
	}
}

func TestKubernetesManifests(t *testing.T) {
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
	require.NoError(t, decodeStrict(deployFile(t, "k8s/kustomization.yaml"), &kust))
	assert.Equal(t, "Kustomization", kust.Kind)

	apis := map[string]string{"Namespace": "v1", "Secret": "v1", "ConfigMap": "v1", "Service": "v1", "StatefulSet": "apps/v1",
		"NetworkPolicy": "networking.k8s.io/v1"}
	secrets := map[string]k8sSecret{}
	var sets []k8sStatefulSet
	var services []k8sService
	var policies []k8sNetworkPolicy
	for _, file := range append(slices.Clone(kust.Resources), "secrets.example.yaml") {
		for _, obj := range k8sObjects(t, file) {
			where := fmt.Sprintf("%s: %s %s", file, obj.Kind, obj.Metadata.Name)
			want, ok := apis[obj.Kind]
			if !assert.True(t, ok, "%s: unexpected kind", where) {
				continue
			}
			assert.Equal(t, want, obj.APIVersion, where)
			assert.NotEmpty(t, obj.Metadata.Name, where)
			if obj.Kind != "Namespace" {
				assert.Equal(t, "edgefleet", obj.Metadata.Namespace, where)
			}
			var err error
			switch obj.Kind {
			case "Namespace":
				err = decodeStrict(obj.raw, &k8sNamespace{})
			case "ConfigMap":
				err = decodeStrict(obj.raw, &k8sConfigMap{})
			case "Secret":
				var s k8sSecret
				err = decodeStrict(obj.raw, &s)
				secrets[s.Metadata.Name] = s
			case "Service":
				var s k8sService
				err = decodeStrict(obj.raw, &s)
				services = append(services, s)
			case "StatefulSet":
				var s k8sStatefulSet
				err = decodeStrict(obj.raw, &s)
				sets = append(sets, s)
			case "NetworkPolicy":
				var p k8sNetworkPolicy
				err = decodeStrict(obj.raw, &p)
				policies = append(policies, p)
			}
			assert.NoError(t, err, "%s: strict decode", where)
		}
	}
	require.Len(t, sets, 2, "StatefulSets for the control plane and mosquitto")

	ports := map[string]map[string]bool{} // workload → named container ports
	for _, s := range sets {
		name := s.Metadata.Name
		assert.Equal(t, s.Spec.Selector.MatchLabels, s.Spec.Template.Metadata.Labels, "%s: selector matches the pod labels", name)
		assert.Equal(t, 1, s.Spec.Replicas, "%s: one replica (single-writer state)", name)
		assert.True(t, s.Spec.Template.Spec.SecurityContext.RunAsNonRoot, "%s runs as non-root", name)
		vols := map[string]bool{}
		for _, v := range s.Spec.Template.Spec.Volumes {
			vols[v.Name] = true
			if v.Secret != nil {
				assert.Contains(t, append(keys(secrets), "mosquitto-tls"), v.Secret.SecretName, "%s: volume %s's secret is documented", name, v.Name)
			}
		}
		for _, c := range s.Spec.VolumeClaimTemplates {
			vols[c.Metadata.Name] = true
		}
		ports[name] = map[string]bool{}
		for _, c := range s.Spec.Template.Spec.Containers {
			for _, p := range c.Ports {
				ports[name][p.Name] = true
			}
			for _, m := range c.VolumeMounts {
				assert.True(t, vols[m.Name], "%s: mount %s names a volume or claim", name, m.Name)
			}
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					ref := e.ValueFrom.SecretKeyRef
					assert.Contains(t, secrets[ref.Name].StringData, ref.Key, "%s: env %s from secret %s key %s", name, e.Name, ref.Name, ref.Key)
				}
			}
			for _, p := range []*k8sProbe{c.ReadinessProbe, c.LivenessProbe} {
				switch {
				case p == nil:
				case p.HTTPGet != nil:
					assert.True(t, ports[name][p.HTTPGet.Port], "%s: probe port %s is a named port", name, p.HTTPGet.Port)
					assert.Equal(t, "/healthz", p.HTTPGet.Path, "%s: HTTP probes ask the health endpoint, which needs no token", name)
				case p.TCPSocket != nil:
					assert.True(t, ports[name][p.TCPSocket.Port], "%s: probe port %s is a named port", name, p.TCPSocket.Port)
				default:
					t.Errorf("%s: a probe without httpGet or tcpSocket", name)
				}
			}
			assert.False(t, *c.SecurityContext.AllowPrivilegeEscalation, "%s: no privilege escalation", name)
			assert.NotEmpty(t, c.Resources.Limits["memory"], "%s: memory limit", name)
		}
	}
	for _, s := range sets {
		if s.Metadata.Name == "edgefleet" {
			keysSecret := secrets["edgefleet-keys"].StringData
			assert.Contains(t, keysSecret, "release.key")
			assert.Contains(t, keysSecret, "control.key")
			assert.NotContains(t, keysSecret, "root.key", "the root key stays offline")
			assert.Contains(t, s.Spec.Template.Spec.Containers[0].Args, "--mqtt-url=tcp://mosquitto:1883")
		}
	}
	for _, svc := range services {
		var target string
		for _, s := range sets {
			if maps(s.Spec.Template.Metadata.Labels, svc.Spec.Selector) {
				target = s.Metadata.Name
			}
		}
		if !assert.NotEmpty(t, target, "service %s selects a workload", svc.Metadata.Name) {
			continue
		}
		for _, p := range svc.Spec.Ports {
			assert.True(t, ports[target][p.TargetPort], "service %s: targetPort %s is a port of %s", svc.Metadata.Name, p.TargetPort, target)
		}
	}

	// broker sync beside mosquitto reaches the control plane's Service.
	kit := k8sKit(t)
	api := regexp.MustCompile(`^http://([a-z0-9-]+):([0-9]+)$`).FindStringSubmatch(kit.env[cli.EnvAPI])
	if assert.NotNil(t, api, "broker-sync's %s names a Service: %q", cli.EnvAPI, kit.env[cli.EnvAPI]) {
		i := slices.IndexFunc(services, func(s k8sService) bool { return s.Metadata.Name == api[1] })
		if assert.GreaterOrEqual(t, i, 0, "broker-sync's API Service %s exists", api[1]) {
			svc := services[i]
			assert.Equal(t, map[string]string{"app.kubernetes.io/name": "edgefleet"}, svc.Spec.Selector, "it selects the control plane")
			assert.True(t, slices.ContainsFunc(svc.Spec.Ports, func(p k8sServicePort) bool {
				return fmt.Sprint(p.Port) == api[2] && p.TargetPort == "api"
			}), "Service %s serves the API on port %s", api[1], api[2])
		}
	}

	// NetworkPolicies: each selects a workload, admits only its named ports,
	// and from workloads that exist (or pods labelled as API clients).
	require.Len(t, policies, 2, "a NetworkPolicy for mosquitto and one for the control plane")
	workload := func(sel map[string]string) string {
		for _, s := range sets {
			if maps(s.Spec.Template.Metadata.Labels, sel) {
				return s.Metadata.Name
			}
		}
		return ""
	}
	admits := policyAdmits(t, policies, workload, func(target, port string) bool { return ports[target][port] })
	assert.Equal(t, map[string][]string{"mqtt": {"edgefleet"}, "mqtts": {"*"}}, admits["mosquitto"],
		"mosquitto's plain listener only from the control plane, TLS from anywhere")
	assert.Equal(t, []string{"mosquitto", `label:map[edgefleet.io/api-client:true]`}, admits["edgefleet"]["api"],
		"the API from broker sync and labelled clients only")
	assert.Len(t, admits["edgefleet"], 1, "the control plane admits nothing but the API")
}

// policyAdmits checks NetworkPolicies — each selects a workload, is
// ingress only, names its ports (hasPort: a named port of the workload)
// and admits pods of workloads that exist (or pods labelled in another
// namespace) — and returns what they admit: workload → port → sources
// ("*" anyone, "label:..." labelled pods).
func policyAdmits(t *testing.T, policies []k8sNetworkPolicy, workload func(sel map[string]string) string, hasPort func(target, port string) bool) map[string]map[string][]string {
	t.Helper()
	admits := map[string]map[string][]string{}
	for _, p := range policies {
		target := workload(p.Spec.PodSelector.MatchLabels)
		if !assert.NotEmpty(t, target, "NetworkPolicy %s selects a workload", p.Metadata.Name) {
			continue
		}
		assert.Equal(t, []string{"Ingress"}, p.Spec.PolicyTypes, "NetworkPolicy %s", p.Metadata.Name)
		admits[target] = map[string][]string{}
		for _, in := range p.Spec.Ingress {
			var from []string
			for _, f := range in.From {
				require.NotNil(t, f.PodSelector, "NetworkPolicy %s: sources are pods", p.Metadata.Name)
				src := workload(f.PodSelector.MatchLabels)
				if f.NamespaceSelector != nil {
					src = "label:" + fmt.Sprint(f.PodSelector.MatchLabels)
				}
				assert.NotEmpty(t, src, "NetworkPolicy %s: a source selects a workload", p.Metadata.Name)
				from = append(from, src)
			}
			if len(in.From) == 0 {
				from = []string{"*"}
			}
			require.NotEmpty(t, in.Ports, "NetworkPolicy %s: every rule names ports", p.Metadata.Name)
			for _, port := range in.Ports {
				assert.True(t, hasPort(target, port.Port), "NetworkPolicy %s: port %s is a named port of %s", p.Metadata.Name, port.Port, target)
				admits[target][port.Port] = append(admits[target][port.Port], from...)
			}
		}
	}
	return admits
}

// maps reports whether sel is a non-empty subset of labels.
func maps(labels, sel map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func TestPrometheusConfig(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (Debian package prometheus; CI installs it)")
	}
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	require.NoError(t, os.WriteFile(token, []byte("t"), 0o600))
	rules := filepath.Join(dir, "edgefleet-rules.yml")
	require.NoError(t, os.WriteFile(rules, deployFile(t, "compose/edgefleet-rules.yml"), 0o644))
	conf := strings.NewReplacer("/run/secrets/metrics-token", token, "/etc/prometheus/edgefleet-rules.yml", rules).
		Replace(string(deployFile(t, "compose/prometheus.yml")))
	path := filepath.Join(dir, "prometheus.yml")
	require.NoError(t, os.WriteFile(path, []byte(conf), 0o644))
	code, out := runCode(t, promtool, "check", "config", path)
	assert.Equal(t, 0, code, "promtool check config:\n%s", out)
	assert.Contains(t, out, "6 rules found", "the alert rules were checked too")

	bad := filepath.Join(dir, "bad.yml")
	require.NoError(t, os.WriteFile(bad, []byte(strings.Replace(conf, "scrape_interval", "scrape_intervall", 1)), 0o644))
	code, _ = runCode(t, promtool, "check", "config", bad)
	assert.NotEqual(t, 0, code, "promtool rejects a typo: the check can fail")
}

var metricName = regexp.MustCompile(`\b((?:edgefleet|go|process)_[a-z0-9_]+)\b`)

// declaredMetrics are the metric names the control plane's code (all its
// packages) registers
// (Name: "edgefleet_…"): vectors without children do not show in a scrape.
func declaredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	var files []string
	err := filepath.WalkDir(filepath.Join(repoRoot(t), "controlplane"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".go") {
			files = append(files, path)
		}
		return err
	})
	require.NoError(t, err)
	// Metric names as declared: a Name: field of *Opts, or the first
	// argument of prometheus.NewDesc (collectors that build their own).
	re := regexp.MustCompile(`(?:Name:\s*|NewDesc\(\s*)"(edgefleet_[a-z0-9_]+)"`)
	out := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, m := range re.FindAllSubmatch(b, -1) {
			out[string(m[1])] = true
		}
	}
	return out
}

func TestDashboardAndAlertMetricsExist(t *testing.T) {
	t.Parallel()
	cp := startControlPlane(t, nil)
	req, err := http.NewRequest("GET", cp.srv.APIURL()+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+cp.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	scraped := map[string]bool{}
	for m := range strings.SplitSeq(string(body), "\n") {
		if name, ok := strings.CutPrefix(m, "# TYPE "); ok {
			scraped[strings.Fields(name)[0]] = true
		}
	}
	require.True(t, scraped["edgefleet_devices"], "the scrape has the fleet gauges")
	declared := declaredMetrics(t)

	var dash struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(deployFile(t, "compose/grafana/dashboards/edgefleet.json"), &dash))
	var ds struct {
		Datasources []struct {
			UID string `yaml:"uid"`
		} `yaml:"datasources"`
	}
	require.NoError(t, yaml.Unmarshal(deployFile(t, "compose/grafana/provisioning/datasources/prometheus.yaml"), &ds))
	require.Len(t, ds.Datasources, 1)

	used := map[string][]string{} // metric → where
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if assert.NotNil(t, p.Datasource, "panel %q has a datasource", p.Title) {
			assert.Equal(t, ds.Datasources[0].UID, p.Datasource.UID, "panel %q uses the provisioned datasource", p.Title)
		}
		assert.NotEmpty(t, p.Targets, "panel %q queries something", p.Title)
		for _, tg := range p.Targets {
			for _, m := range metricName.FindAllString(tg.Expr, -1) {
				used[m] = append(used[m], "panel "+p.Title)
			}
		}
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Expr string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	require.NoError(t, yaml.Unmarshal(deployFile(t, "compose/edgefleet-rules.yml"), &rules))
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			for _, m := range metricName.FindAllString(r.Expr, -1) {
				used[m] = append(used[m], "alert "+r.Expr)
			}
		}
	}
	require.NotEmpty(t, used)
	for m, where := range used {
		assert.True(t, scraped[m] || declared[m], "%s (used by %v) is not a metric the control plane exports", m, where)
	}
	for _, fleet := range []string{"edgefleet_devices", "edgefleet_devices_online", "edgefleet_desired_states_issued_total", "edgefleet_model_site_max_psi",
		"edgefleet_device_refusals_total", "edgefleet_devices_trust_behind"} {
		assert.Contains(t, used, fleet, "the dashboard covers %s", fleet)
	}
}

// TestMosquittoListenerOptionsFollowAListener: in mosquitto 2, a listener
// option written before the first listener line opens a default plain
// listener on 0.0.0.0:1883 — unencrypted MQTT on every interface, and a
// clash with an explicit 1883 listener.
func TestMosquittoListenerOptionsFollowAListener(t *testing.T) {
	listenerOptions := []string{"use_username_as_clientid", "protocol", "certfile", "keyfile", "cafile", "tls_version",
		"require_certificate", "use_identity_as_username", "max_connections", "socket_domain", "bind_interface"}
	for _, file := range []string{"mosquitto/mosquitto.conf", "mosquitto/mosquitto-test.conf", "compose/mosquitto.conf", "k8s/mosquitto.yaml"} {
		seenListener := false
		for i, line := range strings.Split(string(deployFile(t, file)), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || strings.HasPrefix(f[0], "#") {
				continue
			}
			if f[0] == "listener" {
				seenListener = true
			}
			if !seenListener && slices.Contains(listenerOptions, f[0]) {
				t.Errorf("deploy/%s:%d: %q comes before any listener line (mosquitto would open 0.0.0.0:1883)", file, i+1, f[0])
			}
		}
	}
}

// TestAgentConfigExample: deploy/agent/agent.yaml.example, which "shows
// every key", is a config the agent accepts and names every key it has.
func TestAgentConfigExample(t *testing.T) {
	example := deployFile(t, "agent/agent.yaml.example")
	_, err := agent.ParseConfig(example)
	require.NoError(t, err, "the agent accepts its example config")
	typ := reflect.TypeFor[agent.Config]()
	for i := range typ.NumField() {
		key, _, _ := strings.Cut(typ.Field(i).Tag.Get("yaml"), ",")
		assert.Regexp(t, `(?m)^`+regexp.QuoteMeta(key)+`:`, string(example), "agent.yaml.example shows %s", key)
	}
}
