package scenario

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/fleet-sim/sim"
)

// offenders formats up to five failing devices and how many more.
type offenders struct {
	n     int
	lines []string
}

func (o *offenders) add(format string, args ...any) {
	o.n++
	if len(o.lines) < 5 {
		o.lines = append(o.lines, fmt.Sprintf(format, args...))
	}
}

func (o *offenders) String() string {
	s := strings.Join(o.lines, "; ")
	if o.n > len(o.lines) {
		s += fmt.Sprintf("; and %d more", o.n-len(o.lines))
	}
	return s
}

func describe(m *sim.Member, model string) string {
	s := Status(m, model)
	d := fmt.Sprintf("%s serves %q (committed %q", m.Device.ID, s.Serving, s.Active)
	if s.Target != "" {
		d += fmt.Sprintf(", updating to %s: %s", s.Target, s.Phase)
	}
	if s.FailedVersion != "" {
		d += fmt.Sprintf(", refused %s: %s", s.FailedVersion, s.FailureReason)
	}
	return d + ")"
}

// AllActive: every selected device ends serving model@version, committed,
// and (with Within) first served it within that time of the start.
type AllActive struct {
	Model    string        `yaml:"model"`
	Version  string        `yaml:"version"`
	Selector string        `yaml:"selector"`
	Within   time.Duration `yaml:"within"`
}

// Validate implements the optional validation.
func (a *AllActive) Validate(*Scenario) error {
	if a.Model == "" || a.Version == "" {
		return errors.New("model and version are required")
	}
	return nil
}

// Deadline implements Assertion.
func (a *AllActive) Deadline() time.Duration { return a.Within }

// Check implements Assertion.
func (a *AllActive) Check(env *Env) (bool, string) {
	ms, err := env.Select(a.Selector)
	if err != nil {
		return false, err.Error()
	}
	if len(ms) == 0 {
		return false, fmt.Sprintf("no device matches selector %q", a.Selector)
	}
	var bad, late offenders
	for _, m := range ms {
		s := Status(m, a.Model)
		if s.Serving != a.Version || s.Active != a.Version {
			bad.add("%s", describe(m, a.Model))
			continue
		}
		if a.Within > 0 && env.rec != nil {
			if t, ok := env.FirstServing(m.Device.ID, a.Model, a.Version); ok && t > a.Within {
				late.add("%s only after %.2fs", m.Device.ID, t.Seconds())
			}
		}
	}
	if bad.n > 0 {
		return false, fmt.Sprintf("%d of %d devices are not on %s@%s: %s", bad.n, len(ms), a.Model, a.Version, &bad)
	}
	if late.n > 0 {
		return false, fmt.Sprintf("%d of %d devices reached %s@%s later than %v: %s", late.n, len(ms), a.Model, a.Version, a.Within, &late)
	}
	return true, ""
}

// NeverRan: no device outside the selector ever served or committed
// model@version (as sampled every sample_interval).
type NeverRan struct {
	Model   string `yaml:"model"`
	Version string `yaml:"version"`
	// Outside is the selector of the devices that may run it ("" none).
	Outside string `yaml:"outside"`
}

// Validate implements the optional validation.
func (n *NeverRan) Validate(*Scenario) error {
	if n.Model == "" || n.Version == "" {
		return errors.New("model and version are required")
	}
	return nil
}

// Deadline implements Assertion.
func (n *NeverRan) Deadline() time.Duration { return 0 }

// Check implements Assertion.
func (n *NeverRan) Check(env *Env) (bool, string) {
	allowed := map[string]bool{}
	if n.Outside != "" {
		ms, err := env.Select(n.Outside)
		if err != nil {
			return false, err.Error()
		}
		for _, m := range ms {
			allowed[m.Device.ID] = true
		}
	}
	var bad offenders
	for _, id := range env.EverRan(n.Model, n.Version) {
		if !allowed[id] {
			bad.add("%s", id)
		}
	}
	if bad.n > 0 {
		return false, fmt.Sprintf("%d devices outside %q ran %s@%s: %s", bad.n, n.Outside, n.Model, n.Version, &bad)
	}
	return true, ""
}

