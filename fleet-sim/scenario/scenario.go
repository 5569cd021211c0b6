// Package scenario loads fleet-sim scenario files (YAML, strictly decoded),
// runs their timeline of actions against a sim.Fleet with waits that tell a
// slow fleet from a stuck one, checks their assertions and writes a JSON
// report with an SVG chart. Actions and assertions come from a Registry, so
// features add their own. Imported by fleet-sim and fleet-sim/bench.
package scenario

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgefleet/edgefleet/fleet-sim/sim"
	"github.com/edgefleet/edgefleet/internal/fraud"
)

// Scenario is one scenario file.
type Scenario struct {
	Name        string        `yaml:"name"`
	Description string        `yaml:"description"`
	Fleet       sim.FleetSpec `yaml:"fleet"`
	Agent       AgentSpec     `yaml:"agent"`
	Network     NetworkSpec   `yaml:"network"`
	Traffic     *TrafficSpec  `yaml:"traffic"`
	// Monitor sets the control plane's alert rules (drift and accuracy).
	Monitor *MonitorSpec `yaml:"monitor"`
	// Clock speeds up the simulated time (see ClockSpec).
	Clock ClockSpec `yaml:"clock"`
	// Timeout bounds the whole run, in simulated time; default 5m of real
	// time (5m × the clock's speed).
	Timeout time.Duration `yaml:"timeout"`
	// SampleInterval is how often every agent's state is recorded, in real
	// time; default 100ms.
	SampleInterval time.Duration `yaml:"sample_interval"`
	Timeline       []Step        `yaml:"timeline"`
	Assertions     []Check       `yaml:"assertions"`

	// File is where the scenario was read from.
	File string `yaml:"-"`
	// defaultTimeout: Timeout was not given (it follows the speed).
	defaultTimeout bool
	// trafficLine is the line of the traffic key.
	trafficLine int
}

// ClockSpec is the simulated clock: the in-process control plane and every
// agent run on a clock Speed times faster than real time (sim.Clock), and
// the scenario's durations (at, timeouts, sleeps, within, label_delay,
// disconnect's down, rollout specs, monitor window) are simulated time.
// Cadences stay real: sample_interval, agent heartbeat and fetch_retry,
// monitor interval, traffic rate. An external control plane (--api) keeps
// its own clock, so a speed above 1 is refused there.
type ClockSpec struct {
	// Speed is simulated seconds per real second, 1 (default) to
	// sim.MaxSpeed.
	Speed float64 `yaml:"speed"`
}

const (
	// defaultTimeout is the real time a run may take when the scenario
	// gives no timeout.
	defaultTimeout = 5 * time.Minute
	// minRealTimeout: with a sped-up clock, a timeout shorter than this
	// in real time cannot even start the fleet.
	minRealTimeout = 10 * time.Second
)

