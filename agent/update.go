package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/mqttc"
	"github.com/edgefleet/edgefleet/internal/peers"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

type evKind int

const (
	evConnected evKind = iota
	evTrust
	evDesired
	evManifest
	evChunk
	evSite
	evPeerChunk
	evShadowManifest // shadow.go
	evShadowChunk
)

type event struct {
	kind    evKind
	topic   string // for evPeerChunk: the model name
	payload []byte
	// evPeerChunk: the chunk's index, the peer it came from and the
	// download that fetched it.
	index uint32
	from  string
	dl    *peers.Download
}

// updater is the state of the update loop; only the Run goroutine touches it.
type updater struct {
	generation uint64          // highest accepted desired-state generation
	desired    []byte          // its envelope bytes
	subs       map[string]bool // filters currently subscribed

	// pendingDesired is the newest desired state, if it could not be
	// verified yet: received before any trust bundle, or signed by a key
	// the trusted bundle does not list (a newer bundle may). It is handled
	// again when a newer bundle is accepted.
	pendingDesired []byte

	// After failed writes (see transition): the desired state last applied,
	// to apply again at reapplyAt when one of its writes failed; and a
	// desired state whose generation could not be recorded, to handle again.
	applied      *efpb.DesiredState
	reapply      bool
	reapplyAt    time.Time
	reapplyWait  time.Duration // back-off while applying keeps failing
	retryDesired []byte

	// The retained documents are asked for again recheckLeft more times,
	// the next at recheckAt (Options.RetainedRecheck).
	recheckAt   time.Time
	recheckLeft int

	// status holds progress reports for a moment (status_hold.go).
	status statusHold
}

// fetchWindow bounds the chunks a download has asked for and not yet
// received. It stays below the broker's per-client queue (256 messages in
// the embedded broker): a larger burst would be dropped and wait for a
// retry. The window is topped up as chunks arrive.
const fetchWindow = 128

// siteFetchWindow is the window of a member fetching from the broker for
// its site (its own chunk topic). It is smaller: what one member has in
// flight when it dies or steps down crossed the site's link for nothing
// (16 chunks of 64 KiB: 2 s of a 4 Mbit/s link, enough to keep it busy).
const siteFetchWindow = 16

// restore loads the persisted state and the committed models. It runs
// before the agent talks to anyone, so a device serves its last good model
// even when the broker is unreachable at boot.
func (a *Agent) restore() error {
	switch b, err := a.kv.Get(keyTrust); {
	case err == nil:
		env, derr := decodeEnvelope(b)
		if derr == nil {
			_, derr = a.verify.RestoreTrustBundle(env)
		}
		if derr != nil {
			// Not fatal: the control plane publishes a current bundle.
			a.log.Warn("stored trust bundle not usable", "err", derr)
		}
	case !errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("agent: restore trust: %w", err)
	}
	gen, desired, err := a.loadGeneration()
	if err != nil {
		return fmt.Errorf("agent: restore generation: %w", err)
	}
	a.u.generation, a.u.desired = gen, desired
	a.gen.Store(gen)
	if err := a.restoreSeq(); err != nil {
		return fmt.Errorf("agent: restore seq: %w", err)
	}
	states, err := a.loadSlots()
	if err != nil {
		return fmt.Errorf("agent: restore slots: %w", err)
	}
	for name, st := range states {
		s := &slot{name: name, st: *st}
		a.mu.Lock()
		a.slots[name] = s
		a.mu.Unlock()
		s.snapshot()
		a.loadCommitted(s)
	}
	return nil
}

// loadCommitted starts serving a slot's committed version at restore: a
// trial restarts, and is counted; a version that no longer loads falls
// back to the previous one. Nothing is reported yet (that happens on
// connect).
func (a *Agent) loadCommitted(s *slot) {
	if s.st.Active == nil {
		return
	}
	ctx := context.Background() // no connection yet: nothing to report to
	if tr := s.st.Trial; tr != nil {
		if tr.Starts >= a.opts.MaxActivationAttempts {
			a.endTrialAtStart(ctx, s, fmt.Sprintf("abandoned after %d restarts during its health period", tr.Starts))
			return
		}
		next := s.st.clone()
		next.Trial.Starts++
		next.Trial.Since = a.opts.Clock().UnixNano()
		if err := a.transition(ctx, s, stepTrialRestart, next); err == nil {
			a.crashPoint("trial")
		}
	}
	a.serveActive(ctx, s)
}

// serveActive loads the committed version and serves it. If it no longer
// loads, the previous version takes its place, recorded first: until that
// is recorded the slot serves nothing (and is resumed on the next tick).
func (a *Agent) serveActive(ctx context.Context, s *slot) {
	m, err := a.loadModel(s.name, s.st.Active)
	if err == nil {
		s.serving.Store(m)
		return
	}
	failed, prev := s.st.Active, s.st.Previous
	a.log.Error("committed model does not load", "model", s.name, "version", failed.Version, "err", err)
	next := s.st.clone()
	next.Active, next.Previous, next.Trial = nil, nil, nil
	var pm *servedModel
	if prev != nil {
		var perr error
		if pm, perr = a.loadModel(s.name, prev); perr != nil {
			a.log.Error("previous model does not load either", "model", s.name, "version", prev.Version, "err", perr)
			pm = nil
		} else {
			next.Active = prev
		}
	}
	next.LastFailure = &failure{Version: failed.Version, SHA256: failed.SHA256, Generation: a.u.generation,
		Reason: fmt.Sprintf("committed version no longer loads: %v", err)}
	if err := a.transition(ctx, s, stepFallback, next); err != nil {
		if pm != nil {
			pm.close()
		}
		return
	}
	if pm != nil {
		s.serving.Store(pm)
	}
}

// loadModel reads a version from disk, checks its bytes against the signed
// manifest, loads it, runs its test vectors and warms it.
func (a *Agent) loadModel(name string, ref *modelRef) (*servedModel, error) {
	return a.loadModelBytes(name, ref, nil)
}

// loadModelLow is loadModelBytes at a low CPU priority (lowPriority): the
// work of activating a version yields to inference on the serving one.
func (a *Agent) loadModelLow(name string, ref *modelRef, verified *modelFile) (m *servedModel, err error) {
	lowPriority(func() { m, err = a.loadModelBytes(name, ref, verified) })
	return m, err
}

