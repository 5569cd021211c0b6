// Package demo runs edgefleet's main job end to end with the real binaries:
// a control plane with its embedded broker, three agent processes, two
// trained fraud-model versions pushed and deployed, live inference, and
// the MLOps loop (capture, an accuracy alert at one site, a retrain job,
// a shadow rollout, lineage).
// Imported by controlplane/cli (`edgefleet demo`, `make demo`).
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/internal/oip"
)

// Options configure a demo run.
type Options struct {
	// BinDir holds edgefleet and edgefleet-agent (and libonnxruntime.so.1).
	BinDir string
	// WorkDir is wiped and used for all state; default ./.demo.
	WorkDir string
	// Devices is the number of agent processes; default 3.
	Devices int
	// Keep leaves the control plane and the agents running after the
	// demo, for the web console, until ctx ends.
	Keep bool
	Out  io.Writer
}

type run struct {
	opts    Options
	start   time.Time
	token   string
	api     string
	mqtt    string
	cp      *client.Client // the control plane's API, once its token is known
	procs   []*proc
	out     io.Writer
	outMu   sync.Mutex
	devices []device
}

type device struct {
	id, dir, inference, site string
	pid                      int
}

// agentRSS reports each agent process's resident memory.
func (r *run) agentRSS() string {
	var parts []string
	for _, d := range r.devices {
		parts = append(parts, fmt.Sprintf("%s %.1f MiB", d.id, float64(rssOf(d.pid))/(1<<20)))
	}
	return strings.Join(parts, ", ")
}

// rssOf reads VmRSS of a process from /proc (0 if unknown).
func rssOf(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb uint64
			if _, err := fmt.Sscan(rest, &kb); err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan error
}

// Run executes the demo and stops every process it started, also on error.
func Run(ctx context.Context, opts Options) (err error) {
	if opts.WorkDir == "" {
		opts.WorkDir = ".demo"
	}
	if opts.Devices <= 0 {
		opts.Devices = 3
	}
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	r := &run{opts: opts, start: time.Now(), out: opts.Out}
	defer func() {
		if stopErr := r.stopAll(); stopErr != nil && err == nil {
			err = stopErr
		}
	}()
	steps, cancel := context.WithTimeout(ctx, 8*time.Minute)
	defer cancel()
	if err := r.main(steps); err != nil || !opts.Keep {
		return err
	}
	r.say("\nThe control plane and the agents keep running: web console %s/ui/ (login link above). Interrupt (Ctrl-C) to stop them.", r.api)
	<-ctx.Done()
	r.step("Shutting everything down")
	return nil
}

