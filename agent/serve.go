package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/peers"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// servedModel is one loaded version answering inference. Inferences hold mu
// shared; close takes it exclusively, so a swap waits for requests in flight
// on the old session and none fails.
type servedModel struct {
	version  string
	manifest *efpb.Manifest

	mu     sync.RWMutex
	closed bool // guarded by mu
	sess   *infer.Session

	inferences atomic.Uint64
	errors     atomic.Uint64
	mon        atomic.Pointer[modelMonitor] // set on first use, see monitor.go
}

func (m *servedModel) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.closed = true
	_ = m.sess.Close()
}

// slot is one model name on the device.
type slot struct {
	name string
	// serving is read by inference requests and swapped by the update loop.
	serving atomic.Pointer[servedModel]
	rejects atomic.Uint64 // requests refused before inference (bad input)
	snap    atomic.Pointer[ModelStatus]

	// Below: owned by the update loop.
	st           slotState
	asm          *transfer.Assembler
	file         *os.File
	manifest     *efpb.Manifest // the target's verified manifest
	lastProgress time.Time      // last chunk added or request sent (monotonic: for stall detection, not the wall clock)
	// pace is how the open download's chunks arrive from the broker
	// (retryStalled); reset by openDownload.
	pace      chunkPace
	badChunks int // chunks refused in this download
	// badFrom counts the refused copies of each chunk by the source that
	// sent it, in this download attempt: the same chunk refused twice from
	// one source ends the attempt.
	badFrom map[chunkFrom]int
	// downloadAttempts counts the download attempts of the target that
	// ended on refused chunks, in this process; retryDownloadAt (real time)
	// is when the next one starts (zero: none scheduled).
	downloadAttempts int
	retryDownloadAt  time.Time
	// After an update failed on the way (failure.Transient), the same
	// generation is applied again at retryTransientAt (real time; zero:
	// none scheduled); transientRetries counts those of transientGen, for
	// the back-off.
	retryTransientAt time.Time
	transientRetries int
	transientGen     uint64
	// verified holds the target's file, mapped, between finishDownload,
	// which hashed it, and stage, which loads it without a second pass; nil
	// otherwise (stage after a restart maps and checks the file).
	verified *modelFile
	inflight map[uint32]bool
	// dl shares the download with the site (peers.go); nil: broker only.
	dl *peers.Download

	// After a failed write (see transition). retry: resume the slot from
	// its recorded state at retryAt (real time); failedStep: the step that
	// failed last; retryWait: the back-off after the next failure, reset
	// once failedStep succeeds.
	retry      bool
	retryAt    time.Time
	failedStep step
	retryWait  time.Duration
	// attemptEnded is set when a staging attempt at the target, counted on
	// disk, ended in this process without activating it (a write failed):
	// the next attempt reuses its count, so only attempts a crash may have
	// ended are counted against MaxActivationAttempts.
	attemptEnded bool
	// abandon is why the trial version is to be given up, set at restore
	// when that could not be recorded; checkTrials tries again.
	abandon string
}

func (s *slot) closeDownload() {
	if s.dl != nil {
		s.dl.Close()
		s.dl = nil
	}
	if s.file != nil {
		_ = s.file.Close()
		s.file = nil
	}
	s.asm = nil
	s.badChunks = 0
	s.badFrom = nil
	s.inflight = nil
}

// chunkFrom is one chunk of a download from one source ("broker", or a
// peer's name).
type chunkFrom struct {
	index  uint32
	source string
}

// acquire returns the serving model with its read lock held; the caller
// must release it. It retries when it races with a swap.
func (s *slot) acquire() (*servedModel, bool) {
	for {
		m := s.serving.Load()
		if m == nil {
			return nil, false
		}
		m.mu.RLock()
		if !m.closed {
			return m, true
		}
		m.mu.RUnlock()
	}
}

func (a *Agent) slot(name string) *slot {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.slots[name]
}

// backend adapts the agent to the Open Inference Protocol handler.
type backend struct{ a *Agent }

var _ oip.Backend = backend{}

// Ready is true when every model the desired state assigns has a version
// serving (an older one counts while an update is on its way or after one
// was refused); otherwise the reason names each model that has none and
// why (its refused version and the reason).
func (b backend) Ready() (bool, string) {
	st := b.a.Status()
	if len(st) == 0 {
		return false, "no model is assigned to this device yet"
	}
	var why []string
	for _, ms := range st {
		if ms.Serving != "" {
			continue
		}
		switch {
		case ms.FailedVersion != "" && ms.Target == "":
			why = append(why, fmt.Sprintf("model %q has no version serving: version %s was refused: %s", ms.Name, ms.FailedVersion, ms.FailureReason))
		case ms.Target != "":
			why = append(why, fmt.Sprintf("model %q has no version serving yet: version %s is %s", ms.Name, ms.Target, ms.Phase))
		default:
			why = append(why, fmt.Sprintf("model %q has no version serving", ms.Name))
		}
	}
	if len(why) > 0 {
		return false, strings.Join(why, "; ")
	}
	return true, ""
}

func (b backend) Model(name string) (oip.ModelInfo, bool) {
	s := b.a.slot(name)
	if s == nil {
		return oip.ModelInfo{}, false
	}
	m := s.serving.Load()
	if m == nil {
		return oip.ModelInfo{}, false
	}
	return oip.ModelInfo{
		Name:     name,
		Version:  m.version,
		Platform: "onnxruntime_onnx",
		Inputs:   m.manifest.GetInputs(),
		Outputs:  m.manifest.GetOutputs(),
	}, true
}

var errNoModel = errors.New("no active model")

func (b backend) Infer(ctx context.Context, name string, in []oip.Tensor) (string, []oip.Tensor, error) {
	s := b.a.slot(name)
	if s == nil {
		return "", nil, fmt.Errorf("model %q: %w", name, errNoModel)
	}
	m, ok := s.acquire()
	if !ok {
		return "", nil, fmt.Errorf("model %q: %w", name, errNoModel)
	}
	defer m.mu.RUnlock()
	start := time.Now()
	res, err := m.sess.Run(in)
	if errors.Is(err, infer.ErrBadInput) {
		// The request's fault (a shape or value onnxruntime refuses, an
		// empty batch the model cannot take): a 400 that says nothing
		// about the version, so it never counts against one on trial.
		s.rejects.Add(1)
		return m.version, nil, fmt.Errorf("model %q: %w: %v", name, oip.ErrInvalidInput, err)
	}
	if err != nil {
		m.errors.Add(1)
		b.a.observeError(name, m)
		return m.version, nil, err
	}
	m.inferences.Add(1)
	b.a.observe(ctx, name, m, in, res, time.Since(start))
	b.a.shadowOffer(ctx, name, m, in, res) // never blocks; see shadow.go
	b.a.capture.record(ctx, name, m.version, in, res)
	return m.version, res, nil
}
