package scenario

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/models"
	"github.com/edgefleet/edgefleet/fleet-sim/sim"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/onnxmodel"
	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func registerBuiltins(r *Registry) {
	r.RegisterAction("push_model", func() Action { return &PushModel{} })
	r.RegisterAction("deploy", func() Action { return &Deploy{} })
	r.RegisterAction("wait_active", func() Action { return &WaitActive{} })
	r.RegisterAction("wait_phase", func() Action { return &WaitPhase{} })
	r.RegisterAction("wait_labelled", func() Action { return &WaitLabelled{} })
	r.RegisterAction("restart", func() Action { return &Restart{} })
	r.RegisterAction("disconnect", func() Action { return &Disconnect{} })
	r.RegisterAction("restart_control_plane", func() Action { return &RestartControlPlane{} })
	r.RegisterAction("corrupt_chunks", func() Action { return &CorruptChunks{} })
	r.RegisterAction("throttle", func() Action { return &Throttle{} })
	r.RegisterAction("shift_traffic", func() Action { return &ShiftTraffic{} })
	r.RegisterAction("sleep", func() Action { return &Sleep{} })
	r.RegisterAction("skew_clock", func() Action { return &SkewClock{} })
	r.RegisterAction("hold_at_phase", func() Action { return &HoldAtPhase{} })
	r.RegisterAction("restart_held", func() Action { return &RestartHeld{} })

	r.RegisterAssertion("all_active", func() Assertion { return &AllActive{} })
	r.RegisterAssertion("never_ran", func() Assertion { return &NeverRan{} })
	r.RegisterAssertion("no_failed_inference", func() Assertion { return &NoFailedInference{} })
	r.RegisterAssertion("all_committed", func() Assertion { return &AllCommitted{} })
	r.RegisterAssertion("all_refused", func() Assertion { return &AllRefused{} })
	r.RegisterAssertion("interrupted", func() Assertion { return &Interrupted{} })
	registerRollouts(r)
	registerRetrain(r)
	registerPeers(r)
}

// Pick chooses devices: those matching Selector ("" all), then Count of
// them or a Fraction (0..1] of them, spread evenly; neither means all.
type Pick struct {
	Selector string  `yaml:"selector"`
	Count    int     `yaml:"count"`
	Fraction float64 `yaml:"fraction"`
}

func (p Pick) validate() error {
	if p.Count < 0 || p.Fraction < 0 || p.Fraction > 1 {
		return fmt.Errorf("count %d must be ≥ 0 and fraction %v in [0, 1]", p.Count, p.Fraction)
	}
	if p.Count > 0 && p.Fraction > 0 {
		return errors.New("give count or fraction, not both")
	}
	return nil
}

// pick returns the chosen members among those that keep returns true for
// (nil keeps all).
func (p Pick) pick(env *Env, keep func(*sim.Member) bool) ([]*sim.Member, error) {
	all, err := env.Select(p.Selector)
	if err != nil {
		return nil, err
	}
	var cands []*sim.Member
	for _, m := range all {
		if keep == nil || keep(m) {
			cands = append(cands, m)
		}
	}
	n := len(cands)
	switch {
	case p.Count > 0:
		n = min(p.Count, len(cands))
	case p.Fraction > 0:
		n = int(float64(len(cands))*p.Fraction + 0.5)
	}
	if n == len(cands) {
		return cands, nil
	}
	out := make([]*sim.Member, 0, n)
	for i := range n {
		out = append(out, cands[i*len(cands)/n])
	}
	return out, nil
}

func ids(ms []*sim.Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Device.ID
	}
	return out
}

// PushModel uploads a new model version: the built-in fraud model, trained
// on the spot, or the ONNX model in File with the metadata in Meta.
type PushModel struct {
	Model   string `yaml:"model"`
	Version string `yaml:"version"`
	Seed    uint64 `yaml:"seed"`
	// Rows of synthetic data to train on; default 4000.
	Rows   int    `yaml:"rows"`
	Params Params `yaml:"params"`
	// PadBytes appends an ONNX doc_string of this many bytes, to make the
	// model as large as a real one (1048576 for 1 MiB).
	PadBytes int `yaml:"pad_bytes"`
	// BadTestVectors inverts the expected outputs of the test vectors, so
	// every agent must refuse the version (the upload is forced).
	BadTestVectors bool `yaml:"bad_test_vectors"`
	// Force uploads even if the control plane's checks fail.
	Force bool `yaml:"force"`
	// File is an ONNX model to upload instead of training the fraud model,
	// relative to the scenario file; it excludes seed, rows, params and
	// bad_test_vectors.
	File string `yaml:"file"`
	// Meta is File's metadata: the manifest fields as JSON (inputs,
	// outputs, reference statistics, test vectors, tolerance ...), what
	// edgefleet model push --meta uploads and edgefleet model train writes.
	// Default: <file>.meta.json when it exists, else none.
	Meta string `yaml:"meta"`
	// SampleInputs are File's sample inputs (an OIP request JSON, or a CSV
	// for a model with one tabular input): the control plane records test
	// vectors from them, as edgefleet model push --sample-inputs does.
	SampleInputs string `yaml:"sample_inputs"`
	// ReferenceData is a CSV of training rows for File's drift reference
	// statistics (edgefleet model push --reference-data); its header names
	// the features of csv traffic when there is no metadata.
	ReferenceData string `yaml:"reference_data"`

	// onnx, meta, samples and reference are the files' content, read at
	// load.
	onnx, samples, reference []byte
	meta                     *efpb.Manifest
}