func (r *run) main(ctx context.Context) error {
	if err := os.RemoveAll(r.opts.WorkDir); err != nil {
		return fmt.Errorf("demo: clean work dir: %w", err)
	}
	if err := os.MkdirAll(r.opts.WorkDir, 0o750); err != nil {
		return fmt.Errorf("demo: %w", err)
	}

	r.step("Training fraud-detection model v1 on synthetic card transactions")
	if err := r.cli(ctx, "model", "train", "--out", r.path("fraud-v1.onnx"), "--seed", "1"); err != nil {
		return err
	}

	r.step("Starting the control plane with its embedded MQTT broker")
	if err := r.startControlPlane(ctx); err != nil {
		return err
	}

	r.step(fmt.Sprintf("Registering %d devices and starting one agent process each", r.opts.Devices))
	for i := 1; i <= r.opts.Devices; i++ {
		if err := r.addDevice(ctx, i); err != nil {
			return err
		}
	}

	r.say("   agent memory before any model: %s", r.agentRSS())

	r.step("Pushing fraud v1: the control plane checks it loads, signs its manifest and publishes it")
	if err := r.cli(ctx, "model", "push", "--name", "fraud", "--version", "1.0.0",
		"--file", r.path("fraud-v1.onnx"), "--meta", r.path("fraud-v1.onnx.meta.json")); err != nil {
		return err
	}
	r.step("Deploying fraud@1.0.0 to every device labelled fleet=demo")
	if err := r.cli(ctx, "deploy", "fraud@1.0.0", "--selector", "fleet=demo"); err != nil {
		return err
	}
	if err := r.waitActive(ctx, "fraud", "1.0.0"); err != nil {
		return err
	}

	r.say("   agent memory with the model loaded: %s", r.agentRSS())

	r.step("Scoring transactions on " + r.devices[0].id + " through its local inference API (Open Inference Protocol)")
	if err := r.score(ctx, r.devices[0]); err != nil {
		return err
	}

	r.step("Training fraud v2 (new seed, more data) and rolling it out while inference keeps running")
	if err := r.cli(ctx, "model", "train", "--out", r.path("fraud-v2.onnx"), "--seed", "2", "--rows", "40000"); err != nil {
		return err
	}
	if err := r.cli(ctx, "model", "push", "--name", "fraud", "--version", "2.0.0",
		"--file", r.path("fraud-v2.onnx"), "--meta", r.path("fraud-v2.onnx.meta.json")); err != nil {
		return err
	}
	load := r.startLoad(ctx, r.devices[0])
	if err := r.cli(ctx, "deploy", "fraud@2.0.0", "--selector", "fleet=demo"); err != nil {
		load.stop()
		return err
	}
	err := r.waitActive(ctx, "fraud", "2.0.0")
	ok, failed := load.stop()
	if err != nil {
		return err
	}
	r.say("   %d inference requests during the switch, %d failed", ok+failed, failed)
	if failed > 0 {
		return fmt.Errorf("demo: %d inference requests failed during the model switch", failed)
	}
	if err := r.score(ctx, r.devices[0]); err != nil {
		return err
	}

	if err := r.retrainLoop(ctx); err != nil {
		return err
	}

	r.step("Fleet table")
	if err := r.cli(ctx, "devices"); err != nil {
		return err
	}
	if r.opts.Keep {
		return nil
	}
	r.step("Shutting everything down")
	if err := r.stopAll(); err != nil {
		return err
	}
	r.say("\nDemo finished in %s. State and logs are in %s.", time.Since(r.start).Round(100*time.Millisecond), r.opts.WorkDir)
	return nil
}

func (r *run) path(name string) string { return filepath.Join(r.opts.WorkDir, name) }

func (r *run) say(format string, args ...any) {
	r.outMu.Lock()
	defer r.outMu.Unlock()
	fmt.Fprintf(r.out, format+"\n", args...)
}

func (r *run) step(msg string) {
	r.say("\n[%5.1fs] %s", time.Since(r.start).Seconds(), msg)
}

// cli runs the edgefleet CLI, echoing the command and its output.
func (r *run) cli(ctx context.Context, args ...string) error {
	r.say("   $ edgefleet %s", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, filepath.Join(r.opts.BinDir, "edgefleet"), args...)
	cmd.Env = append(os.Environ(), "EDGEFLEET_API="+r.api, "EDGEFLEET_TOKEN="+r.token)
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if line != "" {
			r.say("     %s", line)
		}
	}
	if err != nil {
		return fmt.Errorf("demo: edgefleet %s: %w", args[0], err)
	}
	return nil
}