// SetSpeed overrides the clock's speed (fleet-sim run --speed) and checks
// what depends on it; a default timeout follows the new speed. On error
// sc is left as it was.
func (sc *Scenario) SetSpeed(speed float64) error {
	was, timeout := sc.Clock.Speed, sc.Timeout
	sc.Clock.Speed = speed
	if err := sc.applyClock(); err != nil {
		sc.Clock.Speed, sc.Timeout = was, timeout
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

// applyClock defaults and checks the clock's speed and the timeout that
// depends on it.
func (sc *Scenario) applyClock() error {
	if sc.Clock.Speed == 0 {
		sc.Clock.Speed = 1
	}
	speed := sc.Clock.Speed
	if !(speed >= 1 && speed <= sim.MaxSpeed) {
		return fmt.Errorf("clock: speed %v is outside [1, %d] (simulated seconds per real second)", speed, sim.MaxSpeed)
	}
	if sc.Timeout == 0 || sc.defaultTimeout {
		sc.Timeout = time.Duration(float64(defaultTimeout) * speed)
		sc.defaultTimeout = true
	}
	if sc.Timeout < 0 {
		return errors.New("timeout must be positive")
	}
	if wall := time.Duration(float64(sc.Timeout) / speed); speed > 1 && wall < minRealTimeout {
		return fmt.Errorf("timeout %v is simulated time: at clock speed %v it is %v of real time, too short to start the fleet; give at least %v (or leave it out)",
			sc.Timeout, speed, wall.Round(time.Millisecond), time.Duration(float64(minRealTimeout)*speed))
	}
	return nil
}

// AgentSpec tunes every agent.
type AgentSpec struct {
	Heartbeat  time.Duration `yaml:"heartbeat"`
	FetchRetry time.Duration `yaml:"fetch_retry"`
	// Peers makes the agents share their site's downloads over real
	// memberlist on loopback (see PeersSpec); absent: none shares.
	Peers *PeersSpec `yaml:"peers"`
	// Store is where the agents' shared state lives: disk (default: one
	// badger, synced commits) or memory (large fleets, where a thousand
	// agents' synced commits queue on one disk).
	Store string `yaml:"store"`
}

// NetworkSpec configures the simulated network.
type NetworkSpec struct {
	// Proxy routes every agent through the fault-injecting proxy; the
	// disconnect, corrupt_chunks and throttle actions need it.
	Proxy bool `yaml:"proxy"`
	// Transport is how agents reach the in-process broker: tcp (default,
	// loopback sockets) or memory (in-memory connections carrying the same
	// MQTT, no descriptors: for fleets of thousands; see sim.Options).
	Transport string `yaml:"transport"`
	// WANPerSite is each site's WAN link from the broker, shared by its
	// devices and throttled by the proxy, e.g. 4Mbit (bit, kbit, Mbit,
	// Gbit, B, KiB, MiB per second); absent: unlimited. Needs proxy.
	WANPerSite string `yaml:"wan_per_site"`
}

// TrafficSpec is synthetic inference traffic: fraud transactions from the
// built-in generator, or the rows of a CSV file for any model.
type TrafficSpec struct {
	Model string  `yaml:"model"`
	Rate  float64 `yaml:"rate"`
	Seed  uint64  `yaml:"seed"`
	// Params shape every site's transactions; Sites override per site.
	Params Params            `yaml:"params"`
	Sites  map[string]Params `yaml:"sites"`
	// LabelFraction of the inferences get their true label fed back
	// LabelDelay later (ground truth arriving in the field).
	LabelFraction float64       `yaml:"label_fraction"`
	LabelDelay    time.Duration `yaml:"label_delay"`
	// CSV replays the rows of a CSV file (relative to the scenario file)
	// instead of generating fraud transactions; it excludes params and
	// sites. Its header names the columns: one per input feature of the
	// model, named as in the reference statistics of the model's metadata
	// (any order, other columns ignored); a model with several inputs
	// takes, for an input its statistics name no features of, one column
	// named after the input. Inputs of any datatype a cell holds (numbers,
	// booleans, strings for BYTES) and of shape [rows] or [rows, features]
	// are fed (PushModel.csvInputs). One row is one request; every device
	// replays the rows in order, looped, from its own offset (seeded by
	// seed). See sim.LoadCSV for the checks.
	CSV string `yaml:"csv"`
	// LabelColumn names the CSV column holding each row's true class (an
	// integer), fed back for label_fraction of the inferences.
	LabelColumn string `yaml:"label_column"`

	// csv holds the rows, read at load.
	csv *sim.CSVData
}

// Params are the fraud generator's knobs (see fraud.Params).
type Params struct {
	FraudRate     float64 `yaml:"fraud_rate"`
	AmountScale   float64 `yaml:"amount_scale"`
	HourShift     int     `yaml:"hour_shift"`
	DistanceScale float64 `yaml:"distance_scale"`
	ForeignRate   float64 `yaml:"foreign_rate"`
	// Pattern is classic (default) or card-testing.
	Pattern string `yaml:"pattern"`
}

// Fraud converts p, naming a bad pattern.
func (p Params) Fraud() (fraud.Params, error) {
	out := fraud.Params{FraudRate: p.FraudRate, AmountScale: p.AmountScale, HourShift: p.HourShift,
		DistanceScale: p.DistanceScale, ForeignRate: p.ForeignRate}
	switch p.Pattern {
	case "", "classic":
	case "card-testing":
		out.Pattern = fraud.PatternCardTesting
	default:
		return out, fmt.Errorf("pattern %q: want classic or card-testing", p.Pattern)
	}
	if _, err := fraud.NewGenerator(0, out); err != nil {
		return out, err
	}
	return out, nil
}

// Step is one timeline entry: when, and one action with its parameters.
type Step struct {
	// At is the offset from the start of the run; a step whose time has
	// passed runs as soon as the one before it finished.
	At     time.Duration
	Name   string
	Kind   string
	Line   int
	Action Action
}

// Check is one assertion with its parameters.
type Check struct {
	Kind      string
	Line      int
	Assertion Assertion
}

// ErrInvalid is wrapped by every error about a scenario file's content.
var ErrInvalid = errors.New("invalid scenario")

// Load reads and strictly decodes a scenario file: unknown keys, unknown
// actions and bad values are errors that name the file and line.
func Load(path string, reg *Registry) (*Scenario, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	sc, err := parse(data, reg, path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return sc, nil
}

// Parse decodes a scenario document; see Load. Files it names (push_model's
// file, traffic's csv) are relative to the working directory.
func Parse(data []byte, reg *Registry) (*Scenario, error) {
	return parse(data, reg, "")
}

// parse decodes a scenario document read from file ("" when it was not).
func parse(data []byte, reg *Registry, file string) (*Scenario, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%w: line %d: the document must be a mapping", ErrInvalid, root.Line)
	}
	doc := root.Content[0]
	var timeline, checks *yaml.Node
	rest := &yaml.Node{Kind: yaml.MappingNode, Line: doc.Line}
	trafficLine := 1
	for i := 0; i+1 < len(doc.Content); i += 2 {
		switch k := doc.Content[i]; k.Value {
		case "timeline":
			timeline = doc.Content[i+1]
		case "assertions":
			checks = doc.Content[i+1]
		default:
			if k.Value == "traffic" {
				trafficLine = k.Line
			}
			rest.Content = append(rest.Content, k, doc.Content[i+1])
		}
	}
	sc := &Scenario{File: file, trafficLine: trafficLine}
	if err := strictDecode(rest, sc); err != nil {
		return nil, err
	}
	if timeline != nil {
		steps, err := decodeSteps(timeline, reg)
		if err != nil {
			return nil, err
		}
		sc.Timeline = steps
	}
	if checks != nil {
		cs, err := decodeChecks(checks, reg)
		if err != nil {
			return nil, err
		}
		sc.Assertions = cs
	}
	if err := sc.validate(); err != nil {
		return nil, err
	}
	return sc, nil
}

func (sc *Scenario) validate() error {
	bad := func(line int, format string, args ...any) error {
		return fmt.Errorf("%w: line %d: %s", ErrInvalid, line, fmt.Sprintf(format, args...))
	}
	if sc.Name == "" {
		return bad(1, "name is required")
	}
	if _, err := sc.Fleet.Expand(); err != nil {
		return fmt.Errorf("%w: fleet: %v", ErrInvalid, err)
	}
	if err := sc.applyClock(); err != nil {
		return bad(1, "%v", err)
	}
	switch sc.Network.Transport {
	case "", sim.TransportTCP, sim.TransportMemory:
	default:
		return bad(1, "network: transport %q, want %s or %s", sc.Network.Transport, sim.TransportTCP, sim.TransportMemory)
	}
	if rate, err := parseRate(sc.Network.WANPerSite); err != nil {
		return bad(1, "network: wan_per_site %v", err)
	} else if rate > 0 && !sc.Network.Proxy {
		return bad(1, "network: wan_per_site needs proxy: true")
	}
	switch sc.Agent.Store {
	case "", "disk", "memory":
	default:
		return bad(1, "agent: store %q, want disk or memory", sc.Agent.Store)
	}
	if err := sc.Agent.Peers.validate(); err != nil {
		return bad(1, "%v", err)
	}
	if sc.SampleInterval == 0 {
		sc.SampleInterval = 100 * time.Millisecond
	}
	if sc.SampleInterval < 10*time.Millisecond {
		return bad(1, "sample_interval must be at least 10ms")
	}
	if err := sc.Monitor.validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if t := sc.Traffic; t != nil {
		if t.Model == "" || !(t.Rate > 0 && t.Rate <= 100) {
			return bad(sc.trafficLine, "traffic needs a model and a rate in (0, 100] inferences per second per device")
		}
		if err := t.validateCSV(); err != nil {
			return bad(sc.trafficLine, "traffic: %v", err)
		}
		if _, err := t.Params.Fraud(); err != nil {
			return bad(1, "traffic params: %v", err)
		}
		for site, p := range t.Sites {
			if _, err := p.Fraud(); err != nil {
				return bad(1, "traffic site %s: %v", site, err)
			}
		}
	}
	var last time.Duration
	for i, st := range sc.Timeline {
		if st.At < last {
			return bad(st.Line, "step %d (%s) is at %v, before the step above it (%v); steps run in order", i+1, st.Kind, st.At, last)
		}
		last = st.At
		if v, ok := st.Action.(interface{ Validate(*Scenario) error }); ok {
			if err := v.Validate(sc); err != nil {
				return bad(st.Line, "%s: %v", st.Kind, err)
			}
		}
	}
	// Files are read once every step is valid: traffic's csv needs the
	// input of the model push_model uploads, a shift_traffic csv the
	// traffic's columns.
	if t := sc.Traffic; t != nil && t.CSV != "" {
		if err := t.loadCSV(sc); err != nil {
			return bad(sc.trafficLine, "traffic: %v", err)
		}
	}
	for _, st := range sc.Timeline {
		if l, ok := st.Action.(fileLoader); ok {
			if err := l.loadFiles(sc); err != nil {
				return bad(st.Line, "%s: %v", st.Kind, err)
			}
		}
	}
	for _, c := range sc.Assertions {
		if v, ok := c.Assertion.(interface{ Validate(*Scenario) error }); ok {
			if err := v.Validate(sc); err != nil {
				return bad(c.Line, "%s: %v", c.Kind, err)
			}
		}
	}
	return nil
}

// decodeSteps decodes the timeline: a list of mappings, each with an
// optional at and name and exactly one action key.
func decodeSteps(n *yaml.Node, reg *Registry) ([]Step, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("%w: line %d: timeline must be a list of steps", ErrInvalid, n.Line)
	}
	var out []Step
	for i, item := range n.Content {
		if item.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("%w: line %d: step %d must be a mapping such as {at: 1s, deploy: {...}}", ErrInvalid, item.Line, i+1)
		}
		st := Step{Line: item.Line}
		for j := 0; j+1 < len(item.Content); j += 2 {
			k, v := item.Content[j], item.Content[j+1]
			switch k.Value {
			case "at":
				if err := v.Decode(&st.At); err != nil || st.At < 0 {
					return nil, fmt.Errorf("%w: line %d: at %q is not a duration such as 1.5s", ErrInvalid, v.Line, v.Value)
				}
			case "name":
				st.Name = v.Value
			default:
				if st.Kind != "" {
					return nil, fmt.Errorf("%w: line %d: step %d has two actions (%s and %s); one per step", ErrInvalid, k.Line, i+1, st.Kind, k.Value)
				}
				mk, ok := reg.actions[k.Value]
				if !ok {
					return nil, fmt.Errorf("%w: line %d: unknown action %q (known: %s)", ErrInvalid, k.Line, k.Value, strings.Join(reg.ActionNames(), ", "))
				}
				a := mk()
				if err := strictDecode(v, a); err != nil {
					return nil, fmt.Errorf("%w (in action %s)", err, k.Value)
				}
				st.Kind, st.Action = k.Value, a
			}
		}
		if st.Kind == "" {
			return nil, fmt.Errorf("%w: line %d: step %d has no action (known: %s)", ErrInvalid, item.Line, i+1, strings.Join(reg.ActionNames(), ", "))
		}
		out = append(out, st)
	}
	return out, nil
}

