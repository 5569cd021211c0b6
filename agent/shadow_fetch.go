package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// The challenger's lifecycle (see shadow.go): derived from the accepted
// desired state, fetched and checked like a served version into
// DataDir/shadow/<model>, loaded, reported, ended. Everything here runs on
// the update loop.

// publishLive makes the loaded challengers visible to requests.
func (a *Agent) publishLive() {
	m := map[string]*shadowRun{}
	for name, sh := range a.shadow.byName {
		if sh.run != nil {
			m[name] = sh.run
		}
	}
	a.shadow.live.Store(&m)
}

func (a *Agent) shadowDir(name string) string {
	return filepath.Join(a.opts.DataDir, "shadow", name)
}

// dropShadows ends the challengers the desired state ds no longer names
// (or names as the served version). It runs before the served assignments
// are applied, so their subscriptions never collide with a challenger's: a
// challenger promoted to champion hands its checked file to the model's
// directory, and the champion's update stages it without a download.
func (a *Agent) dropShadows(ctx context.Context, ds *efpb.DesiredState) {
	served := map[string]string{}
	for _, as := range ds.GetModels() {
		served[as.GetName()] = hex.EncodeToString(as.GetSha256())
	}
	for name, sh := range a.shadow.byName {
		champ, assigned := served[name]
		if w := wantedShadow(ds, name); w != nil && assigned && champ != sh.sha &&
			w.GetVersion() == sh.version && hex.EncodeToString(w.GetSha256()) == sh.sha {
			continue // still wanted
		}
		if served[name] == sh.sha && sh.run != nil {
			a.handOver(sh)
		}
		a.endShadow(ctx, sh)
	}
}

// handOver moves a loaded challenger's checked file to where the champion's
// update looks for it (update.go: openDownload stages a file it finds).
func (a *Agent) handOver(sh *shadow) {
	src := filepath.Join(a.shadowDir(sh.name), sh.sha+".onnx")
	if err := os.MkdirAll(a.modelDir(sh.name), 0o750); err != nil {
		return
	}
	dst := a.modelPath(sh.name, sh.sha)
	if fileExists(dst) {
		return
	}
	if err := os.Rename(src, dst); err == nil {
		_ = syncDir(a.modelDir(sh.name))
		a.log.Info("challenger promoted: its checked file is staged without a download", "model", sh.name, "version", sh.version)
	}
}

func wantedShadow(ds *efpb.DesiredState, name string) *efpb.ShadowAssignment {
	for _, s := range ds.GetShadows() {
		if s.GetName() == name {
			return s
		}
	}
	return nil
}

// endShadow stops a challenger and removes its files.
func (a *Agent) endShadow(ctx context.Context, sh *shadow) {
	delete(a.shadow.byName, sh.name)
	a.publishLive()
	if sh.run != nil {
		sh.run.model.close() // waits for a run in progress
	}
	sh.closeDownload()
	a.unsub(ctx, a.topics.Manifest(sh.name, sh.version))
	a.unsub(ctx, a.topics.Chunks(sh.name, sh.version))
	_ = os.RemoveAll(a.shadowDir(sh.name))
	a.refreshShares()
	a.log.Info("shadow ended", "model", sh.name, "version", sh.version)
}

// startShadows begins the challengers ds names that are not running yet.
// A challenger naming the served version, or a model the device is not
// assigned, is ignored.
func (a *Agent) startShadows(ctx context.Context, ds *efpb.DesiredState) {
	served := map[string]string{}
	for _, as := range ds.GetModels() {
		served[as.GetName()] = hex.EncodeToString(as.GetSha256())
	}
	for _, w := range ds.GetShadows() {
		name, sha := w.GetName(), hex.EncodeToString(w.GetSha256())
		if a.shadow.byName[name] != nil {
			continue
		}
		if topics.ValidModelName(name) != nil || topics.ValidModelVersion(w.GetVersion()) != nil || len(w.GetSha256()) != sha256.Size {
			a.log.Warn("shadow assignment ignored: invalid", "model", name, "version", w.GetVersion())
			continue
		}
		if s, ok := served[name]; !ok || s == sha {
			continue
		}
		sh := &shadow{name: name, version: w.GetVersion(), sha: sha, stats: &shadowStats{start: a.opts.Clock()}}
		a.shadow.byName[name] = sh
		a.log.Info("shadow assigned", "model", name, "version", sh.version)
		if a.loadShadowFromDisk(sh) {
			continue
		}
		a.ensureSub(ctx, a.topics.Manifest(name, sh.version), evShadowManifest)
	}
}

