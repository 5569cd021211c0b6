package controlplane

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// maxIngestPayload bounds what the control plane decodes from a device.
const maxIngestPayload = 256 << 10

// Reasons a device payload is dropped (the reason label of
// edgefleet_mqtt_payloads_dropped_total).
const (
	dropBadTopic        = "bad_topic"
	dropTooLarge        = "too_large"
	dropDecode          = "decode"
	dropDeviceMismatch  = "device_mismatch"
	dropUnknownDevice   = "unknown_device"
	dropProtocolVersion = "protocol_version"
	dropInvalid         = "invalid"
	dropUnknownModel    = "unknown_model"
	dropStore           = "store_error"
	dropStale           = "stale"
)

// drop counts and logs a payload the control plane will not act on. Logs
// are debug level: a misbehaving device must not flood the log, and the
// counter says how much was dropped and why.
func (s *Server) drop(kind topics.Kind, reason, topic string, err error) {
	// The labelled counter first: whoever sees the total move can rely on
	// the breakdown already holding this drop.
	s.metrics.dropped.WithLabelValues(kind.String(), reason).Inc()
	s.dropped.Add(1)
	s.log.Debug("device payload dropped", "topic", topic, "reason", reason, "err", err)
}

// Dropped is the number of device payloads dropped since start: undecodable,
// oversized, from unknown devices, or naming another device than their topic.
func (s *Server) Dropped() uint64 { return s.dropped.Load() }

// ingestTopic checks what every device payload must satisfy and returns
// the device id from the topic, or "" after counting a drop.
func (s *Server) ingestTopic(kind topics.Kind, topic string, payload []byte) string {
	t, err := s.scheme.Parse(topic)
	if err != nil || t.Kind != kind {
		s.drop(kind, dropBadTopic, topic, err)
		return ""
	}
	if len(payload) > maxIngestPayload {
		s.drop(kind, dropTooLarge, topic, fmt.Errorf("%d bytes, max %d", len(payload), maxIngestPayload))
		return ""
	}
	return t.Device
}

// decodeFrom decodes payload into m and checks that the device id the
// message carries is the one in its topic.
func (s *Server) decodeFrom(kind topics.Kind, topic string, payload []byte, m interface {
	proto.Message
	GetDeviceId() string
}) (string, bool) {
	dev := s.ingestTopic(kind, topic, payload)
	if dev == "" {
		return "", false
	}
	if err := proto.Unmarshal(payload, m); err != nil {
		s.drop(kind, dropDecode, topic, err)
		return "", false
	}
	if m.GetDeviceId() != dev {
		s.drop(kind, dropDeviceMismatch, topic, fmt.Errorf("message names device %q", m.GetDeviceId()))
		return "", false
	}
	return dev, true
}

func (s *Server) onStatus(topic string, payload []byte) {
	const kind = topics.KindStatus
	ev := &efpb.StatusEvent{}
	dev, ok := s.decodeFrom(kind, topic, payload, ev)
	if !ok {
		return
	}
	if ev.ProtocolVersion > efpb.ProtocolVersion {
		s.drop(kind, dropProtocolVersion, topic, fmt.Errorf("protocol_version %d", ev.ProtocolVersion))
		return
	}
	if ev.ModelName == "" {
		s.onRefusal(kind, topic, dev, ev)
		return
	}
	if err := topics.ValidModelName(ev.ModelName); err != nil {
		s.drop(kind, dropInvalid, topic, err)
		return
	}
	for _, v := range []string{ev.ModelVersion, ev.ActiveVersion} {
		if v == "" {
			continue
		}
		if err := topics.ValidModelVersion(v); err != nil {
			s.drop(kind, dropInvalid, topic, err)
			return
		}
	}
	tooMany, stale := false, false
	known, err := s.reg.update(dev, func(d *api.Device, now time.Time) bool {
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
		*st = api.ModelStatus{
			State:         api.ModelStateOf(ev.State),
			TargetVersion: ev.ModelVersion,
			ActiveVersion: ev.ActiveVersion,
			Reason:        truncate(ev.Reason, maxReasonLen),
			ChunksHave:    ev.ChunksHave,
			ChunksTotal:   ev.ChunksTotal,
			Generation:    ev.Generation,
			Seq:           ev.Seq,
			Updated:       now,
		}
		return true
	})
	switch {
	case !known:
		s.drop(kind, dropUnknownDevice, topic, nil)
	case tooMany:
		s.drop(kind, dropInvalid, topic, fmt.Errorf("device reports more than %d models", maxReportedModels))
	case stale:
		s.drop(kind, dropStale, topic, fmt.Errorf("seq %d is not newer than the recorded one", ev.Seq))
	case err != nil:
		s.drop(kind, dropStore, topic, err)
		s.log.Error("store device status failed", "device", dev, "err", err)
	default:
		s.log.Debug("device status", "device", dev, "model", ev.ModelName, "version", ev.ModelVersion, "state", api.ModelStateOf(ev.State), "reason", ev.Reason)
	}
}