const (
	// maxModelFile bounds push_model's file.
	maxModelFile = 256 << 20
	// maxMetaFile bounds push_model's meta (the control plane's limit).
	maxMetaFile = 8 << 20
)

// Validate implements the optional validation; it reads File and Meta.
func (p *PushModel) Validate(sc *Scenario) error {
	if p.Model == "" || p.Version == "" {
		return errors.New("model and version are required")
	}
	if p.PadBytes < 0 || p.PadBytes > 256<<20 {
		return fmt.Errorf("pad_bytes %d is outside [0, 256 MiB]", p.PadBytes)
	}
	if p.File == "" {
		switch {
		case p.Meta != "":
			return errors.New("meta needs file")
		case p.SampleInputs != "" || p.ReferenceData != "":
			return errors.New("sample_inputs and reference_data need file")
		}
		_, err := p.Params.Fraud()
		return err
	}
	if p.Seed != 0 || p.Rows != 0 || p.Params != (Params{}) || p.BadTestVectors {
		return errors.New("file excludes seed, rows, params and bad_test_vectors (they train the built-in fraud model)")
	}
	return p.load(sc)
}

// load reads File and Meta.
func (p *PushModel) load(sc *Scenario) error {
	path := sc.path(p.File)
	model, err := readBounded(path, maxModelFile)
	if err != nil {
		return fmt.Errorf("file: %w", err)
	}
	if p.SampleInputs != "" {
		if p.samples, err = readBounded(sc.path(p.SampleInputs), models.MaxSamplesSize); err != nil {
			return fmt.Errorf("sample_inputs: %w", err)
		}
	}
	if p.ReferenceData != "" {
		if p.reference, err = readBounded(sc.path(p.ReferenceData), models.MaxReferenceSize); err != nil {
			return fmt.Errorf("reference_data: %w", err)
		}
	}
	metaPath := sc.path(p.Meta)
	if p.Meta == "" {
		metaPath = path + ".meta.json"
		if _, err := os.Stat(metaPath); errors.Is(err, fs.ErrNotExist) {
			p.onnx, p.meta = model, nil
			return nil
		}
	}
	data, err := readBounded(metaPath, maxMetaFile)
	if err != nil {
		return fmt.Errorf("meta: %w", err)
	}
	meta := &efpb.Manifest{}
	if err := protojson.Unmarshal(data, meta); err != nil {
		return fmt.Errorf("meta %s is not a manifest JSON document (as edgefleet model train writes): %w", metaPath, err)
	}
	p.onnx, p.meta = model, meta
	return nil
}

// readBounded reads a file of at most limit bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return data, nil
}

