package scenario

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Action is one kind of timeline step. A value is created per step by the
// Registry and decoded from the step's parameters; it may implement
// Validate(*Scenario) error to check them at load time.
type Action interface {
	// Run performs the step. The returned detail (may be empty) goes into
	// the report next to the step.
	Run(ctx context.Context, env *Env) (detail string, err error)
}

// Assertion is one kind of check run after the timeline. It may implement
// Validate(*Scenario) error. Check is called repeatedly until it passes or
// its deadline passes, so "eventually" assertions simply return false
// until they hold.
type Assertion interface {
	// Check reports whether the assertion holds now and, if not, a readable
	// explanation of what is wrong.
	Check(env *Env) (ok bool, explanation string)
	// Deadline is how long after the run's start Check may keep being
	// retried (0: checked once, after the timeline).
	Deadline() time.Duration
}

// Registry maps the names used in scenario files to actions and
// assertions. Features that land later (rollouts, drift) register theirs.
type Registry struct {
	actions    map[string]func() Action
	assertions map[string]func() Assertion
}

// NewRegistry returns a registry with every built-in action and assertion.
func NewRegistry() *Registry {
	r := &Registry{actions: map[string]func() Action{}, assertions: map[string]func() Assertion{}}
	registerBuiltins(r)
	return r
}

// RegisterAction adds an action; a name may be registered once.
func (r *Registry) RegisterAction(name string, mk func() Action) {
	if _, dup := r.actions[name]; dup {
		panic(fmt.Sprintf("scenario: action %q registered twice", name)) // a programming error at start-up
	}
	r.actions[name] = mk
}

// RegisterAssertion adds an assertion; a name may be registered once.
func (r *Registry) RegisterAssertion(name string, mk func() Assertion) {
	if _, dup := r.assertions[name]; dup {
		panic(fmt.Sprintf("scenario: assertion %q registered twice", name))
	}
	r.assertions[name] = mk
}

// ActionNames lists the registered actions, sorted.
func (r *Registry) ActionNames() []string { return slices.Sorted(maps.Keys(r.actions)) }

// AssertionNames lists the registered assertions, sorted.
func (r *Registry) AssertionNames() []string { return slices.Sorted(maps.Keys(r.assertions)) }