// onRefusal records a status event that names no model: the device
// refused something device-wide (a desired state) and says why.
func (s *Server) onRefusal(kind topics.Kind, topic, dev string, ev *efpb.StatusEvent) {
	stale := false
	known, err := s.reg.update(dev, func(d *api.Device, now time.Time) bool {
		d.Online, d.LastSeen = true, now
		if r := d.LastRefusal; r != nil && ev.Seq != 0 && ev.Seq <= r.Seq {
			stale = true
			return false
		}
		d.LastRefusal = &api.Refusal{Reason: truncate(ev.Reason, maxReasonLen), Generation: ev.Generation, Seq: ev.Seq, Time: now}
		return true
	})
	switch {
	case !known:
		s.drop(kind, dropUnknownDevice, topic, nil)
	case stale:
		s.drop(kind, dropStale, topic, fmt.Errorf("seq %d is not newer than the recorded one", ev.Seq))
	case err != nil:
		s.drop(kind, dropStore, topic, err)
		s.log.Error("store device refusal failed", "device", dev, "err", err)
	default:
		s.log.Warn("device refused a document", "device", dev, "reason", ev.Reason, "generation", ev.Generation)
	}
}

func (s *Server) onTelemetry(topic string, payload []byte) {
	const kind = topics.KindTelemetry
	t := &efpb.Telemetry{}
	dev, ok := s.decodeFrom(kind, topic, payload, t)
	if !ok {
		return
	}
	if t.ProtocolVersion > efpb.ProtocolVersion {
		s.drop(kind, dropProtocolVersion, topic, fmt.Errorf("protocol_version %d", t.ProtocolVersion))
		return
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
	s.ingestMonitoring(dev, t) // monitoring.go
	known, err := s.reg.update(dev, func(d *api.Device, now time.Time) bool {
		d.Online, d.LastSeen = true, now
		if t.AgentVersion != "" {
			d.AgentVersion = truncate(t.AgentVersion, maxAgentVersion)
		}
		sum.Received = now
		d.Telemetry = sum
		return false // persisted at most every lastSeenPersistEvery
	})
	switch {
	case !known:
		s.drop(kind, dropUnknownDevice, topic, nil)
	case err != nil:
		s.log.Error("store device telemetry failed", "device", dev, "err", err)
	}
}

func (s *Server) onPresence(topic string, payload []byte) {
	const kind = topics.KindPresence
	p := &efpb.Presence{}
	dev, ok := s.decodeFrom(kind, topic, payload, p)
	if !ok {
		return
	}
	known, err := s.reg.update(dev, func(d *api.Device, now time.Time) bool {
		changed := d.Online != p.Online
		d.Online, d.LastSeen = p.Online, now
		if p.AgentVersion != "" {
			d.AgentVersion = truncate(p.AgentVersion, maxAgentVersion)
		}
		return changed
	})
	switch {
	case !known:
		s.drop(kind, dropUnknownDevice, topic, nil)
	case err != nil:
		s.log.Error("store device presence failed", "device", dev, "err", err)
	default:
		s.log.Debug("device presence", "device", dev, "online", p.Online)
	}
}

func (s *Server) onFetch(topic string, payload []byte) {
	const kind = topics.KindFetch
	req := &efpb.FetchRequest{}
	dev, ok := s.decodeFrom(kind, topic, payload, req)
	if !ok {
		return
	}
	if !s.reg.exists(dev) {
		s.drop(kind, dropUnknownDevice, topic, nil)
		return
	}
	if topics.ValidModelName(req.Name) != nil || topics.ValidModelVersion(req.Version) != nil {
		s.drop(kind, dropInvalid, topic, fmt.Errorf("model %q version %q", req.Name, req.Version))
		return
	}
	rec := s.models.get(req.Name, req.Version)
	if rec == nil {
		s.drop(kind, dropUnknownModel, topic, fmt.Errorf("model %s version %s does not exist", req.Name, req.Version))
		return
	}
	n := rec.ChunkCount
	if uint64(len(req.Missing)) > uint64(n) {
		s.drop(kind, dropInvalid, topic, fmt.Errorf("%d indexes asked for, the model has %d chunks", len(req.Missing), n))
		return
	}
	missing := req.Missing
	if len(missing) == 0 {
		missing = make([]uint32, n)
		for i := range missing {
			missing[i] = uint32(i)
		}
	}
	for _, i := range missing {
		if i >= n {
			s.drop(kind, dropInvalid, topic, fmt.Errorf("chunk index %d, the model has %d chunks", i, n))
			return
		}
	}
	added := s.chunks.enqueue(chunkKey{req.Name, req.Version}, dev, missing, time.Now())
	s.log.Debug("fetch request", "device", dev, "model", req.Name, "version", req.Version, "asked", len(missing), "queued", added)
}
