package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// errInjected is what a failing store write returns in these tests.
var errInjected = errors.New("injected: no space left on device")

// writeFault fails the agent's store writes of one step while armed (the
// agent's failWrite seam; the store itself is the real badger).
type writeFault struct {
	step atomic.Pointer[string]
	hits atomic.Int64 // writes failed since armed
}

func (f *writeFault) arm(st step) {
	f.hits.Store(0)
	s := string(st)
	f.step.Store(&s)
}

func (f *writeFault) disarm() { f.step.Store(nil) }

func (f *writeFault) fail(st string) error {
	if p := f.step.Load(); p != nil && *p == st {
		f.hits.Add(1)
		return fmt.Errorf("store: update: %w", errInjected)
	}
	return nil
}

// faultEnv is one agent on a real broker and badger, serving fraud@1.0.0,
// whose writes of one step can be failed.
type faultEnv struct {
	t      *testing.T
	h      *harness
	opts   Options
	logs   *logCapture
	fault  *writeFault
	v1, v2 *fraud.Artifact
	m1     *efpb.Manifest

	a    *Agent
	stop func()

	mu      sync.Mutex
	entered []string // "version phase" per PhaseHook call since armed; guarded by mu
}

func newFaultEnv(t *testing.T, mutate func(*Options)) *faultEnv {
	t.Helper()
	v1, v2 := testModels(t)
	h := newHarness(t)
	e := &faultEnv{t: t, h: h, fault: &writeFault{}, v1: v1, v2: v2}
	e.opts = h.agentOptions(t, "dev-1", t.TempDir())
	e.opts.Logger, e.logs = captureLogs(t)
	if mutate != nil {
		mutate(&e.opts)
	}
	e.start(nil)
	e.m1 = h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
	h.desire("dev-1", assign(e.m1))
	waitServing(t, e.a, "fraud", "1.0.0")
	return e
}

// start runs a new agent on the environment's state, with the write fault
// and a PhaseHook that records which phases it enters.
func (e *faultEnv) start(mutate func(*Options)) {
	e.t.Helper()
	opts := e.opts
	if mutate != nil {
		mutate(&opts)
	}
	a, err := New(opts)
	require.NoError(e.t, err)
	a.failWrite = e.fault.fail
	a.SetPhaseHook(func(_ context.Context, model, version string, phase Phase) {
		e.mu.Lock()
		e.entered = append(e.entered, version+" "+string(phase))
		e.mu.Unlock()
	})
	e.a, e.stop = a, testkit.Start(e.t, "agent", a.Run, a.Ready())
}

// restart stops the agent and starts a new one on the same state, as a
// reboot would.
func (e *faultEnv) restart(mutate func(*Options)) {
	e.t.Helper()
	e.stop()
	e.start(mutate)
}

func (e *faultEnv) arm(st step) {
	e.mu.Lock()
	e.entered = nil
	e.mu.Unlock()
	e.fault.arm(st)
}

// hasEntered reports whether the PhaseHook saw version enter phase since
// the fault was armed.
func (e *faultEnv) hasEntered(version string, phase Phase) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Contains(e.entered, version+" "+string(phase))
}

func (e *faultEnv) desireV2(mutate func(*efpb.Manifest)) uint64 {
	return e.h.desire("dev-1", assign(e.h.publishModel("fraud", "2.0.0", e.v2, e.v2.ONNX, mutate, nil)))
}

// status is the agent's status of fraud (ok false when it has none).
func (e *faultEnv) status() (ModelStatus, bool) {
	for _, s := range e.a.Status() {
		if s.Name == "fraud" {
			return s, true
		}
	}
	return ModelStatus{}, false
}

// recorded is fraud's state as the agent's store holds it.
func (e *faultEnv) recorded() (slotState, bool) {
	e.t.Helper()
	var st slotState
	err := e.a.kv.GetJSON(slotKey("fraud"), &st)
	if errors.Is(err, store.ErrNotFound) {
		return st, false
	}
	require.NoError(e.t, err)
	return st, true
}

// requireConsistent waits until the agent's view of fraud is what its
// store holds: a failed write left nothing behind in memory.
func (e *faultEnv) requireConsistent(when string) {
	e.t.Helper()
	var diff string
	require.Eventually(e.t, func() bool {
		st, onDisk := e.recorded()
		mem, inMemory := e.status()
		if !onDisk || !inMemory {
			diff = fmt.Sprintf("on disk %v, in memory %v (%+v)", onDisk, inMemory, mem)
			return onDisk == inMemory
		}
		tmp := &slot{name: "fraud", st: st}
		tmp.snapshot()
		want := *tmp.snap.Load()
		mem.Serving = ""
		diff = fmt.Sprintf("in memory %+v, on disk %+v", mem, want)
		return mem == want
	}, 30*time.Second, 10*time.Millisecond, "%s: the agent's state is not what its store holds: %s", when, diff)
}