// csvInputs returns the model's inputs as csv traffic feeds them, with
// their columns, and each input's fixed number of columns (0: any). Every
// input must be of shape [rows] or [rows, features] (rows dynamic or 1)
// and of a datatype a cell holds (numbers, booleans, strings). Columns:
//   - a single input takes the features its metadata's reference
//     statistics name, else the reference data's header, else (nil) every
//     csv column but the label;
//   - of several inputs, each takes the features the reference statistics
//     name for it, else one column named after the input (an input of one
//     value per row), as the control plane names reference data columns.
func (p *PushModel) csvInputs() ([]sim.CSVInput, []int64, error) {
	if p.File == "" {
		return []sim.CSVInput{{Name: fraud.InputName, Datatype: tensor.FP32, Columns: fraud.FeatureNames()}}, []int64{fraud.NumFeatures}, nil
	}
	ins := p.meta.GetInputs()
	if len(ins) == 0 {
		// No metadata: the model says what it takes.
		m, err := onnxmodel.Read(p.onnx)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", p.File, err)
		}
		d := infer.DescribeModel(m)
		if err := d.Err(); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", p.File, err)
		}
		ins, _ = d.Specs()
	}
	if len(ins) == 0 {
		return nil, nil, fmt.Errorf("%s declares no inputs", p.File)
	}
	out := make([]sim.CSVInput, len(ins))
	widths := make([]int64, len(ins))
	for i, in := range ins {
		d, err := tensor.Parse(in.GetDatatype())
		if err != nil {
			return nil, nil, fmt.Errorf("input %s of %s: %w", in.GetName(), p.File, err)
		}
		shape := in.GetShape()
		if len(shape) == 0 || len(shape) > 2 || (shape[0] != -1 && shape[0] != 1) || (len(shape) == 2 && (shape[1] == 0 || shape[1] < -1)) {
			return nil, nil, fmt.Errorf("input %s of %s has shape %v; csv traffic feeds inputs of shape [-1] or [-1, features] (or 1 row)", in.GetName(), p.File, shape)
		}
		out[i] = sim.CSVInput{Name: in.GetName(), Datatype: d, Rank1: len(shape) == 1}
		widths[i] = 1
		if len(shape) == 2 {
			widths[i] = max(shape[1], 0)
		}
		var names []string
		for _, ref := range p.meta.GetReference() {
			if ref.GetInput() == in.GetName() || (ref.GetInput() == "" && i == 0) {
				names = append(names, ref.GetName())
			}
		}
		if len(ins) == 1 {
			out[i].Columns = p.singleInputColumns(names, widths[i])
			continue
		}
		switch {
		case names != nil:
		case widths[i] == 1:
			names = []string{in.GetName()}
		default:
			return nil, nil, fmt.Errorf("input %s of %s takes several values per row (shape %v); with %d inputs, csv traffic needs its columns named in the metadata's reference statistics (features with input %q)",
				in.GetName(), p.File, shape, len(ins), in.GetName())
		}
		if w := widths[i]; (w > 0 && int64(len(names)) != w) || slices.Contains(names, "") {
			return nil, nil, fmt.Errorf("input %s of %s takes %d values per row; the metadata's reference statistics name %d features for it (%s)", in.GetName(), p.File, w, len(names), strings.Join(names, ", "))
		}
		out[i].Columns = names
	}
	return out, widths, nil
}

// singleInputColumns returns the columns of a model's only input: the
// features the reference statistics name, else the reference data's
// header; nil (the csv's columns, in order) when neither names width
// features.
func (p *PushModel) singleInputColumns(names []string, width int64) []string {
	if names == nil && p.reference != nil {
		// The reference data's header names the features, in input order.
		if header, err := csv.NewReader(bytes.NewReader(p.reference)).Read(); err == nil {
			for _, h := range header {
				names = append(names, strings.TrimSpace(h))
			}
			if width > 0 && int64(len(names)) > width {
				names = names[:width]
			}
		}
	}
	if len(names) == 0 || (width > 0 && int64(len(names)) != width) || slices.Contains(names, "") {
		return nil // unnamed: the csv's columns, in order
	}
	return names
}

// Run implements Action.
func (p *PushModel) Run(ctx context.Context, env *Env) (string, error) {
	if p.File != "" {
		return p.runFile(ctx, env)
	}
	params, err := p.Params.Fraud()
	if err != nil {
		return "", err
	}
	rows := p.Rows
	if rows == 0 {
		rows = 4000
	}
	art, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: p.Seed, Rows: rows, Params: params})
	if err != nil {
		return "", err
	}
	model := art.ONNX
	if p.PadBytes > 0 {
		model = onnxbuild.Pad(model, p.PadBytes)
	}
	meta := art.Metadata()
	if p.BadTestVectors {
		for _, v := range meta.TestVectors {
			for _, t := range v.Expected {
				for i, x := range t.Data {
					t.Data[i] = 1 - x
				}
			}
		}
	}
	mv, err := env.Fleet.ControlPlane().AddModelVersion(ctx, p.Model, p.Version, model, meta, p.Force || p.BadTestVectors)
	if err != nil {
		return "", err
	}
	env.Models[p.Model+"@"+p.Version] = art
	env.setModelSize(p.Model+"@"+p.Version, mv.Size)
	checks := "checks passed"
	if !mv.Checks.Passed {
		checks = "checks failed (forced): " + mv.Checks.Error
	}
	return fmt.Sprintf("%s@%s: %d bytes, %d chunks, test accuracy %.4f; %s", p.Model, p.Version, mv.Size, mv.ChunkCount, art.Test.Accuracy, checks), nil
}

// runFile uploads File with Meta.
func (p *PushModel) runFile(ctx context.Context, env *Env) (string, error) {
	if p.onnx == nil {
		if err := p.load(env.Scenario); err != nil {
			return "", err
		}
	}
	model := p.onnx
	if p.PadBytes > 0 {
		model = onnxbuild.Pad(model, p.PadBytes)
	}
	var meta *efpb.Manifest
	if p.meta != nil {
		meta = proto.CloneOf(p.meta)
	}
	mv, err := env.Fleet.ControlPlane().AddModelUpload(ctx, models.Upload{Name: p.Model, Version: p.Version, Model: model, Meta: meta,
		Samples: p.samples, Reference: p.reference, Force: p.Force})
	if err != nil {
		return "", err
	}
	env.setModelSize(p.Model+"@"+p.Version, mv.Size)
	checks := "checks passed"
	if !mv.Checks.Passed {
		checks = "checks failed (forced): " + mv.Checks.Error
	}
	return fmt.Sprintf("%s@%s from %s: %d bytes, %d chunks; %s", p.Model, p.Version, p.File, mv.Size, mv.ChunkCount, checks), nil
}