func decodeChecks(n *yaml.Node, reg *Registry) ([]Check, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("%w: line %d: assertions must be a list", ErrInvalid, n.Line)
	}
	var out []Check
	for i, item := range n.Content {
		if item.Kind != yaml.MappingNode || len(item.Content) != 2 {
			return nil, fmt.Errorf("%w: line %d: assertion %d must be one key such as {all_active: {...}}", ErrInvalid, item.Line, i+1)
		}
		k, v := item.Content[0], item.Content[1]
		mk, ok := reg.assertions[k.Value]
		if !ok {
			return nil, fmt.Errorf("%w: line %d: unknown assertion %q (known: %s)", ErrInvalid, k.Line, k.Value, strings.Join(reg.AssertionNames(), ", "))
		}
		a := mk()
		if err := strictDecode(v, a); err != nil {
			return nil, fmt.Errorf("%w (in assertion %s)", err, k.Value)
		}
		out = append(out, Check{Kind: k.Value, Line: k.Line, Assertion: a})
	}
	return out, nil
}

// strictDecode decodes n into v after checking that every mapping key in n
// names a field of the matching struct (by yaml tag), reporting the line of
// the first unknown key.
func strictDecode(n *yaml.Node, v any) error {
	if err := checkKeys(n, reflect.TypeOf(v)); err != nil {
		return err
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // "action: {}" or "action:" with no parameters
	}
	if err := n.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

var (
	durationType    = reflect.TypeOf(time.Duration(0))
	unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()
)

// yamlFields collects the yaml keys of struct type t, following inline
// fields.
func yamlFields(t reflect.Type, into map[string]reflect.Type) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch {
		case !f.IsExported() || tag == "-":
		case opts == "inline" && f.Type.Kind() == reflect.Struct:
			yamlFields(f.Type, into)
		case tag != "":
			into[tag] = f.Type
		}
	}
}