// serving is the version answering an inference ("" when none does).
func (e *faultEnv) serving() string {
	e.t.Helper()
	c := &oip.Client{BaseURL: "http://" + e.a.InferenceAddr()}
	resp, err := c.Infer(context.Background(), "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{
		fp32(e.t, "features", []int64{1, fraud.NumFeatures}, make([]float32, fraud.NumFeatures))}})
	if err != nil {
		return ""
	}
	return resp.ModelVersion
}

func (e *faultEnv) fetchesOf(version string) int {
	n := 0
	for _, f := range e.h.fetchesFor("dev-1") {
		if f.Version == version {
			n++
		}
	}
	return n
}

func (e *faultEnv) waitStatus(what string, ok func(ModelStatus) bool) {
	e.t.Helper()
	require.Eventually(e.t, func() bool {
		s, _ := e.status()
		return ok(s)
	}, 30*time.Second, 10*time.Millisecond, "never %s; status %+v", what, e.a.Status())
}

// reported reports whether dev sent a status of state with active as its
// active version.
func (h *harness) reported(dev string, state efpb.ModelState, active string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.statuses {
		if s.DeviceId == dev && s.State == state && s.ActiveVersion == active {
			return true
		}
	}
	return false
}

// faultCase fails every write of one step while fraud moves from 1.0.0
// (serving when setup runs) towards what trigger asks for.
type faultCase struct {
	name    string // subtest name; default the step
	step    step
	opts    func(*Options)
	setup   func(e *faultEnv) // before the fault is armed
	trigger func(e *faultEnv) // after
	// minHits is how many failed writes prove the step was retried
	// (default 2: failed, and failed again on a later tick).
	minHits int64
	// notReported: the failure happens where nothing can be reported
	// (restore, or not a slot's state); it is logged.
	notReported bool
	serving     string            // the version answering while the writes fail
	held        func(e *faultEnv) // what was not acted on, while they fail
	end         func(e *faultEnv) // once writes succeed again
}