// Deploy issues desired states for a model version to a selector or to
// devices.
type Deploy struct {
	Model    string   `yaml:"model"`
	Version  string   `yaml:"version"`
	Selector string   `yaml:"selector"`
	Devices  []string `yaml:"devices"`
}

// Validate implements the optional validation.
func (d *Deploy) Validate(*Scenario) error {
	if d.Model == "" || d.Version == "" {
		return errors.New("model and version are required")
	}
	return nil
}

// Run implements Action.
func (d *Deploy) Run(ctx context.Context, env *Env) (string, error) {
	req := api.DeployRequest{Model: d.Model, Version: d.Version, Selector: d.Selector, Devices: d.Devices}
	if req.Selector == "" && len(req.Devices) == 0 {
		req.Devices = ids(env.Fleet.Members()) // the whole fleet
	}
	res, err := env.Fleet.ControlPlane().Deploy(ctx, req)
	if err != nil {
		return "", err
	}
	env.markDeployed(d.Model+"@"+d.Version, env.Since())
	return fmt.Sprintf("%s@%s issued to %d devices", d.Model, d.Version, len(res.Devices)), nil
}

// WaitActive waits until every selected device serves model@version. Its
// timeout and max_timeout work as every wait's (see WaitLimits).
type WaitActive struct {
	Model      string `yaml:"model"`
	Version    string `yaml:"version"`
	Selector   string `yaml:"selector"`
	WaitLimits `yaml:",inline"`
}

// Validate implements the optional validation.
func (w *WaitActive) Validate(*Scenario) error {
	if w.Model == "" || w.Version == "" {
		return errors.New("model and version are required")
	}
	return w.WaitLimits.validate()
}

// Run implements Action.
func (w *WaitActive) Run(ctx context.Context, env *Env) (string, error) {
	start := env.Since()
	check := &AllActive{Model: w.Model, Version: w.Version, Selector: w.Selector}
	var why string
	res, err := env.wait(ctx, waitSpec{limits: w.WaitLimits}, func() bool {
		var ok bool
		ok, why = check.Check(env)
		return ok
	})
	if err != nil {
		return "", fmt.Errorf("not every device active on %s@%s: %s; %w", w.Model, w.Version, why, err)
	}
	ms, _ := env.Select(w.Selector)
	return fmt.Sprintf("%d devices active on %s@%s after %.2fs%s", len(ms), w.Model, w.Version, (env.Since() - start).Seconds(), res.note()), nil
}

// WaitPhase waits until enough selected devices are in an update phase
// (manifest, downloading, verifying, staging) of model (and version) at
// the same moment, as polled every 25ms. A phase shorter than that may
// never be seen: when the wait fails it says how many devices entered the
// phase (as their agents report it, see sim.Member.PhaseEntries) and left
// it unseen. Its timeout and max_timeout work as every wait's (see
// WaitLimits).
type WaitPhase struct {
	Model      string      `yaml:"model"`
	Version    string      `yaml:"version"`
	Phase      agent.Phase `yaml:"phase"`
	Pick       Pick        `yaml:",inline"`
	WaitLimits `yaml:",inline"`
}

// Validate implements the optional validation.
func (w *WaitPhase) Validate(*Scenario) error {
	if w.Model == "" || w.Phase == "" {
		return errors.New("model and phase are required")
	}
	if err := w.WaitLimits.validate(); err != nil {
		return err
	}
	return w.Pick.validate()
}