// loadShadowFromDisk loads a challenger checked before a restart.
func (a *Agent) loadShadowFromDisk(sh *shadow) bool {
	env, err := os.ReadFile(filepath.Join(a.shadowDir(sh.name), sh.sha+".manifest"))
	if err != nil || !fileExists(filepath.Join(a.shadowDir(sh.name), sh.sha+".onnx")) {
		return false
	}
	m, err := manifestOf(env)
	if err != nil || m.GetVersion() != sh.version || hex.EncodeToString(m.GetSha256()) != sh.sha {
		return false
	}
	sh.manifestEnv, sh.manifest = env, m
	if a.loadShadow(sh, nil) {
		return true
	}
	// Fetched and checked again: the file may be what broke.
	a.log.Warn("stored challenger does not load; fetching it again", "model", sh.name, "version", sh.version, "err", sh.failure)
	sh.failure, sh.manifestEnv, sh.manifest = "", nil, nil
	_ = os.RemoveAll(a.shadowDir(sh.name))
	return false
}

// restoreShadows starts the challengers of the accepted desired state
// after a restart.
func (a *Agent) restoreShadows(ctx context.Context) {
	if a.u.desired == nil {
		return
	}
	env, err := decodeEnvelope(a.u.desired)
	if err != nil {
		return
	}
	ds := &efpb.DesiredState{}
	if err := proto.Unmarshal(env.GetPayload(), ds); err != nil {
		return
	}
	a.startShadows(ctx, ds)
}

// shadowsConnected subscribes again what the challengers wait for.
func (a *Agent) shadowsConnected(ctx context.Context) {
	for _, sh := range a.shadow.byName {
		switch {
		case sh.run != nil || sh.failure != "":
		case sh.asm != nil:
			a.ensureShadowSub(ctx, sh)
			sh.pace.reconnected()
			a.requestShadowChunks(ctx, sh, true)
		default:
			a.ensureSub(ctx, a.topics.Manifest(sh.name, sh.version), evShadowManifest)
		}
	}
}

func (a *Agent) failShadow(ctx context.Context, sh *shadow, reason string) {
	a.refused.Add(1)
	a.logLimited(slog.LevelWarn, logKindRefused, "challenger refused; it will not be scored", "model", sh.name, "version", sh.version, "reason", reason)
	sh.failure = reason
	sh.closeDownload()
	a.unsub(ctx, a.topics.Manifest(sh.name, sh.version))
	a.unsub(ctx, a.topics.Chunks(sh.name, sh.version))
	_ = os.RemoveAll(a.shadowDir(sh.name))
	a.refreshShares()
}

func (a *Agent) handleShadowManifest(ctx context.Context, topic string, payload []byte) {
	tp, err := a.topics.Parse(topic)
	if err != nil {
		a.drop("manifest", err)
		return
	}
	sh := a.shadow.byName[tp.Model]
	if sh == nil || sh.version != tp.Version || sh.manifest != nil || sh.failure != "" {
		return
	}
	env, err := decodeEnvelope(payload)
	if err != nil {
		a.drop("manifest", err)
		return
	}
	// The same checks as a served version's manifest.
	m, err := a.checkManifest(env, sh.name, &target{modelRef: modelRef{Version: sh.version, SHA256: sh.sha}})
	if err != nil {
		a.failShadow(ctx, sh, err.Error())
		return
	}
	a.unsub(ctx, topic)
	sh.manifestEnv, sh.manifest = payload, m
	dir := a.shadowDir(sh.name)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		a.failShadow(ctx, sh, fmt.Sprintf("shadow dir: %v", err))
		return
	}
	f, err := os.OpenFile(filepath.Join(dir, sh.sha+".part"), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		a.failShadow(ctx, sh, fmt.Sprintf("open download: %v", err))
		return
	}
	asm, err := transfer.NewAssembler(m, f)
	if err != nil {
		_ = f.Close()
		a.failShadow(ctx, sh, fmt.Sprintf("open download: %v", err))
		return
	}
	sh.file, sh.asm, sh.lastProgress, sh.pace = f, asm, time.Now(), chunkPace{}
	if asm.Complete() {
		a.finishShadow(ctx, sh)
		return
	}
	a.startShadowPeerDownload(ctx, sh) // when the agent shares with its site
	a.ensureShadowSub(ctx, sh)
	a.requestShadowChunks(ctx, sh, true)
}