func checkKeys(n *yaml.Node, t reflect.Type) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType || reflect.PointerTo(t).Implements(unmarshalerType):
		return nil // decoded (and checked) by its own UnmarshalYAML
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		fields := map[string]reflect.Type{}
		yamlFields(t, fields)
		names := slices.Sorted(maps.Keys(fields))
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			ft, ok := fields[k.Value]
			if !ok {
				return fmt.Errorf("%w: line %d: unknown key %q (known: %s)", ErrInvalid, k.Line, k.Value, strings.Join(names, ", "))
			}
			if err := checkKeys(n.Content[i+1], ft); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Map && n.Kind == yaml.MappingNode:
		for i := 1; i < len(n.Content); i += 2 {
			if err := checkKeys(n.Content[i], t.Elem()); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for _, c := range n.Content {
			if err := checkKeys(c, t.Elem()); err != nil {
				return err
			}
		}
	}
	return nil
}

// fileLoader is an action that reads files its scenario names, once the
// whole scenario is valid.
type fileLoader interface {
	loadFiles(sc *Scenario) error
}

// path resolves a file named in the scenario: relative to the scenario
// file's directory (the working directory when it was not read from one).
func (sc *Scenario) path(name string) string {
	if filepath.IsAbs(name) || sc.File == "" {
		return name
	}
	return filepath.Join(filepath.Dir(sc.File), name)
}

