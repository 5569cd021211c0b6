package fleet

import (
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/ingest"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// OnStatus handles a device's status event (topic .../dev/{id}/status):
// the latest lifecycle state per model, or a device-level refusal. An event
// that reports a refusal as it happens (StatusEvent.refused) is also the
// device's LastRefusal and counted in edgefleet_device_refusals_total.
func (f *Fleet) OnStatus(topic string, payload []byte) {
	const kind = topics.KindStatus
	ev := &efpb.StatusEvent{}
	dev, ok := f.opts.Ingest.Decode(kind, topic, payload, ev)
	if !ok {
		return
	}
	if ev.ProtocolVersion > efpb.ProtocolVersion {
		f.opts.Ingest.Drop(kind, ingest.ProtocolVersion, topic, fmt.Errorf("protocol_version %d", ev.ProtocolVersion))
		f.ack(dev, ev.Seq)
		return
	}
	refusal, refused := api.RefusalKindOf(ev.Refused)
	if ev.ModelName == "" {
		if !refused {
			refusal = api.RefusedUnknown // an older agent: every event without a model is a refusal
		}
		f.onRefusal(kind, topic, dev, refusal, ev)
		return
	}
	if err := topics.ValidModelName(ev.ModelName); err != nil {
		f.opts.Ingest.Drop(kind, ingest.Invalid, topic, err)
		f.ack(dev, ev.Seq)
		return
	}
	for _, v := range []string{ev.ModelVersion, ev.ActiveVersion} {
		if v == "" {
			continue
		}
		if err := topics.ValidModelVersion(v); err != nil {
			f.opts.Ingest.Drop(kind, ingest.Invalid, topic, err)
			f.ack(dev, ev.Seq)
			return
		}
	}
	tooMany, stale := false, false
	drop, w, err := f.reg.apply(dev, func(d *api.Device, now time.Time) bool {
		d.Online, d.LastSeen = true, now
		st := d.Reported[ev.ModelName]
		if st != nil && ev.Seq != 0 && ev.Seq <= st.Seq {
			// Sequence numbers only grow on a device (across restarts
			// too): an older event arriving late must not undo a newer one.
			stale = true
			return false
		}
		if st == nil {
			if len(d.Reported) >= maxReportedModels {
				tooMany = true
				return false
			}
			if d.Reported == nil {
				d.Reported = map[string]*api.ModelStatus{}
			}
			st = &api.ModelStatus{}
			d.Reported[ev.ModelName] = st
		}
		previous := st.PreviousVersion
		if st.ActiveVersion != "" && ev.ActiveVersion != "" && ev.ActiveVersion != st.ActiveVersion {
			previous = st.ActiveVersion
		}
		*st = api.ModelStatus{
			State:           api.ModelStateOf(ev.State),
			TargetVersion:   ev.ModelVersion,
			ActiveVersion:   ev.ActiveVersion,
			PreviousVersion: previous,
			Reason:          truncate(ev.Reason, maxReasonLen),
			ChunksHave:      ev.ChunksHave,
			ChunksTotal:     ev.ChunksTotal,
			Generation:      ev.Generation,
			Seq:             ev.Seq,
			Updated:         now,
		}
		if refused {
			d.LastRefusal = &api.Refusal{Kind: refusal, Model: ev.ModelName, Reason: st.Reason, Generation: ev.Generation, Seq: ev.Seq, Time: now}
		}
		return true
	})
	if drop == "" && !tooMany && !stale {
		f.reg.addRecent(dev, api.StatusRecord{Model: ev.ModelName, ModelStatus: api.ModelStatus{
			State: api.ModelStateOf(ev.State), TargetVersion: ev.ModelVersion, ActiveVersion: ev.ActiveVersion,
			Reason: truncate(ev.Reason, maxReasonLen), Generation: ev.Generation, Seq: ev.Seq, Updated: f.opts.Clock().UTC(),
		}})
	}
	switch {
	case drop != "":
		f.opts.Ingest.Drop(kind, drop, topic, nil)
	case tooMany:
		f.opts.Ingest.Drop(kind, ingest.Invalid, topic, fmt.Errorf("device reports more than %d models", maxReportedModels))
		f.enqueueStatus(pendingStatus{dev: dev, topic: topic, w: w, done: func() { f.ack(dev, ev.Seq) }})
	case stale:
		f.opts.Ingest.Drop(kind, ingest.Stale, topic, fmt.Errorf("seq %d is not newer than the recorded one", ev.Seq))
		// A newer event is recorded: acknowledged once it is written too.
		f.enqueueStatus(pendingStatus{dev: dev, topic: topic, w: w, done: func() { f.ack(dev, ev.Seq) }})
	case err != nil:
		f.opts.Ingest.Drop(kind, ingest.Store, topic, err)
		f.log.Error("store device status failed", "device", dev, "err", err)
	default:
		f.enqueueStatus(pendingStatus{dev: dev, topic: topic, w: w, done: func() { f.ack(dev, ev.Seq) }})
		if refused {
			f.refusals.WithLabelValues(string(refusal)).Inc()
			f.log.Warn("device refused a document", "device", dev, "kind", refusal, "model", ev.ModelName, "version", ev.ModelVersion, "reason", ev.Reason)
			return
		}
		f.log.Debug("device status", "device", dev, "model", ev.ModelName, "version", ev.ModelVersion, "state", api.ModelStateOf(ev.State), "reason", ev.Reason)
	}
}

// onRefusal records a status event that names no model: the device
// refused something device-wide (a trust bundle or a desired state) and
// says why.
func (f *Fleet) onRefusal(kind topics.Kind, topic, dev string, refusal api.RefusalKind, ev *efpb.StatusEvent) {
	stale := false
	drop, w, err := f.reg.apply(dev, func(d *api.Device, now time.Time) bool {
		d.Online, d.LastSeen = true, now
		if r := d.LastRefusal; r != nil && ev.Seq != 0 && ev.Seq <= r.Seq {
			stale = true
			return false
		}
		d.LastRefusal = &api.Refusal{Kind: refusal, Reason: truncate(ev.Reason, maxReasonLen), Generation: ev.Generation, Seq: ev.Seq, Time: now}
		return true
	})
	switch {
	case drop != "":
		f.opts.Ingest.Drop(kind, drop, topic, nil)
	case stale:
		f.opts.Ingest.Drop(kind, ingest.Stale, topic, fmt.Errorf("seq %d is not newer than the recorded one", ev.Seq))
		f.enqueueStatus(pendingStatus{dev: dev, topic: topic, w: w, done: func() { f.ack(dev, ev.Seq) }})
	case err != nil:
		f.opts.Ingest.Drop(kind, ingest.Store, topic, err)
		f.log.Error("store device refusal failed", "device", dev, "err", err)
	default:
		f.enqueueStatus(pendingStatus{dev: dev, topic: topic, w: w, done: func() { f.ack(dev, ev.Seq) }})
		f.refusals.WithLabelValues(string(refusal)).Inc()
		f.log.Warn("device refused a document", "device", dev, "kind", refusal, "reason", ev.Reason, "generation", ev.Generation)
	}
}

// OnTelemetry handles a device's telemetry report (topic
// .../dev/{id}/telemetry): its summary is kept on the device. It returns
// the decoded report for monitoring, with ok false when it was dropped.
func (f *Fleet) OnTelemetry(topic string, payload []byte) (dev string, t *efpb.Telemetry, ok bool) {
	const kind = topics.KindTelemetry
	t = &efpb.Telemetry{}
	if dev, ok = f.opts.Ingest.Decode(kind, topic, payload, t); !ok {
		return "", nil, false
	}
	if t.ProtocolVersion > efpb.ProtocolVersion {
		f.opts.Ingest.Drop(kind, ingest.ProtocolVersion, topic, fmt.Errorf("protocol_version %d", t.ProtocolVersion))
		f.ack(dev, t.Seq)
		return "", nil, false
	}
	sum := &api.TelemetrySummary{
		Seq:             t.Seq,
		Generation:      t.Generation,
		UptimeSeconds:   t.UptimeSeconds,
		RSSBytes:        t.RssBytes,
		DroppedPayloads: t.DroppedPayloads,
	}
	for i, m := range t.Models {
		if i == maxReportedModels {
			break
		}
		sum.Models = append(sum.Models, api.ActiveModelStats{
			Name:       truncate(m.Name, topics.MaxNameLen),
			Version:    truncate(m.Version, topics.MaxNameLen),
			State:      api.ModelStateOf(m.State),
			Inferences: m.Inferences,
			Errors:     m.Errors,
			Rejects:    m.Rejects,
		})
	}
	sum.Peers, sum.Transfers = peerSummary(t)
	drop, err := f.reg.update(dev, func(d *api.Device, now time.Time) bool {
		d.Online, d.LastSeen = true, now
		if t.AgentVersion != "" {
			d.AgentVersion = truncate(t.AgentVersion, maxAgentVersion)
		}
		sum.Received = now
		d.Telemetry = sum
		// Otherwise persisted at most every lastSeenPersistEvery.
		changed := t.TrustVersion != 0 && t.TrustVersion != d.TrustVersion
		if t.TrustVersion != 0 {
			d.TrustVersion = t.TrustVersion
		}
		return changed
	})
	switch {
	case drop != "":
		f.opts.Ingest.Drop(kind, drop, topic, nil)
		return "", nil, false
	case err != nil:
		f.log.Error("store device telemetry failed", "device", dev, "err", err)
	}
	return dev, t, true
}

// ack tells the device that its report seq is persisted or refused for
// good: either way, resending it would change nothing.
func (f *Fleet) ack(dev string, seq uint64) {
	if f.opts.Acker != nil {
		f.opts.Acker.Ack(dev, seq)
	}
}

// Bounds of what a device's telemetry says of its sharing.
const (
	maxReportedTransfers = 8
	maxReportedBlocked   = 16
	maxPeerName          = 128
)

// peerSummary is what the telemetry says of the device's sharing, bounded.
func peerSummary(t *efpb.Telemetry) (*api.PeerSummary, []api.TransferSummary) {
	var ps *api.PeerSummary
	if p := t.GetPeers(); p != nil {
		ps = &api.PeerSummary{
			Addr: truncate(p.Addr, maxPeerName), Members: p.Members, ServedChunks: p.ServedChunks, ServedBytes: p.ServedBytes,
			Foreign: p.Foreign, Unknown: p.Unknown, Replayed: p.Replayed, BadChunks: p.BadChunks,
		}
		for i, b := range p.Blocked {
			if i == maxReportedBlocked {
				break
			}
			ps.Blocked = append(ps.Blocked, truncate(b, maxPeerName))
		}
	}
	var ts []api.TransferSummary
	for i, tr := range t.GetTransfers() {
		if i == maxReportedTransfers {
			break
		}
		ts = append(ts, api.TransferSummary{Model: truncate(tr.ModelName, topics.MaxNameLen), Version: truncate(tr.ModelVersion, topics.MaxNameLen),
			BrokerBytes: tr.BrokerBytes, PeerBytes: tr.PeerBytes})
	}
	return ps, ts
}

// OnPresence handles a device's presence message (retained, also its
// last will): online or offline.
func (f *Fleet) OnPresence(topic string, payload []byte) {
	const kind = topics.KindPresence
	p := &efpb.Presence{}
	dev, ok := f.opts.Ingest.Decode(kind, topic, payload, p)
	if !ok {
		return
	}
	drop, err := f.reg.update(dev, func(d *api.Device, now time.Time) bool {
		changed := d.Online != p.Online
		d.Online, d.LastSeen = p.Online, now
		if p.AgentVersion != "" {
			d.AgentVersion = truncate(p.AgentVersion, maxAgentVersion)
		}
		return changed
	})
	switch {
	case drop != "":
		f.opts.Ingest.Drop(kind, drop, topic, nil)
	case err != nil:
		f.log.Error("store device presence failed", "device", dev, "err", err)
	default:
		f.log.Debug("device presence", "device", dev, "online", p.Online)
	}
}