// loadModelBytes is loadModel for the model file the caller has just mapped
// and checked against ref (verified non-nil; loadModelBytes closes it), or
// nil to map and check the file here.
func (a *Agent) loadModelBytes(name string, ref *modelRef, verified *modelFile) (*servedModel, error) {
	defer verified.close()
	m, err := manifestOf(ref.Manifest)
	if err != nil {
		return nil, err
	}
	f := verified
	if f == nil {
		if f, err = openVerified(a.modelPath(name, ref.SHA256), ref.SHA256, m.GetSize()); err != nil {
			return nil, err
		}
		defer f.close()
	}
	if uint64(len(f.b)) != m.GetSize() {
		return nil, fmt.Errorf("model file %s is corrupt: %d bytes, the manifest says %d", ref.SHA256, len(f.b), m.GetSize())
	}
	rt, err := a.runtime()
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	// Shared: agents in one process (fleet-sim) hold one onnxruntime
	// session per version; on a device it is simply this agent's.
	// onnxruntime reads the file itself: the hashed pages leave this
	// process first, so a load holds one copy of the model besides
	// onnxruntime's own.
	// The file cannot change under it: the agent alone writes its data
	// directory, and never a model file once it is renamed into place.
	f.dropResident()
	sess, err := rt.LoadSharedFile(f.path, f.b, f.sum, tensorNames(m.GetInputs()), tensorNames(m.GetOutputs()))
	f.close() // onnxruntime keeps nothing of the file
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	if err := sess.Check(m.GetTestVectors(), infer.ManifestTolerance(m)); err != nil {
		_ = sess.Close()
		return nil, fmt.Errorf("test vectors: %w", err)
	}
	if err := sess.Warm(); err != nil {
		_ = sess.Close()
		return nil, fmt.Errorf("warm up: %w", err)
	}
	return &servedModel{version: ref.Version, manifest: m, sess: sess}, nil
}

// manifestOf decodes an already accepted manifest envelope. Its signature
// was checked when it was accepted; a committed model keeps serving after
// its manifest expires (expiry guards new updates, not the last good one).
func manifestOf(env []byte) (*efpb.Manifest, error) {
	e, err := decodeEnvelope(env)
	if err != nil {
		return nil, err
	}
	m := &efpb.Manifest{}
	if err := proto.Unmarshal(e.GetPayload(), m); err != nil {
		return nil, fmt.Errorf("decode manifest: %w", err)
	}
	return m, nil
}

func tensorNames(ts []*efpb.TensorSpec) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.GetName()
	}
	return out
}

func (a *Agent) modelDir(name string) string {
	return filepath.Join(a.opts.DataDir, "models", name)
}

func (a *Agent) modelPath(name, sha string) string {
	return filepath.Join(a.modelDir(name), sha+".onnx")
}

func (a *Agent) partPath(name, sha string) string {
	return filepath.Join(a.modelDir(name), sha+".part")
}

// updateLoop owns every state transition. MQTT handlers only send events.
func (a *Agent) updateLoop(ctx context.Context) {
	if a.opts.Peers.enabled() {
		a.restoreSite(ctx) // before resuming: downloads go through the site
	}
	for _, s := range a.slotList() {
		a.resume(ctx, s)
	}
	a.retryTransient(ctx)
	a.restoreShadows(ctx)
	hb := time.NewTicker(a.opts.HeartbeatInterval)
	defer hb.Stop()
	tick := a.opts.FetchRetryInterval
	if hp := a.opts.HealthPeriod; hp > 0 {
		tick = min(tick, max(hp/4, 10*time.Millisecond))
	}
	retry := time.NewTicker(tick)
	defer retry.Stop()
	defer a.u.status.stop()
	for {
		select {
		case <-ctx.Done():
			a.releaseDueStatus(true) // queued: sent after the next start
			a.publishPresence(false)
			return
		case ev := <-a.events:
			a.handle(ctx, ev)
		case <-a.u.status.C():
			a.releaseDueStatus(false)
		case <-a.peers.wake:
			a.onPeerWake(ctx)
		case <-hb.C:
			a.sendTelemetry(ctx)
		case <-retry.C:
			a.retryTransitions(ctx)
			a.recheckRetained(ctx)
			a.retryStalled(ctx)
			a.retryTransientDue(ctx)
			a.rejoinSite(ctx)
			a.retryShadows(ctx)
			a.checkTrials(ctx)
		}
	}
}

func (a *Agent) handle(ctx context.Context, ev event) {
	switch ev.kind {
	case evConnected:
		a.onConnected(ctx)
	case evTrust:
		a.handleTrust(ctx, ev.payload)
	case evDesired:
		a.handleDesired(ctx, ev.payload)
	case evManifest:
		a.handleManifest(ctx, ev.topic, ev.payload)
	case evChunk:
		a.handleChunk(ctx, ev.payload)
	case evSite:
		a.handleSite(ctx, ev.payload)
	case evPeerChunk:
		a.handlePeerChunk(ctx, ev)
	case evShadowManifest:
		a.handleShadowManifest(ctx, ev.topic, ev.payload)
	case evShadowChunk:
		a.handleShadowChunk(ctx, ev.payload)
	}
}

func (a *Agent) slotList() []*slot {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]*slot, 0, len(a.slots))
	for _, s := range a.slots {
		out = append(out, s)
	}
	slices.SortFunc(out, func(x, y *slot) int { return cmpString(x.name, y.name) })
	return out
}

func cmpString(x, y string) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// retryTransient applies the accepted desired state again at start when
// an update of its generation failed on the way (failure.Transient: chunks
// corrupted in transit until the retries ran out), so that a restarted
// agent tries it again. An update refused for what was signed (a manifest
// or model that does not check out) is not retried: it would fail the same
// way; a newer generation is needed.
func (a *Agent) retryTransient(ctx context.Context) {
	a.retryTransientIf(ctx, func(*slot) bool { return true })
}

// retryTransientDue applies the accepted desired state again when the
// back-off of an update that failed on the way is over (see
// Options.TransientRetry).
func (a *Agent) retryTransientDue(ctx context.Context) {
	now := time.Now() // real time, as for downloads (see retryStalled)
	a.retryTransientIf(ctx, func(s *slot) bool {
		if s.retryTransientAt.IsZero() || now.Before(s.retryTransientAt) {
			return false
		}
		s.retryTransientAt = time.Time{}
		return true
	})
}

func (a *Agent) retryTransientIf(ctx context.Context, due func(*slot) bool) {
	retry := false
	for _, s := range a.slotList() {
		if f := s.st.LastFailure; f != nil && f.Transient && f.Generation == a.u.generation && s.st.Target == nil && due(s) {
			retry = true
		}
	}
	if !retry || a.u.desired == nil {
		return
	}
	env, err := decodeEnvelope(a.u.desired)
	var ds *efpb.DesiredState
	if err == nil {
		ds, err = a.verify.VerifyDesired(env, a.opts.Clock())
	}
	if err != nil {
		a.log.Warn("cannot retry an update that failed on the way: the stored desired state does not verify now (the control plane will renew it)", "err", err)
		return
	}
	a.log.Info("retrying updates that failed on the way", "generation", ds.GetGeneration())
	a.apply(ctx, ds)
}