// TestAgentStoreWriteFailsAtEachStep fails the store write of each step an
// update, a trial or a rollback records, and checks what transition
// promises: the agent does not act on the step (it stays where its store
// says, and does not do what the step would have led to), keeps serving
// its committed version, counts, logs and reports the failure, and once
// writes succeed again reaches the desired version (or the documented end
// state) by itself.
func TestAgentStoreWriteFailsAtEachStep(t *testing.T) {
	trial := func(hp time.Duration) func(*Options) { return func(o *Options) { o.HealthPeriod = hp } }
	servesV2 := func(e *faultEnv) { waitServing(e.t, e.a, "fraud", "2.0.0") }
	holdChunks := func(e *faultEnv) { // v2's download stays open: no chunk is served
		e.h.mu.Lock()
		e.h.serveOnly = func(uint32) bool { return false }
		e.h.mu.Unlock()
		e.desireV2(nil)
		require.Eventually(e.t, func() bool { return e.fetchesOf("2.0.0") > 0 }, 30*time.Second, 10*time.Millisecond)
	}
	var gen uint64 // the generation a trigger desired, for held and end

	for _, tc := range []faultCase{
		{
			step: stepGeneration, notReported: true,
			trigger: func(e *faultEnv) { gen = e.desireV2(nil) },
			serving: "1.0.0",
			held: func(e *faultEnv) {
				assert.Equal(e.t, gen-1, e.a.Generation(), "the desired state is not accepted")
				s, _ := e.status()
				assert.Empty(e.t, s.Target, "nor acted on")
			},
			end: servesV2,
		},
		{
			step:    stepManifest,
			trigger: func(e *faultEnv) { gen = e.desireV2(nil) },
			serving: "1.0.0",
			held: func(e *faultEnv) {
				assert.Equal(e.t, gen, e.a.Generation(), "the desired state is accepted")
				s, _ := e.status()
				assert.Empty(e.t, s.Target, "no update recorded")
				assert.Zero(e.t, e.fetchesOf("2.0.0"))
			},
			end: servesV2,
		},
		{
			step:    stepDownloading,
			trigger: func(e *faultEnv) { e.desireV2(nil) },
			serving: "1.0.0",
			held: func(e *faultEnv) {
				s, _ := e.status()
				assert.Equal(e.t, PhaseManifest, s.Phase)
				assert.Zero(e.t, e.fetchesOf("2.0.0"), "no chunk asked for")
				assert.False(e.t, e.hasEntered("2.0.0", PhaseDownloading))
			},
			end: servesV2,
		},
		{
			step:    stepVerifying,
			trigger: func(e *faultEnv) { e.desireV2(nil) },
			serving: "1.0.0",
			held: func(e *faultEnv) {
				s, _ := e.status()
				assert.Equal(e.t, PhaseDownloading, s.Phase)
				assert.NoFileExists(e.t, e.a.modelPath("fraud", sha256hex(e.v2.ONNX)), "not verified and renamed")
				assert.False(e.t, e.hasEntered("2.0.0", PhaseVerifying))
			},
			end: servesV2,
		},
		{
			step:    stepStaging,
			trigger: func(e *faultEnv) { e.desireV2(nil) },
			serving: "1.0.0",
			held: func(e *faultEnv) {
				s, _ := e.status()
				assert.Equal(e.t, PhaseVerifying, s.Phase)
				assert.FileExists(e.t, e.a.modelPath("fraud", sha256hex(e.v2.ONNX)))
				assert.False(e.t, e.hasEntered("2.0.0", PhaseStaging), "not loaded")
			},
			end: servesV2,
		},
		{
			step:    stepActivate,
			trigger: func(e *faultEnv) { e.desireV2(nil) },
			serving: "1.0.0",
			held: func(e *faultEnv) {
				s, _ := e.status()
				assert.Equal(e.t, PhaseStaging, s.Phase)
				assert.Equal(e.t, "1.0.0", s.Active)
				st, _ := e.recorded()
				require.NotNil(e.t, st.Target)
				assert.Equal(e.t, 1, st.Target.Attempts, "retries after a failed write are not counted as crashed attempts")
			},
			end: func(e *faultEnv) {
				servesV2(e)
				s, _ := e.status()
				assert.Equal(e.t, "1.0.0", s.Previous)
			},
		},
		{
			name: "activate-on-trial", step: stepActivate, opts: trial(time.Hour),
			trigger: func(e *faultEnv) { e.desireV2(nil) },
			serving: "1.0.0",
			held: func(e *faultEnv) {
				s, _ := e.status()
				assert.Equal(e.t, PhaseStaging, s.Phase)
				assert.Equal(e.t, "1.0.0", s.Active, "the trial of 2.0.0 did not start")
			},
			end: func(e *faultEnv) {
				e.waitStatus("served 2.0.0 on trial", func(s ModelStatus) bool { return s.Serving == "2.0.0" && s.OnTrial && s.Target == "" })
			},
		},
		{
			step: stepTrialEnd, opts: trial(300 * time.Millisecond),
			setup: func(e *faultEnv) {
				e.waitStatus("committed 1.0.0", func(s ModelStatus) bool { return s.Active == "1.0.0" && !s.OnTrial })
			},
			trigger: func(e *faultEnv) { e.desireV2(nil) },
			serving: "2.0.0",
			held: func(e *faultEnv) {
				s, _ := e.status()
				assert.True(e.t, s.OnTrial, "2.0.0 is still on trial")
				assert.Equal(e.t, "2.0.0", s.Active)
				assert.False(e.t, e.h.reported("dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "2.0.0"), "not reported as committed")
			},
			end: func(e *faultEnv) {
				e.waitStatus("committed 2.0.0", func(s ModelStatus) bool { return s.Active == "2.0.0" && !s.OnTrial })
				e.h.waitReported(e.t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "2.0.0")
				assert.Equal(e.t, "committed after the health period", e.h.lastStatus("dev-1", "fraud").Reason)
			},
		},
		{
			step: stepRollback,
			setup: func(e *faultEnv) {
				e.desireV2(nil)
				waitServing(e.t, e.a, "fraud", "2.0.0")
			},
			trigger: func(e *faultEnv) { e.h.desire("dev-1", assign(e.m1)) },
			serving: "2.0.0",
			held: func(e *faultEnv) {
				s, _ := e.status()
				assert.Equal(e.t, "2.0.0", s.Active)
				assert.Empty(e.t, s.Target)
				assert.False(e.t, e.hasEntered("1.0.0", PhaseStaging), "1.0.0 not staged")
			},
			end: func(e *faultEnv) {
				fetches := len(e.h.fetchesFor("dev-1"))
				waitServing(e.t, e.a, "fraud", "1.0.0")
				assert.Len(e.t, e.h.fetchesFor("dev-1"), fetches, "the rollback needed no download")
			},
		},
		{
			step: stepTrialRevert, opts: trial(time.Hour),
			setup: func(e *faultEnv) {
				e.desireV2(nil)
				e.waitStatus("served 2.0.0 on trial", func(s ModelStatus) bool { return s.Serving == "2.0.0" && s.OnTrial && s.Target == "" })
			},
			trigger: func(e *faultEnv) { e.a.slot("fraud").serving.Load().errors.Add(1) },
			serving: "2.0.0",
			held: func(e *faultEnv) {
				s, _ := e.status()
				assert.True(e.t, s.OnTrial)
				assert.Equal(e.t, "2.0.0", s.Active)
				assert.Empty(e.t, s.FailedVersion, "the return is not recorded, so 2.0.0 serves on")
			},
			end: func(e *faultEnv) {
				e.waitStatus("returned to 1.0.0", func(s ModelStatus) bool { return s.Serving == "1.0.0" && s.FailedVersion == "2.0.0" })
				e.h.waitReported(e.t, "dev-1", efpb.ModelState_MODEL_STATE_ROLLED_BACK, "1.0.0")
			},
		},
		{
			step: stepFailure,
			trigger: func(e *faultEnv) {
				e.desireV2(func(m *efpb.Manifest) { m.Hardware = []string{"riscv-none"} })
			},
			serving: "1.0.0",
			held: func(e *faultEnv) {
				s, _ := e.status()
				assert.Equal(e.t, "2.0.0", s.Target, "the refused target stays as recorded, and its check runs again")
				assert.Empty(e.t, s.FailedVersion)
			},
			end: func(e *faultEnv) {
				f := waitFailed(e.t, e.a, "fraud", "2.0.0")
				assert.Contains(e.t, f.FailureReason, "model is built for [riscv-none]")
			},
		},
		{
			step:    stepDrop,
			setup:   holdChunks,
			trigger: func(e *faultEnv) { e.h.desire("dev-1", assign(e.m1)) },
			serving: "1.0.0",
			held: func(e *faultEnv) {
				s, _ := e.status()
				assert.Equal(e.t, "2.0.0", s.Target, "the dropped target stays as recorded")
			},
			end: func(e *faultEnv) {
				// 1.0.0 served all along: wait for the drop itself (the target
				// gone, then its download), not for 1.0.0.
				part := e.a.partPath("fraud", sha256hex(e.v2.ONNX))
				require.Eventually(e.t, func() bool {
					s, _ := e.status()
					_, err := os.Stat(part)
					return s.Target == "" && errors.Is(err, fs.ErrNotExist)
				}, 30*time.Second, 10*time.Millisecond, "the target is dropped and its download removed")
				assert.Equal(e.t, "1.0.0", e.serving())
			},
		},
		{
			step:    stepRetarget,
			setup:   holdChunks,
			trigger: func(e *faultEnv) { gen = e.desireV2(nil) },
			serving: "1.0.0",
			held: func(e *faultEnv) {
				st, _ := e.recorded()
				require.NotNil(e.t, st.Target)
				assert.Equal(e.t, gen-1, st.Target.Generation)
			},
			end: func(e *faultEnv) {
				require.Eventually(e.t, func() bool {
					st, _ := e.recorded()
					return st.Target != nil && st.Target.Generation == gen
				}, 30*time.Second, 10*time.Millisecond)
				e.h.mu.Lock()
				e.h.serveOnly = nil
				e.h.mu.Unlock()
				servesV2(e)
			},
		},
		{
			step:    stepRemove,
			trigger: func(e *faultEnv) { e.h.desire("dev-1") },
			serving: "1.0.0",
			held: func(e *faultEnv) {
				_, ok := e.recorded()
				assert.True(e.t, ok)
				assert.DirExists(e.t, e.a.modelDir("fraud"))
			},
			end: func(e *faultEnv) {
				require.Eventually(e.t, func() bool {
					_, err := os.Stat(e.a.modelDir("fraud"))
					return len(e.a.Status()) == 0 && errors.Is(err, fs.ErrNotExist)
				}, 30*time.Second, 10*time.Millisecond, "the model is removed: its slot and its files")
			},
		},

		// Steps recorded at restore, before the update loop runs.
		{
			step: stepTrialRestart, opts: trial(time.Hour), minHits: 1, notReported: true,
			trigger: func(e *faultEnv) { e.restart(nil) },
			serving: "1.0.0",
			held: func(e *faultEnv) {
				st, _ := e.recorded()
				require.NotNil(e.t, st.Trial)
				assert.Equal(e.t, 1, st.Trial.Starts, "this start is not counted")
				s, _ := e.status()
				assert.True(e.t, s.OnTrial, "the version serves as recorded, on trial")
			},
			end: func(e *faultEnv) { // documented: not retried; the next start is counted
				e.restart(nil)
				st, _ := e.recorded()
				require.NotNil(e.t, st.Trial)
				assert.Equal(e.t, 2, st.Trial.Starts)
			},
		},
		{
			name: "trial-revert-at-start", step: stepTrialRevert, opts: trial(time.Hour),
			setup: func(e *faultEnv) {
				e.desireV2(nil)
				e.waitStatus("served 2.0.0 on trial", func(s ModelStatus) bool { return s.Serving == "2.0.0" && s.OnTrial && s.Target == "" })
			},
			// Restarted with one start allowed: 2.0.0 is given up at restore.
			trigger: func(e *faultEnv) { e.restart(func(o *Options) { o.MaxActivationAttempts = 1 }) },
			serving: "2.0.0",
			held: func(e *faultEnv) {
				s, _ := e.status()
				assert.True(e.t, s.OnTrial)
				assert.Equal(e.t, "2.0.0", s.Active, "not given up until that is recorded")
			},
			end: func(e *faultEnv) {
				e.waitStatus("returned to 1.0.0", func(s ModelStatus) bool { return s.Serving == "1.0.0" && s.FailedVersion == "2.0.0" })
				e.h.waitReported(e.t, "dev-1", efpb.ModelState_MODEL_STATE_ROLLED_BACK, "1.0.0")
				assert.Contains(e.t, e.h.lastStatus("dev-1", "fraud").Reason, "abandoned after 1 restarts during its health period")
			},
		},
		{
			step: stepFallback,
			setup: func(e *faultEnv) {
				e.desireV2(nil)
				waitServing(e.t, e.a, "fraud", "2.0.0")
			},
			trigger: func(e *faultEnv) { // 2.0.0's file is damaged while the device is off
				e.stop()
				require.NoError(e.t, os.WriteFile(e.a.modelPath("fraud", sha256hex(e.v2.ONNX)), []byte("damaged"), 0o640))
				e.start(nil)
			},
			serving: "", // documented: the previous version serves once the fallback to it is recorded
			held: func(e *faultEnv) {
				s, _ := e.status()
				assert.Equal(e.t, "2.0.0", s.Active)
				assert.Empty(e.t, s.FailedVersion)
			},
			end: func(e *faultEnv) {
				e.waitStatus("fell back to 1.0.0", func(s ModelStatus) bool {
					return s.Serving == "1.0.0" && s.Active == "1.0.0" && s.FailedVersion == "2.0.0"
				})
			},
		},
	} {
		name := tc.name
		if name == "" {
			name = string(tc.step)
		}
		t.Run(name, func(t *testing.T) {
			e := newFaultEnv(t, tc.opts)
			if tc.setup != nil {
				tc.setup(e)
			}
			e.arm(tc.step)
			tc.trigger(e)
			minHits := tc.minHits
			if minHits == 0 {
				minHits = 2
			}
			require.Eventually(t, func() bool { return e.fault.hits.Load() >= minHits }, 30*time.Second, 10*time.Millisecond,
				"the %s write was tried %d times, want %d; status %+v", tc.step, e.fault.hits.Load(), minHits, e.a.Status())

			// While it fails: nothing of the step in memory, nothing acted
			// on, the committed version answers, the failure is known.
			e.requireConsistent("while the write fails")
			tc.held(e)
			assert.Equal(t, tc.serving, e.serving(), "the version answering while the write fails")
			assert.NotZero(t, e.a.StateWriteFailures())
			assert.True(t, slices.ContainsFunc(e.logs.records("state not persisted; not acted on"), func(r logRecord) bool {
				return r.attrs["step"] == string(tc.step) && strings.Contains(r.attrs["err"], errInjected.Error())
			}), "the failure is logged with its step")
			if !tc.notReported {
				require.Eventually(t, func() bool {
					return slices.ContainsFunc(e.h.reasons("dev-1"), func(r string) bool {
						return strings.Contains(r, "could not record step "+string(tc.step))
					})
				}, 30*time.Second, 10*time.Millisecond, "the failure is reported; reasons %q", e.h.reasons("dev-1"))
			}

			e.fault.disarm()
			tc.end(e)
			e.requireConsistent("after the writes succeeded")
		})
	}
}