// Run implements Action.
func (w *WaitPhase) Run(ctx context.Context, env *Env) (string, error) {
	all, err := env.Select(w.Pick.Selector)
	if err != nil {
		return "", err
	}
	want := len(all)
	switch {
	case w.Pick.Count > 0:
		want = min(w.Pick.Count, len(all))
	case w.Pick.Fraction > 0:
		want = int(float64(len(all))*w.Pick.Fraction + 0.5)
	}
	entered := make([]uint64, len(all)) // phase entries before the step
	for i, m := range all {
		entered[i] = m.PhaseEntries(w.Model, w.Version, w.Phase)
	}
	seen := make([]bool, len(all)) // seen in the phase by a poll
	var have, most int
	res, err := env.wait(ctx, waitSpec{limits: w.WaitLimits}, func() bool {
		have = 0
		for i, m := range all {
			s := Status(m, w.Model)
			if s.Phase == w.Phase && (w.Version == "" || s.Target == w.Version) {
				have++
				seen[i] = true
			}
		}
		most = max(most, have)
		return have >= want
	})
	if err != nil {
		target := w.Model
		if w.Version != "" {
			target += "@" + w.Version
		}
		msg := fmt.Sprintf("only %d of the %d wanted devices were in phase %s of %s at the same moment (at most %d)", have, want, w.Phase, target, most)
		unseen := 0
		for i, m := range all {
			if !seen[i] && m.PhaseEntries(w.Model, w.Version, w.Phase) > entered[i] {
				unseen++
			}
		}
		if unseen > 0 {
			hint := "hold_at_phase holds devices there"
			if w.Phase == "downloading" {
				hint = "throttle the download (network: {proxy: true} and a throttle step) to hold devices there"
			}
			msg += fmt.Sprintf("; %d devices entered %s and left it between polls: the phase is too short to catch; %s", unseen, w.Phase, hint)
		}
		return "", fmt.Errorf("%s; %w", msg, err)
	}
	return fmt.Sprintf("%d devices in phase %s%s", have, w.Phase, res.note()), nil
}

// Restart stops agents and starts them again on the same state (as after a
// crash or a reboot). With Phase set, only devices in that update phase of
// Model are picked: "restart mid-download".
type Restart struct {
	Pick  Pick        `yaml:",inline"`
	Model string      `yaml:"model"`
	Phase agent.Phase `yaml:"phase"`
}

// Validate implements the optional validation.
func (r *Restart) Validate(*Scenario) error {
	if r.Phase != "" && r.Model == "" {
		return errors.New("phase needs model")
	}
	return r.Pick.validate()
}