// resume continues from the recorded state of s: after a restart, and on
// the tick after a write of s failed (see transition). It is the same path
// on purpose: a failed write is recovered from as a crash just before it.
func (a *Agent) resume(ctx context.Context, s *slot) {
	if s.st.Active != nil && s.serving.Load() == nil {
		a.serveActive(ctx, s) // a fallback that could not be recorded
		if s.st.Active != nil && s.serving.Load() == nil {
			return // still not recorded: resumed on a later tick
		}
	}
	t := s.st.Target
	if t == nil {
		return
	}
	a.log.Info("resuming update", "model", s.name, "version", t.Version, "phase", t.Phase)
	switch t.Phase {
	case PhaseManifest:
		// Subscribed anew, the broker sends the retained manifest again.
		// (At start, before the connection, this waits for onConnected.)
		a.unsub(ctx, a.topics.Manifest(s.name, t.Version))
		a.ensureSub(ctx, a.topics.Manifest(s.name, t.Version), evManifest)
	case PhaseDownloading:
		s.closeDownload() // reopened: the assembler rescans the file
		a.openDownload(ctx, s)
	case PhaseVerifying:
		s.closeDownload()
		if fileExists(a.modelPath(s.name, t.SHA256)) {
			a.stage(ctx, s)
			return
		}
		a.openDownload(ctx, s)
	case PhaseStaging:
		a.stage(ctx, s)
	}
}

func (a *Agent) onConnected(ctx context.Context) {
	if a.mqtt() == nil {
		return
	}
	a.ensureAckSub(ctx)
	a.outbox.connected()
	a.ensureSub(ctx, a.topics.Trust(), evTrust)
	if a.opts.Peers.enabled() {
		// Before the desired state: a download it starts finds the site.
		a.ensureSub(ctx, a.topics.Site(a.opts.DeviceID), evSite)
	}
	// The device's own chunk topic: its part of a download its site
	// shares, and what a shared round carried before it asked
	// (FetchRequest.own_topic).
	a.ensureSub(ctx, a.topics.DeviceChunks(a.opts.DeviceID), evChunk)
	a.ensureSub(ctx, a.topics.Desired(a.opts.DeviceID), evDesired)
	if d := a.opts.RetainedRecheck; d > 0 {
		a.u.recheckAt, a.u.recheckLeft = a.opts.Clock().Add(d), 2
	}
	a.publishPresence(true)
	for _, s := range a.slotList() {
		if t := s.st.Target; t != nil {
			switch t.Phase {
			case PhaseManifest:
				a.ensureSub(ctx, a.topics.Manifest(s.name, t.Version), evManifest)
			case PhaseDownloading:
				if s.asm != nil {
					a.ensureSub(ctx, a.chunkTopic(s), evChunk)
					s.pace.reconnected()
					a.requestMissing(ctx, s, true)
				}
			}
		}
		a.reportSlot(ctx, s)
	}
	a.shadowsConnected(ctx)
	a.sendTelemetry(ctx)
}

// recheckRetained asks again for the retained documents the agent
// subscribed to when it connected (see Options.RetainedRecheck): it
// subscribes again to the same filters, which replaces each subscription
// without a gap and makes the broker's node send the retained messages it
// holds now (MQTT 3.1.1, 3.8.4). Copies of
// documents already accepted are recognised and ignored; an older desired
// state a node still held is refused as a replay, as any would be.
func (a *Agent) recheckRetained(ctx context.Context) {
	if a.u.recheckLeft == 0 || a.opts.Clock().Before(a.u.recheckAt) || a.mqtt() == nil {
		return
	}
	a.u.recheckLeft--
	a.u.recheckAt = a.opts.Clock().Add(3 * a.opts.RetainedRecheck)
	again := func(filter string, kind evKind) {
		if !a.u.subs[filter] {
			return // not subscribed (a failed subscribe is retried elsewhere)
		}
		delete(a.u.subs, filter)
		a.ensureSub(ctx, filter, kind)
	}
	a.log.Debug("asking the broker again for retained documents", "left", a.u.recheckLeft)
	again(a.topics.Trust(), evTrust)
	again(a.topics.Desired(a.opts.DeviceID), evDesired)
	for _, s := range a.slotList() {
		if t := s.st.Target; t != nil && t.Phase == PhaseManifest {
			again(a.topics.Manifest(s.name, t.Version), evManifest)
		}
	}
}