func (r *run) startControlPlane(ctx context.Context) error {
	apiAddr, err := freeAddr()
	if err != nil {
		return err
	}
	mqttAddr, err := freeAddr()
	if err != nil {
		return err
	}
	r.api, r.mqtt = "http://"+apiAddr, "tcp://"+mqttAddr
	tokenFile := r.path("admin.token")
	p, err := r.spawn("control plane", r.path("controlplane.log"), filepath.Join(r.opts.BinDir, "edgefleet"),
		"serve", "--data-dir", r.path("controlplane"), "--listen", apiAddr, "--mqtt-listen", mqttAddr,
		"--token-file", tokenFile,
		// The MLOps loop's step: accuracy alerts over the last 5 minutes
		// (the labels come once, and on a busy machine their reports may be
		// late), evaluated every 2s.
		"--alert-min-accuracy", "0.85", "--alert-window", "5m", "--alert-interval", "2s")
	if err != nil {
		return err
	}
	health, err := client.New(r.api, client.Options{})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := waitFor(ctx, 30*time.Second, p, func() bool { return health.Health(ctx) == nil }); err != nil {
		return fmt.Errorf("demo: control plane did not become healthy (see %s): %w", r.path("controlplane.log"), err)
	}
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		return fmt.Errorf("demo: read admin token: %w", err)
	}
	r.token = strings.TrimSpace(string(tok))
	if r.cp, err = client.New(r.api, client.Options{Token: r.token}); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	r.say("   API %s, MQTT %s, admin token written to %s (shown once, stored hashed)", r.api, r.mqtt, tokenFile)
	// The token travels in the fragment, which the browser keeps to
	// itself: the login page's script puts it into the form.
	r.say("   Web console %s/ui/ — log in with the admin token, or open this login link:\n     %s/ui/login#token=%s", r.api, r.api, r.token)
	return nil
}

func (r *run) addDevice(ctx context.Context, i int) error {
	d := device{id: fmt.Sprintf("dev-%d", i), dir: r.path(fmt.Sprintf("dev-%d", i)), site: fmt.Sprintf("plant-%d", (i+1)/2)}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	d.inference = "http://" + addr
	if err := os.MkdirAll(d.dir, 0o750); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	cfg := filepath.Join(d.dir, "agent.yaml")
	if err := r.cli(ctx, "device", "add", d.id, "--label", "fleet=demo", "--label", "site="+d.site,
		"--config-out", cfg, "--data-dir", d.dir, "--inference-listen", addr); err != nil {
		return err
	}
	// Telemetry every 2s (default 30s), so the demo's alert comes soon.
	if err := appendFile(cfg, "heartbeat_interval: 2s\n"); err != nil {
		return err
	}
	p, err := r.spawn(d.id, filepath.Join(d.dir, "agent.log"), filepath.Join(r.opts.BinDir, "edgefleet-agent"), "--config", cfg)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, 30*time.Second, p, func() bool {
		resp, err := http.Get(d.inference + "/v2/health/live")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}); err != nil {
		return fmt.Errorf("demo: agent %s did not start (see its agent.log): %w", d.id, err)
	}
	d.pid = p.cmd.Process.Pid
	r.say("   agent %s running (pid %d), inference API %s", d.id, d.pid, d.inference)
	r.devices = append(r.devices, d)
	return nil
}