// Run implements Action.
func (r *Restart) Run(ctx context.Context, env *Env) (string, error) {
	var keep func(*sim.Member) bool
	if r.Phase != "" {
		keep = func(m *sim.Member) bool { return Status(m, r.Model).Phase == r.Phase }
	}
	ms, err := r.Pick.pick(env, keep)
	if err != nil {
		return "", err
	}
	if len(ms) == 0 {
		return "", errors.New("no device matched")
	}
	var wg sync.WaitGroup
	errs := make([]error, len(ms))
	sem := make(chan struct{}, 32)
	for i, m := range ms {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = env.Fleet.Restart(ctx, m.Device.ID)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	what := ""
	if r.Phase != "" {
		what = " while " + string(r.Phase)
	}
	return fmt.Sprintf("restarted %d agents%s", len(ms), what), nil
}

func needProxy(sc *Scenario) error {
	if !sc.Network.Proxy {
		return errors.New("needs network: {proxy: true}")
	}
	return nil
}

// Disconnect cuts the picked devices' broker connections and keeps their
// links down for Down (simulated time; 0: they may reconnect at once). Many
// devices at once make a reconnect storm.
type Disconnect struct {
	Pick Pick          `yaml:",inline"`
	Down time.Duration `yaml:"down"`
}

// Validate implements the optional validation.
func (d *Disconnect) Validate(sc *Scenario) error {
	if err := needProxy(sc); err != nil {
		return err
	}
	return d.Pick.validate()
}

// Run implements Action.
func (d *Disconnect) Run(_ context.Context, env *Env) (string, error) {
	ms, err := d.Pick.pick(env, nil)
	if err != nil {
		return "", err
	}
	n := env.Fleet.Proxy().Disconnect(ids(ms), env.Real(d.Down))
	return fmt.Sprintf("cut %d connections of %d devices, down for %v", n, len(ms), d.Down), nil
}

// CorruptChunks flips a byte in the next Chunks chunk publishes each picked
// device receives.
type CorruptChunks struct {
	Pick   Pick `yaml:",inline"`
	Chunks int  `yaml:"chunks"`
}

// Validate implements the optional validation.
func (c *CorruptChunks) Validate(sc *Scenario) error {
	if err := needProxy(sc); err != nil {
		return err
	}
	if c.Chunks < 0 {
		return errors.New("chunks must be ≥ 0")
	}
	return c.Pick.validate()
}

// Run implements Action.
func (c *CorruptChunks) Run(_ context.Context, env *Env) (string, error) {
	ms, err := c.Pick.pick(env, nil)
	if err != nil {
		return "", err
	}
	n := max(c.Chunks, 1)
	env.Fleet.Proxy().CorruptChunks(ids(ms), n)
	return fmt.Sprintf("the next %d chunk publishes to %d devices will be corrupted", n, len(ms)), nil
}

// Throttle caps the picked devices' download bandwidth (a slow link).
type Throttle struct {
	Pick           Pick `yaml:",inline"`
	BytesPerSecond int  `yaml:"bytes_per_second"`
}

// Validate implements the optional validation.
func (t *Throttle) Validate(sc *Scenario) error {
	if err := needProxy(sc); err != nil {
		return err
	}
	if t.BytesPerSecond < 0 {
		return errors.New("bytes_per_second must be ≥ 0 (0 removes the cap)")
	}
	return t.Pick.validate()
}

// Run implements Action.
func (t *Throttle) Run(_ context.Context, env *Env) (string, error) {
	ms, err := t.Pick.pick(env, nil)
	if err != nil {
		return "", err
	}
	env.Fleet.Proxy().Throttle(ids(ms), t.BytesPerSecond)
	return fmt.Sprintf("%d devices capped at %d B/s", len(ms), t.BytesPerSecond), nil
}

// ShiftTraffic changes the picked devices' transaction distribution
// (injected drift): new fraud parameters, or, when the traffic replays a
// CSV, the rows of another CSV (relative to the scenario file, with the
// same columns).
type ShiftTraffic struct {
	Pick   Pick   `yaml:",inline"`
	Params Params `yaml:"params"`
	CSV    string `yaml:"csv"`

	// csv holds CSV's rows, read at load.
	csv *sim.CSVData
}

// Validate implements the optional validation.
func (s *ShiftTraffic) Validate(sc *Scenario) error {
	if sc.Traffic == nil {
		return errors.New("needs a traffic section")
	}
	switch {
	case sc.Traffic.CSV != "" && s.CSV == "":
		return errors.New("the traffic replays a csv: shift it with csv (other rows), not params")
	case sc.Traffic.CSV == "" && s.CSV != "":
		return errors.New("csv needs traffic from a csv (traffic: {csv: ...})")
	case s.CSV != "" && s.Params != (Params{}):
		return errors.New("give csv or params, not both")
	}
	if _, err := s.Params.Fraud(); err != nil {
		return err
	}
	return s.Pick.validate()
}

// loadFiles implements fileLoader.
func (s *ShiftTraffic) loadFiles(sc *Scenario) error {
	if s.CSV == "" {
		return nil
	}
	d, err := sim.LoadCSV(sc.path(s.CSV), sim.CSVOptions{Inputs: sc.Traffic.csv.Inputs, Label: sc.Traffic.LabelColumn})
	if err != nil {
		return err
	}
	s.csv = d
	return nil
}

// Run implements Action.
func (s *ShiftTraffic) Run(_ context.Context, env *Env) (string, error) {
	ms, err := s.Pick.pick(env, nil)
	if err != nil {
		return "", err
	}
	if s.CSV != "" {
		if s.csv == nil {
			return "", errors.New("csv was not read: the scenario was not loaded")
		}
		if err := env.Traffic.ShiftCSV(ids(ms), s.csv); err != nil {
			return "", err
		}
		env.markShifted(s.Pick.Selector, env.Clock.Now())
		return fmt.Sprintf("%d devices now replay %s", len(ms), s.CSV), nil
	}
	p, err := s.Params.Fraud()
	if err != nil {
		return "", err
	}
	if err := env.Traffic.ShiftParams(ids(ms), p); err != nil {
		return "", err
	}
	env.markShifted(s.Pick.Selector, env.Clock.Now())
	return fmt.Sprintf("traffic of %d devices shifted", len(ms)), nil
}

// Sleep waits For, in simulated time.
type Sleep struct {
	For time.Duration `yaml:"for"`
}

// Run implements Action.
func (s *Sleep) Run(ctx context.Context, env *Env) (string, error) {
	t := time.NewTimer(env.Real(s.For))
	defer t.Stop()
	select {
	case <-t.C:
		return "", nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// SkewClock sets the picked devices' clocks off by By (negative: behind).
type SkewClock struct {
	Pick Pick          `yaml:",inline"`
	By   time.Duration `yaml:"by"`
}

// Validate implements the optional validation.
func (s *SkewClock) Validate(*Scenario) error {
	if s.By == 0 {
		return errors.New("by is required (e.g. 10m or -2h)")
	}
	return s.Pick.validate()
}

// Run implements Action.
func (s *SkewClock) Run(_ context.Context, env *Env) (string, error) {
	ms, err := s.Pick.pick(env, nil)
	if err != nil {
		return "", err
	}
	for _, m := range ms {
		m.SkewClock(s.By)
	}
	return fmt.Sprintf("clocks of %d devices set %v off", len(ms), s.By), nil
}

// HoldAtPhase arms the picked devices' current agents: as an agent's update
// of Model (to Version, if set) enters Phase, it stops right there (the
// phase persisted, nothing of it done yet, its committed version still
// serving) until restart_held restarts it. Armed before the deploy, the
// fault hits every picked agent at that exact point, which polling could
// not: staging (load in onnxruntime, test vectors, warm-up, commit) takes
// milliseconds. "Restart mid-activation" is hold_at_phase with phase
// staging, then restart_held. A device restarted in between loses the arm.
type HoldAtPhase struct {
	Pick    Pick        `yaml:",inline"`
	Model   string      `yaml:"model"`
	Version string      `yaml:"version"`
	Phase   agent.Phase `yaml:"phase"`

	// held is this run's record, set by Run.
	held *heldAgents
}

// heldAgents records what the hooks of one hold_at_phase step saw.
type heldAgents struct {
	model, version string
	phase          agent.Phase
	armed          []*sim.Member

	// mu guards held and interrupted.
	mu          sync.Mutex
	held        map[string]time.Time // device → when (real) its agent was held
	interrupted map[string]bool      // device → its held agent was stopped
}

// hook is the agent.PhaseHook of device id's agent.
func (h *heldAgents) hook(id string) agent.PhaseHook {
	return func(ctx context.Context, model, version string, phase agent.Phase) {
		if model != h.model || (h.version != "" && version != h.version) || phase != h.phase {
			return
		}
		h.mu.Lock()
		_, again := h.held[id]
		if !again {
			h.held[id] = time.Now()
		}
		h.mu.Unlock()
		if again {
			return
		}
		<-ctx.Done() // the agent is being stopped: it goes no further
		h.mu.Lock()
		h.interrupted[id] = true
		h.mu.Unlock()
	}
}

func (h *heldAgents) isHeld(id string) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t, ok := h.held[id]
	return t, ok
}

func (h *heldAgents) isInterrupted(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.interrupted[id]
}

func (h *heldAgents) interruptedCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.interrupted)
}