func (a *Agent) ensureSub(ctx context.Context, filter string, kind evKind) {
	if a.u.subs[filter] {
		return
	}
	c := a.mqtt()
	if c == nil {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := c.Subscribe(sctx, filter, 1, func(m mqttc.Message) {
		a.send(ctx, event{kind: kind, topic: m.Topic, payload: m.Payload})
	})
	if err != nil {
		a.log.Warn("subscribe failed", "filter", filter, "err", err)
		return
	}
	a.u.subs[filter] = true
}

// ensureAckSub subscribes to the device's ack topic (handled on the MQTT
// client's goroutine, not the update loop: acknowledgements must not wait
// for a model to load). A broker whose ACL predates the topic refuses it;
// the outbox then finds that no acknowledgement comes (outbox.go).
func (a *Agent) ensureAckSub(ctx context.Context) {
	filter := a.topics.Ack(a.opts.DeviceID)
	if a.u.subs[filter] {
		return
	}
	c := a.mqtt()
	if c == nil {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Subscribe(sctx, filter, 1, func(m mqttc.Message) { a.onAck(m.Payload) }); err != nil {
		a.log.Warn("subscribe failed", "filter", filter, "err", err)
		return
	}
	a.u.subs[filter] = true
}

func (a *Agent) unsub(ctx context.Context, filter string) {
	if !a.u.subs[filter] {
		return
	}
	delete(a.u.subs, filter)
	if c := a.mqtt(); c != nil {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := c.Unsubscribe(sctx, filter); err != nil {
			a.log.Debug("unsubscribe failed", "filter", filter, "err", err)
		}
	}
}

// handleTrust follows the trust topic's chain of bundles (bounded; see
// signing.DecodeTrustChain) from the bundle the agent trusts to the newest,
// and persists the newest it accepted.
func (a *Agent) handleTrust(ctx context.Context, payload []byte) {
	chain, err := signing.DecodeTrustChain(payload)
	if err != nil {
		a.drop("trust", err)
		return
	}
	before := a.verify.Version()
	b, err := a.verify.UpdateTrustChain(chain, a.opts.Clock())
	if err != nil {
		a.refuse(ctx, "", efpb.Refusal_REFUSAL_TRUST_BUNDLE, fmt.Sprintf("trust bundle refused: %v", err))
		return
	}
	if b.GetVersion() != before {
		// The newest envelope alone: RestoreTrustBundle takes it back after
		// a restart, and the chain is published again anyway.
		env, err := proto.Marshal(a.verify.BundleEnvelope())
		if err == nil {
			err = a.kv.SetSync(keyTrust, env)
		}
		if err != nil {
			a.log.Error("persist trust bundle", "err", err)
		}
		a.log.Info("trust bundle accepted", "version", b.GetVersion(), "previous", before, "chain", len(chain))
		a.sendTelemetry(ctx) // the control plane sees the new trust version now
		if p := a.u.pendingDesired; p != nil {
			a.u.pendingDesired = nil
			a.handleDesired(ctx, p)
		}
	}
}

func (a *Agent) handleDesired(ctx context.Context, payload []byte) {
	env, err := decodeEnvelope(payload)
	if err != nil {
		a.drop("desired", err)
		return
	}
	a.u.pendingDesired = nil // a newer message replaces one held
	if a.verify.Bundle() == nil {
		a.u.pendingDesired = payload
		return
	}
	ds, err := a.verify.VerifyDesired(env, a.opts.Clock())
	if err != nil {
		a.refuse(ctx, "", efpb.Refusal_REFUSAL_DESIRED_STATE, fmt.Sprintf("desired state refused: %v", err))
		if errors.Is(err, signing.ErrThreshold) {
			// Perhaps signed by a control key of a bundle not seen yet
			// (it should arrive first, but brokers differ): tried again
			// once a newer bundle is accepted.
			a.u.pendingDesired = payload
		}
		return
	}
	if ds.GetDeviceId() != a.opts.DeviceID {
		a.refuse(ctx, "", efpb.Refusal_REFUSAL_DESIRED_STATE, fmt.Sprintf("desired state refused: it is for device %q", ds.GetDeviceId()))
		return
	}
	switch gen := ds.GetGeneration(); {
	case gen < a.u.generation:
		a.refuse(ctx, "", efpb.Refusal_REFUSAL_DESIRED_STATE, fmt.Sprintf("desired state refused: generation %d is older than the accepted generation %d (replay)", gen, a.u.generation))
		return
	case gen == a.u.generation:
		if bytes.Equal(payload, a.u.desired) {
			return // the retained copy, redelivered on reconnect
		}
		a.refuse(ctx, "", efpb.Refusal_REFUSAL_DESIRED_STATE, fmt.Sprintf("desired state refused: generation %d was already accepted with different content", gen))
		return
	}
	for _, as := range ds.GetModels() {
		if err := topics.ValidModelName(as.GetName()); err != nil {
			a.refuse(ctx, "", efpb.Refusal_REFUSAL_DESIRED_STATE, fmt.Sprintf("desired state refused: %v", err))
			return
		}
		if len(as.GetSha256()) != sha256.Size {
			a.refuse(ctx, as.GetName(), efpb.Refusal_REFUSAL_DESIRED_STATE, "desired state refused: assignment has no sha256")
			return
		}
	}
	err = a.persist(stepGeneration, func() error { return a.saveGeneration(ds.GetGeneration(), payload) })
	if err != nil {
		// Not acted on: it would not survive a restart. Handled again on
		// the next tick (a newer desired state replaces it).
		a.writeFailures.Add(1)
		a.logLimited(slog.LevelError, logKindNotPersisted, "state not persisted; not acted on",
			"step", stepGeneration, "generation", ds.GetGeneration(), "retry", "handle the desired state again", "err", err)
		a.u.retryDesired = payload
		return
	}
	a.u.retryDesired = nil
	a.u.generation, a.u.desired = ds.GetGeneration(), payload
	a.gen.Store(ds.GetGeneration())
	a.capture.setPolicies(ds)
	a.dropShadows(ctx, ds) // before apply: see dropShadows
	a.apply(ctx, ds)
	a.startShadows(ctx, ds)
}

// apply moves every slot towards the desired assignments. A slot whose
// write fails stays as it is; the others go on, and the desired state is
// applied again on the next tick (see transition).
func (a *Agent) apply(ctx context.Context, ds *efpb.DesiredState) {
	a.u.applied, a.u.reapply = ds, false
	want := map[string]bool{}
	for _, as := range ds.GetModels() {
		want[as.GetName()] = true
		s, created := a.slotFor(as.GetName())
		sha := hex.EncodeToString(as.GetSha256())
		old := s.st.Target
		next := s.st.clone()
		// A version is its name and bytes: two versions may share the ONNX
		// bytes and differ in their manifests (new test vectors, new
		// reference statistics), and the new one must still activate.
		want := modelRef{Version: as.GetVersion(), SHA256: sha}
		switch {
		case s.st.Active.is(want):
			if old != nil {
				next.Target = nil
				if a.transition(ctx, s, stepDrop, next) != nil {
					continue
				}
				a.releaseTarget(ctx, s, old)
			}
			a.reportSlot(ctx, s)
		case old != nil && old.modelRef.is(want):
			if old.Generation != ds.GetGeneration() {
				next.Target.Generation = ds.GetGeneration()
				_ = a.transition(ctx, s, stepRetarget, next) // the update goes on either way
			}
		case s.st.Previous.is(want):
			next.Target = &target{modelRef: *s.st.Previous, Generation: ds.GetGeneration(), Phase: PhaseStaging, Rollback: true}
			if a.transition(ctx, s, stepRollback, next) != nil {
				continue
			}
			if old != nil {
				a.releaseTarget(ctx, s, old)
			}
			a.stage(ctx, s)
		default:
			if f := s.st.LastFailure; f != nil && f.Generation == ds.GetGeneration() && !f.Transient && want.is(modelRef{Version: f.Version, SHA256: f.SHA256}) {
				continue // refused for good in this generation (applied again at restart: see retryTransient)
			}
			next.Target = &target{modelRef: modelRef{Version: as.GetVersion(), SHA256: sha},
				Generation: ds.GetGeneration(), Phase: PhaseManifest}
			if a.transition(ctx, s, stepManifest, next) != nil {
				if created {
					a.forgetSlot(s) // nothing of it was recorded
				}
				continue
			}
			if old != nil {
				a.releaseTarget(ctx, s, old)
			}
			if !a.inlineManifest(ctx, s, as.GetManifest()) {
				a.ensureSub(ctx, a.topics.Manifest(s.name, as.GetVersion()), evManifest)
			}
		}
	}
	for _, s := range a.slotList() {
		if !want[s.name] {
			a.removeSlot(ctx, s)
		}
	}
	if !a.u.reapply {
		a.u.reapplyWait = 0 // every write succeeded
	}
}

// slotFor returns the slot of model name, creating it (in memory) if there
// is none yet.
func (a *Agent) slotFor(name string) (s *slot, created bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s = a.slots[name]
	if s == nil {
		s = &slot{name: name}
		a.slots[name] = s
		created = true
	}
	return s, created
}

// forgetSlot drops a slot from memory only (removeSlot removes one).
func (a *Agent) forgetSlot(s *slot) {
	a.mu.Lock()
	delete(a.slots, s.name)
	a.mu.Unlock()
}

func (a *Agent) handleManifest(ctx context.Context, topic string, payload []byte) {
	tp, err := a.topics.Parse(topic)
	if err != nil {
		a.drop("manifest", err)
		return
	}
	s := a.slot(tp.Model)
	if s == nil || s.st.Target == nil || s.st.Target.Phase != PhaseManifest || s.st.Target.Version != tp.Version {
		return // not (or no longer) wanted
	}
	env, err := decodeEnvelope(payload)
	if err != nil {
		a.drop("manifest", err)
		return
	}
	m, err := a.checkManifest(env, tp.Model, s.st.Target)
	if err != nil {
		a.failTargetRefused(ctx, s, efpb.Refusal_REFUSAL_MANIFEST, err.Error())
		return
	}
	a.unsub(ctx, topic)
	a.startDownload(ctx, s, payload, m)
}

// inlineManifest takes the target's manifest from its assignment in the
// desired state (ModelAssignment.manifest), and reports whether it did.
// One that does not pass checkManifest is not a refusal: the desired
// state may have outlived the manifest's renewals, so the agent fetches
// the one on the manifest topic, and judges that one.
func (a *Agent) inlineManifest(ctx context.Context, s *slot, payload []byte) bool {
	if len(payload) == 0 {
		return false
	}
	env, err := decodeEnvelope(payload)
	var m *efpb.Manifest
	if err == nil {
		m, err = a.checkManifest(env, s.name, s.st.Target)
	}
	if err != nil {
		a.log.Info("manifest in the desired state not taken; fetching the published one", "model", s.name, "version", s.st.Target.Version, "err", err)
		return false
	}
	a.startDownload(ctx, s, payload, m)
	return true
}

// startDownload records the target's verified manifest m (payload: its
// envelope) and starts downloading the model.
func (a *Agent) startDownload(ctx context.Context, s *slot, payload []byte, m *efpb.Manifest) {
	next := s.st.clone()
	next.Target.Manifest = payload
	next.Target.Phase = PhaseDownloading
	if a.transition(ctx, s, stepDownloading, next) != nil {
		return // the manifest is fetched again when the slot is resumed
	}
	s.manifest = m
	a.openDownload(ctx, s)
}

// MaxONNXOpset is the highest default-domain ONNX opset the bundled
// onnxruntime (1.24) runs; a manifest declaring a higher one is refused
// before any byte is fetched.
const MaxONNXOpset = 24

// checkManifest applies every check a manifest must pass before a single
// byte of its model is fetched.
func (a *Agent) checkManifest(env *efpb.Envelope, name string, t *target) (*efpb.Manifest, error) {
	m, err := a.verify.VerifyManifest(env, a.opts.Clock())
	if err != nil {
		return nil, fmt.Errorf("manifest refused: %w", err)
	}
	if m.GetName() != name || m.GetVersion() != t.Version {
		return nil, fmt.Errorf("manifest refused: it describes %s@%s, not %s@%s", m.GetName(), m.GetVersion(), name, t.Version)
	}
	if got := hex.EncodeToString(m.GetSha256()); got != t.SHA256 {
		return nil, fmt.Errorf("manifest refused: it lists sha256 %s but the desired state names %s", got, t.SHA256)
	}
	if err := transfer.ValidateManifest(m, a.opts.Limits); err != nil {
		return nil, fmt.Errorf("manifest refused: %w", err)
	}
	if hw := m.GetHardware(); len(hw) > 0 && !slices.Contains(hw, a.opts.Hardware) {
		return nil, fmt.Errorf("manifest refused: model is built for %v, this device is %s", hw, a.opts.Hardware)
	}
	if rt := m.GetRuntime(); rt != "" && rt != "onnxruntime" {
		return nil, fmt.Errorf("manifest refused: runtime %q is not supported (want onnxruntime)", rt)
	}
	if op := m.GetOpset(); op > MaxONNXOpset {
		return nil, fmt.Errorf("manifest refused: model needs ONNX opset %d, this runtime supports up to %d", op, MaxONNXOpset)
	}
	return m, nil
}

// openDownload opens (or reopens after a restart) the partial file; the
// assembler rescans it, so a resumed download keeps every intact chunk.
func (a *Agent) openDownload(ctx context.Context, s *slot) {
	t := s.st.Target
	if s.manifest == nil {
		m, err := manifestOf(t.Manifest)
		if err != nil {
			a.failTarget(ctx, s, fmt.Sprintf("stored manifest unreadable: %v", err))
			return
		}
		s.manifest = m
	}
	if fileExists(a.modelPath(s.name, t.SHA256)) {
		a.stage(ctx, s)
		return
	}
	if err := os.MkdirAll(a.modelDir(s.name), 0o750); err != nil {
		a.failTarget(ctx, s, fmt.Sprintf("model dir: %v", err))
		return
	}
	f, err := os.OpenFile(a.partPath(s.name, t.SHA256), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		a.failTarget(ctx, s, fmt.Sprintf("open download: %v", err))
		return
	}
	asm, err := transfer.NewAssembler(s.manifest, f)
	if err != nil {
		_ = f.Close()
		a.failTarget(ctx, s, fmt.Sprintf("open download: %v", err))
		return
	}
	s.file, s.asm, s.pace = f, asm, chunkPace{}
	s.lastProgress = time.Now()
	if asm.Complete() {
		a.finishDownload(ctx, s)
		return
	}
	a.reportSlot(ctx, s)
	a.startPeerDownload(ctx, s) // when the agent shares with its site
	a.ensureSub(ctx, a.chunkTopic(s), evChunk)
	a.requestMissing(ctx, s, true)
}

// chunkTopic is where the broker's chunks for s arrive: the device's own
// topic when the site shares the download (only this member's part comes
// from the broker), else the version's shared topic.
func (a *Agent) chunkTopic(s *slot) string {
	if s.dl != nil {
		return a.topics.DeviceChunks(a.opts.DeviceID)
	}
	return a.topics.Chunks(s.name, s.st.Target.Version)
}

// requestMissing asks the control plane for missing chunks, keeping at most
// fetchWindow in flight; restart forgets what is in flight (after a stall,
// a reconnect or a restart). The chunk subscription is in place before the
// request goes out.
func (a *Agent) requestMissing(ctx context.Context, s *slot, restart bool) {
	if s.asm == nil || !a.u.subs[a.chunkTopic(s)] {
		return
	}
	window := fetchWindow
	if s.dl != nil {
		window = siteFetchWindow
	}
	if restart || s.inflight == nil {
		s.inflight = map[uint32]bool{}
	} else if len(s.inflight) > window/2 {
		return // enough on the way
	}
	var candidates []uint32
	if s.dl != nil {
		candidates = s.dl.BrokerChunks() // the site's other chunks come from peers
	} else {
		candidates = s.asm.Missing(len(s.inflight) + window)
	}
	var missing []uint32
	for _, idx := range candidates {
		if !s.inflight[idx] && len(s.inflight) < window {
			s.inflight[idx] = true
			missing = append(missing, idx)
		}
	}
	if len(missing) == 0 {
		return
	}
	s.lastProgress = time.Now()
	a.requestChunks(a.fetchRequest(s.name, s.st.Target.Version, missing, s.dl != nil, &s.pace))
}

// fetchRequest asks for the missing chunks of name@version: on the
// device's own topic (direct) when its site shares the download, else on
// the version's shared topic, or on its own if the version's round went
// out before it asked and it is subscribed there. pace is the download's:
// the request says whether it is the first since the download opened or
// the agent reconnected, and which chunk arrived last.
func (a *Agent) fetchRequest(name, version string, missing []uint32, direct bool, pace *chunkPace) *efpb.FetchRequest {
	return &efpb.FetchRequest{DeviceId: a.opts.DeviceID, Name: name, Version: version, Missing: missing,
		Direct: direct, Fresh: pace.fresh(), OwnTopic: a.u.subs[a.topics.DeviceChunks(a.opts.DeviceID)],
		LastReceived: pace.received}
}

func (a *Agent) handleChunk(ctx context.Context, payload []byte) {
	// A view, not a copy: c.Data aliases the payload, which is this
	// handler's alone, and is written out before the handler returns.
	c, err := efpb.DecodeChunkView(payload)
	if err != nil {
		a.drop("chunk", err)
		return
	}
	s := a.slot(c.Name)
	if s == nil || s.asm == nil || s.st.Target == nil || s.st.Target.Version != c.Version {
		// A challenger's chunk on the device's own topic (its download
		// goes through the site, or it asked after the version's round),
		// another agent's fetch, or a late duplicate.
		if sh := a.shadow.byName[c.Name]; sh != nil && sh.asm != nil && sh.version == c.Version {
			sh.pace.arrived(c.Index, time.Now())
			a.addShadowChunk(ctx, sh, c.Index, c.Data, sourceBroker)
		}
		return
	}
	s.pace.arrived(c.Index, time.Now())
	added, err := s.asm.Add(c.Index, c.Data)
	if err != nil {
		a.badChunk(ctx, s, c.Index, sourceBroker, err)
		return
	}
	if !added {
		return
	}
	if s.dl != nil {
		s.dl.Added(c.Index)
	}
	a.transfers.add(s.name, c.Version, uint64(len(c.Data)), 0)
	a.chunkAccepted(ctx, s, c.Index)
}

// chunkAccepted moves a download on after a chunk from any source was
// added: completion, or more requests.
func (a *Agent) chunkAccepted(ctx context.Context, s *slot, index uint32) {
	a.chunks.Add(1)
	s.lastProgress = time.Now()
	delete(s.inflight, index)
	a.crashPoint("chunk")
	if s.asm.Complete() {
		a.finishDownload(ctx, s)
		return
	}
	a.requestMissing(ctx, s, false)
}

// sourceBroker names the broker as the source of a chunk.
const sourceBroker = "broker"

// maxDownloadAttempts bounds the download attempts of one target that end
// on refused chunks, in one process; then the update fails (transient: a
// restarted agent tries again, and a running one after a back-off).
const maxDownloadAttempts = 3

// An update that failed on the way is applied again after
// Options.TransientRetry, doubling with each failure of the same generation
// up to transientRetryCap times it: a link that corrupts chunks for a while
// must not leave the device on the old version until the next generation,
// nor make it download again and again while the link is bad.
const transientRetryCap = 10

// badChunk handles a chunk from source that does not match the signed
// manifest. It is asked for again at once; the same chunk refused twice
// from the same source (a corrupting link or store, not a flipped bit) ends
// the download attempt, as do more refused chunks than the download has
// twice over. Verified chunks are kept on disk for the next attempt.
func (a *Agent) badChunk(ctx context.Context, s *slot, idx uint32, source string, err error) {
	a.refused.Add(1)
	s.badChunks++
	a.logLimited(slog.LevelWarn, logKindChunkRefused, "chunk refused", "model", s.name, "version", s.st.Target.Version, "index", idx, "source", source, "err", err)
	if s.badFrom == nil {
		s.badFrom = map[chunkFrom]int{}
	}
	k := chunkFrom{idx, source}
	s.badFrom[k]++
	switch {
	case s.badFrom[k] >= 2:
		a.downloadFailed(ctx, s, fmt.Sprintf("chunk %d from the %s did not match the signed manifest twice (last: %v)", idx, source, err))
	case s.badChunks > max(16, 2*s.asm.Total()):
		a.downloadFailed(ctx, s, fmt.Sprintf("%d chunks did not match the signed manifest (last: %v)", s.badChunks, err))
	default:
		delete(s.inflight, idx)
		a.refetch(ctx, s, idx)
	}
}

// refetch asks for one chunk again now, outside the fetch window's
// accounting (the refused copy was in it).
func (a *Agent) refetch(ctx context.Context, s *slot, idx uint32) {
	if s.inflight != nil {
		s.inflight[idx] = true
	}
	a.requestChunks(&efpb.FetchRequest{DeviceId: a.opts.DeviceID, Name: s.name, Version: s.st.Target.Version, Missing: []uint32{idx}})
}

// downloadFailed ends a download attempt that chunks corrupted on the way
// spoiled: it is tried again with back-off (FetchRetryInterval, doubling,
// at most a minute) up to maxDownloadAttempts times, then the update fails
// as transient.
func (a *Agent) downloadFailed(ctx context.Context, s *slot, why string) {
	s.downloadAttempts++
	if s.downloadAttempts >= maxDownloadAttempts {
		n := s.downloadAttempts
		s.downloadAttempts = 0
		a.failTransient(ctx, s, fmt.Sprintf("download refused after %d attempts: %s", n, why))
		return
	}
	wait := min(a.opts.FetchRetryInterval<<(s.downloadAttempts-1), time.Minute)
	a.unsub(ctx, a.topics.Chunks(s.name, s.st.Target.Version))
	s.closeDownload() // the verified chunks stay in the part file
	s.retryDownloadAt = time.Now().Add(wait)
	reason := fmt.Sprintf("download attempt %d of %d failed: %s; retrying in %v", s.downloadAttempts, maxDownloadAttempts, why, wait)
	a.logLimited(slog.LevelWarn, logKindChunkRefused, "download attempt failed", "model", s.name, "version", s.st.Target.Version, "reason", reason)
	a.report(ctx, s, efpb.ModelState_MODEL_STATE_DOWNLOADING, s.st.Target.Version, reason)
}

// failTransient is failTarget for a failure on the way (see
// failure.Transient).
func (a *Agent) failTransient(ctx context.Context, s *slot, reason string) {
	a.failTargetWith(ctx, s, efpb.Refusal_REFUSAL_UNSPECIFIED, reason, true)
}

// retryStalled asks again for chunks of downloads that made no progress,
// and starts the download attempts whose back-off is over.
func (a *Agent) retryStalled(ctx context.Context) {
	// Real elapsed time, not Options.Clock: a wall clock that jumps (NTP,
	// an injected skew, fleet-sim's sped-up clock) must not make a download
	// that is progressing look stalled, nor a stalled one look fresh.
	for _, s := range a.slotList() {
		if t := s.st.Target; t != nil && s.asm == nil && t.Phase == PhaseDownloading &&
			!s.retryDownloadAt.IsZero() && !time.Now().Before(s.retryDownloadAt) {
			s.retryDownloadAt = time.Time{}
			a.log.Info("retrying download", "model", s.name, "version", t.Version, "attempt", s.downloadAttempts+1)
			a.openDownload(ctx, s)
			continue
		}
		if s.asm == nil || s.st.Target == nil || s.asm.Complete() {
			continue // a complete download waits to be verified, not for chunks
		}
		if a.stalled(&s.pace, s.lastProgress) {
			a.ensureSub(ctx, a.chunkTopic(s), evChunk)
			a.requestMissing(ctx, s, true)
		}
	}
}

// stalled reports whether a download should ask again for what it has in
// flight (chunkPace.stalled), and counts the retry if so.
func (a *Agent) stalled(p *chunkPace, lastProgress time.Time) bool {
	if !p.stalled(time.Now(), lastProgress, a.opts.FetchRetryInterval) {
		return false
	}
	p.quiet++
	return true
}

func (a *Agent) finishDownload(ctx context.Context, s *slot) {
	a.unsub(ctx, a.topics.Chunks(s.name, s.st.Target.Version)) // the device topic stays: other downloads use it
	next := s.st.clone()
	next.Target.Phase = PhaseVerifying
	if a.transition(ctx, s, stepVerifying, next) != nil {
		return // the download stays open until the agent closes or resumes it
	}
	t := s.st.Target
	// Every chunk was checked as it was written: mapped, not hashed again
	// (openDownloaded); the Go heap never holds the model (modelfile.go).
	man, err := manifestOf(t.Manifest)
	var verified *modelFile
	if err == nil {
		verified, err = openDownloaded(a.partPath(s.name, t.SHA256), t.SHA256, man.GetSize())
	}
	if err != nil {
		s.closeDownload()
		_ = os.Remove(a.partPath(s.name, t.SHA256))
		a.failTarget(ctx, s, fmt.Sprintf("model bytes do not match the manifest: %v", err))
		return
	}
	err = s.file.Sync()
	s.closeDownload()
	if err == nil {
		err = os.Rename(a.partPath(s.name, t.SHA256), a.modelPath(s.name, t.SHA256))
	}
	if err == nil {
		err = syncDir(a.modelDir(s.name))
	}
	if err != nil {
		verified.close()
		a.failTarget(ctx, s, fmt.Sprintf("store model: %v", err))
		return
	}
	a.crashPoint("verified")
	verified.path = a.modelPath(s.name, t.SHA256) // renamed into place
	s.verified = verified
	a.refreshShares() // the verified file serves peers while it stages
	a.stage(ctx, s)
}

// stage loads the target next to the serving model, checks it, commits it
// and only then swaps it in: requests in flight finish on the old session.
func (a *Agent) stage(ctx context.Context, s *slot) {
	verified := s.verified // set by finishDownload only; never kept past here
	s.verified = nil
	defer verified.close() // loadModelBytes closes it sooner
	next := s.st.clone()
	next.Target.Phase = PhaseStaging
	if !s.attemptEnded {
		next.Target.Attempts++
	}
	if n := next.Target.Attempts; n > a.opts.MaxActivationAttempts {
		a.failTarget(ctx, s, fmt.Sprintf("abandoned after %d activation attempts: the agent restarted while activating it", n-1))
		return
	}
	// Counted before acting: a crash loop is counted.
	if a.transition(ctx, s, stepStaging, next) != nil {
		return
	}
	s.attemptEnded = false
	defer func() { s.attemptEnded = s.st.Target != nil }() // ended here, not by a crash
	t := s.st.Target
	m, err := a.loadModelLow(s.name, &t.modelRef, verified)
	if err != nil {
		a.failTarget(ctx, s, err.Error())
		return
	}
	newState := slotState{Active: &modelRef{Version: t.Version, SHA256: t.SHA256, Manifest: t.Manifest}, Previous: s.st.Previous}
	if old := s.st.Active; old != nil && !old.is(t.modelRef) {
		newState.Previous = old
	}
	if newState.Previous.is(t.modelRef) {
		newState.Previous = nil
	}
	if a.opts.HealthPeriod > 0 {
		newState.Trial = &trial{Since: a.opts.Clock().UnixNano(), Generation: t.Generation, Starts: 1}
	}
	a.crashPoint("staged")
	if a.transition(ctx, s, stepActivate, newState) != nil {
		m.close()
		return // resumed on the next tick: staged again from the file on disk
	}
	a.crashPoint("committed")
	s.abandon = ""
	if old := s.serving.Swap(m); old != nil {
		old.close()
	}
	s.manifest = nil
	a.cleanFiles(s)
	a.refreshShares()
	reason := ""
	if t.Rollback {
		reason = "reactivated the previous version from disk"
	}
	if s.st.Trial != nil {
		a.crashPoint("trial")
		a.log.Info("model serving on trial", "model", s.name, "version", t.Version, "health_period", a.opts.HealthPeriod)
		a.report(ctx, s, efpb.ModelState_MODEL_STATE_PENDING, t.Version, "serving on trial (health period)")
		return
	}
	a.log.Info("model active", "model", s.name, "version", t.Version, "generation", t.Generation)
	a.report(ctx, s, efpb.ModelState_MODEL_STATE_ACTIVE, t.Version, reason)
}

// failTarget gives up the update in progress, records why, and leaves the
// committed version serving. If the record cannot be written the target
// stays as recorded and is resumed on the next tick, where the check that
// failed runs again.
func (a *Agent) failTarget(ctx context.Context, s *slot, reason string) {
	a.failTargetRefused(ctx, s, efpb.Refusal_REFUSAL_UNSPECIFIED, reason)
}

// failTargetRefused is failTarget for a signed document the agent refused:
// the status event says which kind (efpb.Refusal; unspecified for other
// failures).
func (a *Agent) failTargetRefused(ctx context.Context, s *slot, kind efpb.Refusal, reason string) {
	a.failTargetWith(ctx, s, kind, reason, false)
}

func (a *Agent) failTargetWith(ctx context.Context, s *slot, kind efpb.Refusal, reason string, transient bool) {
	t := s.st.Target
	if t == nil {
		return
	}
	a.refused.Add(1)
	a.log.Warn("update refused; current version keeps serving", "model", s.name, "version", t.Version, "reason", reason)
	next := s.st.clone()
	next.Target = nil
	next.LastFailure = &failure{Version: t.Version, SHA256: t.SHA256, Generation: t.Generation, Reason: reason, Transient: transient}
	if a.transition(ctx, s, stepFailure, next) != nil {
		return
	}
	a.releaseTarget(ctx, s, t)
	if transient {
		if s.transientGen != t.Generation {
			s.transientGen, s.transientRetries = t.Generation, 0
		}
		base := a.opts.TransientRetry
		wait := min(base<<min(s.transientRetries, 8), transientRetryCap*base)
		s.transientRetries++
		s.retryTransientAt = time.Now().Add(wait)
		reason = fmt.Sprintf("%s; trying again in %v", reason, wait)
	}
	ev := a.statusEvent(s, efpb.ModelState_MODEL_STATE_FAILED, t.Version, reason)
	ev.Refused = kind
	a.emitStatus(ev)
}

// releaseTarget lets go of what the update to t held: its download, its
// subscriptions and its files, except those of the versions now recorded.
// It runs once a state without t is persisted.
func (a *Agent) releaseTarget(ctx context.Context, s *slot, t *target) {
	s.closeDownload()
	s.manifest = nil
	s.verified.close()
	s.verified = nil
	s.attemptEnded = false
	s.failedStep, s.retryWait = "", 0 // what failed belonged to this update
	s.downloadAttempts, s.retryDownloadAt = 0, time.Time{}
	a.unsub(ctx, a.topics.Manifest(s.name, t.Version))
	a.unsub(ctx, a.topics.Chunks(s.name, t.Version))
	a.cleanFiles(s)
	a.refreshShares()
}

// removeSlot removes a model no longer assigned: its record first (synced),
// then its session and files.
func (a *Agent) removeSlot(ctx context.Context, s *slot) {
	err := a.persist(stepRemove, func() error {
		return a.kv.Update(func(tx *store.Tx) error { return tx.Delete(slotKey(s.name)) }, true)
	})
	if err != nil {
		a.notPersisted(ctx, s, stepRemove, fmt.Errorf("remove slot %s: %w", s.name, err))
		return
	}
	if t := s.st.Target; t != nil {
		a.releaseTarget(ctx, s, t)
	}
	if m := s.serving.Swap(nil); m != nil {
		m.close()
	}
	_ = os.RemoveAll(a.modelDir(s.name))
	a.forgetSlot(s)
	a.log.Info("model removed", "model", s.name)
	a.report(ctx, s, efpb.ModelState_MODEL_STATE_IDLE, "", "no longer assigned")
}

// cleanFiles removes every file of the slot except the active and previous
// versions and the download in progress.
func (a *Agent) cleanFiles(s *slot) {
	keep := map[string]bool{}
	if r := s.st.Active; r != nil {
		keep[r.SHA256+".onnx"] = true
	}
	if r := s.st.Previous; r != nil {
		keep[r.SHA256+".onnx"] = true
	}
	if t := s.st.Target; t != nil {
		keep[t.SHA256+".part"] = true
		keep[t.SHA256+".onnx"] = true
	}
	entries, err := os.ReadDir(a.modelDir(s.name))
	if err != nil {
		return
	}
	for _, e := range entries {
		if !keep[e.Name()] {
			_ = os.Remove(filepath.Join(a.modelDir(s.name), e.Name()))
		}
	}
}

// drop counts a payload that could not be decoded; what names its topic
// kind (one of a few literals: it is part of the log limiter's kind).
func (a *Agent) drop(what string, err error) {
	a.dropped.Add(1)
	a.logLimited(slog.LevelWarn, "drop/"+what, "malformed payload dropped", "topic_kind", what, "err", err)
}

// refuse counts, logs (rate-limited) and reports a signed document of kind
// that failed a check.
func (a *Agent) refuse(ctx context.Context, model string, kind efpb.Refusal, reason string) {
	a.refused.Add(1)
	a.logLimited(slog.LevelWarn, logKindRefused, "refused", "model", model, "reason", reason)
	a.flushHeldBefore(model) // a refusal is not a state of the model: it follows what was held
	a.emitStatus(&efpb.StatusEvent{ModelName: model, State: efpb.ModelState_MODEL_STATE_FAILED, Reason: reason, Refused: kind})
}

// enterPhase calls the PhaseHook, if any, for the phase the update of s has
// just persisted. It reports whether the agent is stopping and must not act
// on the phase: a restart resumes it from the persisted state.
func (a *Agent) enterPhase(ctx context.Context, s *slot) (stop bool) {
	h := a.phaseHook.Load()
	if h == nil {
		return false
	}
	t := s.st.Target
	(*h)(ctx, s.name, t.Version, t.Phase)
	return ctx.Err() != nil
}

func (a *Agent) crashPoint(name string) {
	if a.crashAt != nil {
		a.crashAt(name)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