// shadowChunkTopic is where the broker's chunks of a challenger arrive:
// the device's own topic when the site shares its download, else the
// version's shared topic (see chunkTopic).
func (a *Agent) shadowChunkTopic(sh *shadow) string {
	if sh.dl != nil {
		return a.topics.DeviceChunks(a.opts.DeviceID)
	}
	return a.topics.Chunks(sh.name, sh.version)
}

// ensureShadowSub subscribes to the challenger's chunk topic. The
// device's own topic is handled as the served versions' (handleChunk
// passes a challenger's chunks on).
func (a *Agent) ensureShadowSub(ctx context.Context, sh *shadow) {
	if sh.dl != nil {
		a.ensureSub(ctx, a.shadowChunkTopic(sh), evChunk)
		return
	}
	a.ensureSub(ctx, a.shadowChunkTopic(sh), evShadowChunk)
}

// requestShadowChunks is requestMissing for a challenger's download.
func (a *Agent) requestShadowChunks(ctx context.Context, sh *shadow, restart bool) {
	if sh.asm == nil || !a.u.subs[a.shadowChunkTopic(sh)] {
		return
	}
	window := fetchWindow
	if sh.dl != nil {
		window = siteFetchWindow
	}
	if restart || sh.inflight == nil {
		sh.inflight = map[uint32]bool{}
	} else if len(sh.inflight) > window/2 {
		return
	}
	var candidates []uint32
	if sh.dl != nil {
		candidates = sh.dl.BrokerChunks() // the site's other chunks come from peers
	} else {
		candidates = sh.asm.Missing(len(sh.inflight) + window)
	}
	var missing []uint32
	for _, idx := range candidates {
		if !sh.inflight[idx] && len(sh.inflight) < window {
			sh.inflight[idx] = true
			missing = append(missing, idx)
		}
	}
	if len(missing) == 0 {
		return
	}
	sh.lastProgress = time.Now()
	a.requestChunks(a.fetchRequest(sh.name, sh.version, missing, sh.dl != nil, &sh.pace))
}

func (a *Agent) handleShadowChunk(ctx context.Context, payload []byte) {
	c, err := efpb.DecodeChunkView(payload)
	if err != nil {
		a.drop("chunk", err)
		return
	}
	sh := a.shadow.byName[c.Name]
	if sh == nil || sh.asm == nil || sh.version != c.Version {
		return
	}
	sh.pace.arrived(c.Index, time.Now())
	a.addShadowChunk(ctx, sh, c.Index, c.Data, sourceBroker)
}

// addShadowChunk adds a chunk of a challenger from the broker or (from
// names it) a peer.
func (a *Agent) addShadowChunk(ctx context.Context, sh *shadow, index uint32, data []byte, from string) {
	added, err := sh.asm.Add(index, data)
	if err != nil {
		if from != sourceBroker && sh.dl != nil {
			a.peerChunkRefused(sh.dl, sh.name, event{index: index, from: from}, err)
			return
		}
		a.refused.Add(1)
		sh.badChunks++
		if limit := max(16, 2*sh.asm.Total()); sh.badChunks > limit {
			a.failShadow(ctx, sh, fmt.Sprintf("download refused: %d chunks did not match the signed manifest (last: %v)", sh.badChunks, err))
		}
		return
	}
	if sh.dl != nil {
		sh.dl.Added(index)
	}
	if !added {
		return
	}
	if from == sourceBroker {
		a.transfers.add(sh.name, sh.version, uint64(len(data)), 0)
	} else {
		a.transfers.add(sh.name, sh.version, 0, uint64(len(data)))
	}
	a.chunks.Add(1)
	sh.lastProgress = time.Now()
	delete(sh.inflight, index)
	if sh.asm.Complete() {
		a.finishShadow(ctx, sh)
		return
	}
	a.requestShadowChunks(ctx, sh, false)
}