// validateCSV checks the traffic's fields, before any file is read.
func (t *TrafficSpec) validateCSV() error {
	if t.CSV == "" {
		if t.LabelColumn != "" {
			return errors.New("label_column needs csv")
		}
		return nil
	}
	if t.Params != (Params{}) || len(t.Sites) > 0 {
		return errors.New("csv excludes params and sites (they shape the built-in fraud transactions); give other sites other rows with shift_traffic's csv")
	}
	if t.LabelFraction > 0 && t.LabelColumn == "" {
		return errors.New("label_fraction needs label_column: the csv column with each row's true class")
	}
	return nil
}

// loadCSV reads the traffic's rows, with the columns of the model's inputs.
func (t *TrafficSpec) loadCSV(sc *Scenario) error {
	inputs, widths, err := sc.modelInputs(t.Model)
	if err != nil {
		return err
	}
	d, err := sim.LoadCSV(sc.path(t.CSV), sim.CSVOptions{Inputs: inputs, Label: t.LabelColumn})
	if err != nil {
		return err
	}
	for i, in := range d.Inputs {
		if w := widths[i]; w > 0 && int64(len(in.Columns)) != w {
			return fmt.Errorf("csv %s has %d feature columns (%s), model %s's input %s takes %d; name the features in the metadata's reference statistics to pick columns",
				d.File, len(in.Columns), strings.Join(in.Columns, ", "), t.Model, in.Name, w)
		}
	}
	t.csv = d
	return nil
}

// modelInputs returns the inputs of model as csv traffic feeds them (see
// PushModel.csvInputs), as the scenario's push_model steps upload it, and
// each input's fixed number of columns (0: any).
func (sc *Scenario) modelInputs(model string) ([]sim.CSVInput, []int64, error) {
	var inputs []sim.CSVInput
	var widths []int64
	from := ""
	for _, st := range sc.Timeline {
		p, ok := st.Action.(*PushModel)
		if !ok || p.Model != model {
			continue
		}
		ins, ws, err := p.csvInputs()
		if err != nil {
			return nil, nil, fmt.Errorf("csv traffic of model %s: push_model at line %d: %w", model, st.Line, err)
		}
		if inputs == nil {
			inputs, widths, from = ins, ws, fmt.Sprintf("line %d", st.Line)
			continue
		}
		if !reflect.DeepEqual(ins, inputs) || !slices.Equal(ws, widths) {
			return nil, nil, fmt.Errorf("csv traffic of model %s: push_model at line %d has other inputs than the one at %s; one csv cannot feed both", model, st.Line, from)
		}
	}
	if inputs == nil {
		return nil, nil, fmt.Errorf("csv traffic of model %s needs a push_model step of that model (its metadata gives the inputs)", model)
	}
	return inputs, widths, nil
}