// Validate implements the optional validation.
func (h *HoldAtPhase) Validate(*Scenario) error {
	if h.Model == "" || !slices.Contains(agent.HookPhases(), h.Phase) {
		return fmt.Errorf("model and a phase (one of %s) are required", phaseList(agent.HookPhases()))
	}
	return h.Pick.validate()
}

// Run implements Action.
func (h *HoldAtPhase) Run(_ context.Context, env *Env) (string, error) {
	h.held = nil
	ms, err := h.Pick.pick(env, nil)
	if err != nil {
		return "", err
	}
	if len(ms) == 0 {
		return "", errors.New("no device matched")
	}
	rec := &heldAgents{model: h.Model, version: h.Version, phase: h.Phase, armed: ms,
		held: map[string]time.Time{}, interrupted: map[string]bool{}}
	for _, m := range ms {
		if err := m.SetPhaseHook(rec.hook(m.Device.ID)); err != nil {
			return "", err
		}
	}
	h.held = rec
	return fmt.Sprintf("%d agents will stop as they enter %s of %s", len(ms), h.Phase, h.target()), nil
}

func (h *HoldAtPhase) target() string {
	if h.Version == "" {
		return h.Model
	}
	return h.Model + "@" + h.Version
}

// holdsBefore returns the hold_at_phase steps of this run above the step
// whose action is a.
func holdsBefore(sc *Scenario, a Action) []*HoldAtPhase {
	var out []*HoldAtPhase
	for _, st := range sc.Timeline {
		if st.Action == a {
			break
		}
		if h, ok := st.Action.(*HoldAtPhase); ok {
			out = append(out, h)
		}
	}
	return out
}

// RestartHeld waits until every agent armed by the hold_at_phase steps
// above it is held at its phase, checks that each still serves its
// committed version and reports that phase, restarts them all (as a crash
// would: the new agent resumes from the persisted phase), and checks that
// each held agent was stopped right there. Agents that never reach their
// phase within its wait (timeout and max_timeout, see WaitLimits) make it
// fail, after the held ones are restarted. The report's figures get
// interrupted_<phase>: how many agents were interrupted in that phase.
type RestartHeld struct {
	WaitLimits `yaml:",inline"`
}

// Validate implements the optional validation.
func (r *RestartHeld) Validate(sc *Scenario) error {
	if len(holdsBefore(sc, r)) == 0 {
		return errors.New("needs a hold_at_phase step above it")
	}
	return r.WaitLimits.validate()
}