// retryShadows asks again for chunks of stalled challenger downloads.
func (a *Agent) retryShadows(ctx context.Context) {
	for _, sh := range a.shadow.byName {
		if sh.asm != nil && !sh.asm.Complete() && a.stalled(&sh.pace, sh.lastProgress) {
			a.ensureShadowSub(ctx, sh)
			a.requestShadowChunks(ctx, sh, true)
		}
	}
}

// finishShadow checks the whole file, keeps it with its manifest, and
// loads it.
func (a *Agent) finishShadow(ctx context.Context, sh *shadow) {
	a.unsub(ctx, a.topics.Chunks(sh.name, sh.version))
	verified, err := sh.asm.ReadVerified()
	dir := a.shadowDir(sh.name)
	if err != nil {
		a.failShadow(ctx, sh, fmt.Sprintf("model bytes do not match the manifest: %v", err))
		return
	}
	err = sh.file.Sync()
	sh.closeDownload()
	if err == nil {
		err = os.Rename(filepath.Join(dir, sh.sha+".part"), filepath.Join(dir, sh.sha+".onnx"))
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, sh.sha+".manifest"), sh.manifestEnv, 0o640)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		a.failShadow(ctx, sh, fmt.Sprintf("store model: %v", err))
		return
	}
	if !a.loadShadow(sh, verified) {
		a.failShadow(ctx, sh, sh.failure)
		return
	}
	a.refreshShares() // the checked file serves the site's other members
}

// loadShadow loads a checked challenger (test vectors, warm-up, as a
// served version) and starts scoring with it.
func (a *Agent) loadShadow(sh *shadow, verified []byte) bool {
	ref := &modelRef{Version: sh.version, SHA256: sh.sha, Manifest: sh.manifestEnv}
	var (
		m   *servedModel
		err error
	)
	// The file is checked and mapped again rather than loaded from the
	// bytes just verified: the agent hands onnxruntime files, not copies.
	_ = verified
	m, err = a.loadShadowFile(sh.name, ref)
	if err != nil {
		sh.failure = err.Error()
		return false
	}
	sh.run = &shadowRun{name: sh.name, model: m, preds: newPredictor(m.manifest), stats: sh.stats,
		ring: newShadowRing(a.opts.LabelCapacity, a.opts.LabelTTL), champ: map[string]*predictor{}}
	a.publishLive()
	a.log.Info("challenger scoring in shadow", "model", sh.name, "version", sh.version)
	return true
}

// loadShadowFile is loadModel for a file in the shadow directory.
func (a *Agent) loadShadowFile(name string, ref *modelRef) (*servedModel, error) {
	man, err := manifestOf(ref.Manifest)
	if err != nil {
		return nil, err
	}
	f, err := openVerified(filepath.Join(a.shadowDir(name), ref.SHA256+".onnx"), ref.SHA256, man.GetSize())
	if err != nil {
		return nil, fmt.Errorf("shadow %w", err)
	}
	return a.loadModelBytes(name, ref, f)
}

// collectShadows returns a report per challenger and starts new windows.
func (a *Agent) collectShadows(now time.Time) []*efpb.ShadowReport {
	var out []*efpb.ShadowReport
	for _, sh := range a.shadow.byName {
		r := sh.stats.report(sh.name, sh.version, now)
		r.Ready = sh.run != nil
		r.Failure = sh.failure
		if r.ChampionVersion == "" {
			if s := a.slot(sh.name); s != nil {
				if m := s.serving.Load(); m != nil {
					r.ChampionVersion = m.version
				}
			}
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(x, y *efpb.ShadowReport) int { return cmpString(x.ModelName, y.ModelName) })
	return out
}

// closeShadows releases every challenger's session (the agent stops).
func (a *Agent) closeShadows() {
	for _, sh := range a.shadow.byName {
		if sh.run != nil {
			sh.run.model.close()
		}
		sh.closeDownload()
	}
}