func (r *run) spawn(name, logPath, bin string, args ...string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("demo: start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan error, 1)}
	go func() {
		p.done <- cmd.Wait()
		logf.Close()
	}()
	r.procs = append(r.procs, p)
	return p, nil
}

// stopAll sends SIGTERM to every process, agents first, and waits for each.
func (r *run) stopAll() error {
	var errs []error
	for i := len(r.procs) - 1; i >= 0; i-- {
		p := r.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.done:
			if err != nil {
				errs = append(errs, fmt.Errorf("demo: %s exited: %w", p.name, err))
			}
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
			errs = append(errs, fmt.Errorf("demo: %s did not stop within 15s", p.name))
		}
	}
	r.procs = nil
	return errors.Join(errs...)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("demo: pick a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// waitFor polls cond until it holds, the process p (if not nil) exits, or
// the time is up.
func waitFor(ctx context.Context, limit time.Duration, p *proc, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return nil
		}
		var done chan error // nil (never ready) without a process
		if p != nil {
			done = p.done
		}
		select {
		case err := <-done:
			done <- err
			return fmt.Errorf("%s exited: %v", p.name, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func (r *run) waitActive(ctx context.Context, model, version string) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	last := ""
	for {
		devs, err := r.listDevices(ctx)
		if err == nil {
			active, states := 0, []string{}
			for _, d := range devs {
				rep := d.Reported[model]
				if rep != nil && rep.ActiveVersion == version && rep.State == api.ModelActive {
					active++
				}
				state := "pending"
				if rep != nil {
					state = string(rep.State)
				}
				s := fmt.Sprintf("%s=%s", d.ID, state)
				if rep != nil && rep.Reason != "" {
					s += " (" + rep.Reason + ")"
				}
				states = append(states, s)
			}
			line := strings.Join(states, " ")
			if line != last {
				r.say("   %5.1fs  %s", time.Since(start).Seconds(), line)
				last = line
			}
			if active == len(r.devices) && len(devs) >= len(r.devices) {
				r.say("   all %d devices report %s@%s active after %.1fs", active, model, version, time.Since(start).Seconds())
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: devices did not all activate %s@%s: %s", model, version, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (r *run) listDevices(ctx context.Context) ([]api.Device, error) {
	return r.cp.Devices(ctx, "")
}

// transactions are readable examples; the feature order is the model's.
var transactions = []struct {
	what string
	row  []float32 // amount, hour, merchant_risk, distance_km, velocity_1h, foreign, card_age_days
}{
	{"coffee, 8am, local shop, old card", []float32{4.5, 8, 0.05, 1.2, 1, 0, 1400}},
	{"groceries, 6pm, 5 km from home", []float32{62, 18, 0.1, 5, 1, 0, 900}},
	{"electronics, 3am, risky merchant, abroad", []float32{1450, 3, 0.9, 2400, 6, 1, 12}},
	{"gift cards, 2am, 9 tx in the last hour", []float32{480, 2, 0.8, 300, 9, 1, 30}},
}

func (r *run) score(ctx context.Context, d device) error {
	rows := make([]float32, 0, len(transactions)*7)
	for _, t := range transactions {
		rows = append(rows, t.row...)
	}
	in, err := oip.NewFP32Input("features", []int64{int64(len(transactions)), 7}, rows)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	c := &oip.Client{BaseURL: d.inference}
	resp, err := c.Infer(ctx, "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{in}})
	if err != nil {
		return fmt.Errorf("demo: inference on %s: %w", d.id, err)
	}
	if len(resp.Outputs) == 0 {
		return fmt.Errorf("demo: inference on %s returned no outputs", d.id)
	}
	probs, err := resp.Outputs[0].FP32()
	if err != nil || len(probs) != len(transactions) {
		return fmt.Errorf("demo: inference on %s returned %d values for %d transactions (%v)", d.id, len(probs), len(transactions), err)
	}
	r.say("   POST %s/v2/models/fraud/infer → model_version %s, id %s", d.inference, resp.ModelVersion, resp.ID)
	for i, t := range transactions {
		p := probs[i]
		verdict := "ok"
		if p >= 0.5 {
			verdict = "FRAUD"
		}
		r.say("     %-45s fraud probability %.3f  %s", t.what, p, verdict)
	}
	return nil
}

type loadGen struct {
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	ok, failed atomic.Int64
}

// startLoad keeps sending inference requests to one device until stopped.
func (r *run) startLoad(ctx context.Context, d device) *loadGen {
	ctx, cancel := context.WithCancel(ctx)
	l := &loadGen{cancel: cancel}
	c := &oip.Client{BaseURL: d.inference}
	in, _ := oip.NewFP32Input("features", []int64{1, 7}, transactions[0].row) // finite by construction
	l.wg.Go(func() {
		for ctx.Err() == nil {
			_, err := c.Infer(ctx, "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{in}})
			switch {
			case err == nil:
				l.ok.Add(1)
			case ctx.Err() == nil:
				l.failed.Add(1)
			}
		}
	})
	return l
}

func (l *loadGen) stop() (ok, failed int64) {
	l.cancel()
	l.wg.Wait()
	return l.ok.Load(), l.failed.Load()
}