// Run implements Action.
func (r *RestartHeld) Run(ctx context.Context, env *Env) (string, error) {
	var recs []*heldAgents
	total := 0
	for _, h := range holdsBefore(env.Scenario, r) {
		if h.held != nil {
			recs = append(recs, h.held)
			total += len(h.held.armed)
		}
	}
	if total == 0 {
		return "", errors.New("no agent is armed")
	}
	_, waitErr := env.wait(ctx, waitSpec{limits: r.WaitLimits}, func() bool {
		for _, rec := range recs {
			for _, m := range rec.armed {
				if _, ok := rec.isHeld(m.Device.ID); !ok {
					return false
				}
			}
		}
		return true
	})
	type job struct {
		rec *heldAgents
		m   *sim.Member
	}
	var jobs []job
	var missed, wrong offenders
	byPhase := map[string]int{}
	var first, last time.Time
	for _, rec := range recs {
		for _, m := range rec.armed {
			at, ok := rec.isHeld(m.Device.ID)
			if !ok {
				missed.add("%s", describe(m, rec.model))
				continue
			}
			if first.IsZero() || at.Before(first) {
				first = at
			}
			if at.After(last) {
				last = at
			}
			// Held: its status is stable until the restart, and its
			// committed version (if any) answers.
			s := Status(m, rec.model)
			if s.Phase != rec.phase || s.Serving != s.Active || (s.Active != "" && s.Active == s.Target) {
				wrong.add("%s", describe(m, rec.model))
			} else if s.Active != "" {
				if v, err := inferOnce(ctx, m, rec.model); err != nil || v != s.Active {
					wrong.add("%s answered %q (%v) while held", describe(m, rec.model), v, err)
				}
			}
			jobs = append(jobs, job{rec, m})
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(jobs))
	sem := make(chan struct{}, 32)
	for i, j := range jobs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			id := j.m.Device.ID
			if err := env.Fleet.Restart(ctx, id); err != nil {
				errs[i] = err
				return
			}
			// Restart waited for the old agent to stop, so its hook returned.
			if !j.rec.isInterrupted(id) {
				errs[i] = fmt.Errorf("%s was restarted but its held agent was not stopped at %s", id, j.rec.phase)
			}
		})
	}
	wg.Wait()
	for _, rec := range recs {
		byPhase[string(rec.phase)] += rec.interruptedCount()
	}
	for _, p := range slices.Sorted(maps.Keys(byPhase)) {
		env.SetFigure("interrupted_"+p, byPhase[p])
	}
	if wrong.n > 0 {
		errs = append(errs, fmt.Errorf("%d held agents did not show their phase with the committed version answering: %s", wrong.n, wrong.String()))
	}
	if missed.n > 0 {
		errs = append(errs, fmt.Errorf("%d of %d armed agents never reached their phase: %s; %v", missed.n, total, missed.String(), waitErr))
	}
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	var parts []string
	for _, p := range slices.Sorted(maps.Keys(byPhase)) {
		parts = append(parts, fmt.Sprintf("%d in %s", byPhase[p], p))
	}
	return fmt.Sprintf("restarted %d held agents (%s), each answering with its committed version while held; held from %.2fs to %.2fs",
		len(jobs), strings.Join(parts, ", "), env.Clock.Simulated(first.Sub(env.Start)).Seconds(), env.Clock.Simulated(last.Sub(env.Start)).Seconds()), nil
}

// inferOnce runs one fraud inference (all features zero) on the member's
// current agent and returns the version that answered.
func inferOnce(ctx context.Context, m *sim.Member, model string) (string, error) {
	a := m.Agent()
	if a == nil {
		return "", errors.New("no agent")
	}
	v, _, err := a.Infer(ctx, model, []oip.Tensor{{Name: fraud.InputName, Shape: []int64{1, fraud.NumFeatures}, Data: make([]float32, fraud.NumFeatures)}})
	return v, err
}

// Interrupted: at least Min agents were restarted while held at Phase (by
// hold_at_phase and restart_held), so the fault really hit.
type Interrupted struct {
	Phase agent.Phase `yaml:"phase"`
	Min   int         `yaml:"min"`
}

// Validate implements the optional validation.
func (i *Interrupted) Validate(sc *Scenario) error {
	if !slices.Contains(agent.HookPhases(), i.Phase) || i.Min < 1 {
		return fmt.Errorf("a phase (one of %s) and min ≥ 1 are required", phaseList(agent.HookPhases()))
	}
	for _, h := range holdsBefore(sc, nil) {
		if h.Phase == i.Phase {
			return nil
		}
	}
	return fmt.Errorf("no hold_at_phase step holds agents at %s", i.Phase)
}

// Deadline implements Assertion.
func (i *Interrupted) Deadline() time.Duration { return 0 }

// Check implements Assertion.
func (i *Interrupted) Check(env *Env) (bool, string) {
	n, armed := 0, 0
	for _, h := range holdsBefore(env.Scenario, nil) {
		if h.held != nil && h.Phase == i.Phase {
			n += h.held.interruptedCount()
			armed += len(h.held.armed)
		}
	}
	if n < i.Min {
		return false, fmt.Sprintf("only %d agents (of %d armed) were interrupted in %s, want at least %d", n, armed, i.Phase, i.Min)
	}
	return true, ""
}

// phaseList names phases for a message: "downloading, verifying, staging".
func phaseList(ps []agent.Phase) string {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = string(p)
	}
	return strings.Join(names, ", ")
}