// NoFailedInference: no inference failed (requests before a device's first
// model count apart), and at least MinOK succeeded.
type NoFailedInference struct {
	MinOK uint64 `yaml:"min_ok"`
}

// Validate implements the optional validation.
func (n *NoFailedInference) Validate(sc *Scenario) error {
	if sc.Traffic == nil {
		return errors.New("needs a traffic section")
	}
	return nil
}

// Deadline implements Assertion.
func (n *NoFailedInference) Deadline() time.Duration { return 0 }

// Check implements Assertion.
func (n *NoFailedInference) Check(env *Env) (bool, string) {
	st := env.Traffic.Stats()
	if st.Failed > 0 {
		return false, fmt.Sprintf("%d of %d inferences failed; the first: %s", st.Failed, st.Failed+st.OK, st.FirstFailure)
	}
	if st.OK < n.MinOK {
		return false, fmt.Sprintf("only %d inferences succeeded, want at least %d", st.OK, n.MinOK)
	}
	return true, ""
}

// AllCommitted: every selected device ends on a committed version of model
// that also serves, with no update left half-way.
type AllCommitted struct {
	Model    string        `yaml:"model"`
	Selector string        `yaml:"selector"`
	Within   time.Duration `yaml:"within"`
}

// Validate implements the optional validation.
func (a *AllCommitted) Validate(*Scenario) error {
	if a.Model == "" {
		return errors.New("model is required")
	}
	return nil
}

// Deadline implements Assertion.
func (a *AllCommitted) Deadline() time.Duration { return a.Within }

// Check implements Assertion.
func (a *AllCommitted) Check(env *Env) (bool, string) {
	ms, err := env.Select(a.Selector)
	if err != nil {
		return false, err.Error()
	}
	var bad offenders
	for _, m := range ms {
		s := Status(m, a.Model)
		if s.Active == "" || s.Serving != s.Active || s.Target != "" {
			bad.add("%s", describe(m, a.Model))
		}
	}
	if bad.n > 0 {
		return false, fmt.Sprintf("%d of %d devices are not on a committed version of %s: %s", bad.n, len(ms), a.Model, &bad)
	}
	return true, ""
}

// AllRefused: every selected device refused model@version and serves
// Serving (the last good version).
type AllRefused struct {
	Model    string        `yaml:"model"`
	Version  string        `yaml:"version"`
	Serving  string        `yaml:"serving"`
	Selector string        `yaml:"selector"`
	Within   time.Duration `yaml:"within"`
	// Reason, if set, must appear in every device's failure reason.
	Reason string `yaml:"reason"`
}

// Validate implements the optional validation.
func (a *AllRefused) Validate(*Scenario) error {
	if a.Model == "" || a.Version == "" || a.Serving == "" {
		return errors.New("model, version and serving are required")
	}
	return nil
}

// Deadline implements Assertion.
func (a *AllRefused) Deadline() time.Duration { return a.Within }

// Check implements Assertion.
func (a *AllRefused) Check(env *Env) (bool, string) {
	ms, err := env.Select(a.Selector)
	if err != nil {
		return false, err.Error()
	}
	var bad offenders
	for _, m := range ms {
		s := Status(m, a.Model)
		if s.FailedVersion != a.Version || s.Serving != a.Serving || !strings.Contains(s.FailureReason, a.Reason) {
			bad.add("%s", describe(m, a.Model))
		}
	}
	if bad.n > 0 {
		return false, fmt.Sprintf("%d of %d devices did not refuse %s@%s while serving %s: %s", bad.n, len(ms), a.Model, a.Version, a.Serving, &bad)
	}
	return true, ""
}
