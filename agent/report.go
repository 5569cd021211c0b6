package agent

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/mqttc"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// publish sends one QoS 1 message that is not kept when it cannot be sent
// (presence), and waits for the broker's acknowledgement. Reports (status events and telemetry) go
// through the outbox instead (outbox.go).
func (a *Agent) publish(ctx context.Context, topic string, payload []byte) {
	c := a.mqtt()
	if c == nil || !c.IsConnected() {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Publish(pctx, topic, 1, false, payload); err != nil {
		a.log.Debug("publish failed", "topic", topic, "err", err)
	}
}

// requestChunks publishes a fetch request at QoS 0 without waiting
// (mqttc.PublishNoWait). The update loop must not wait for it: an
// acknowledgement would cross the device's link behind the chunks already
// queued for it, and while the loop waited it took none of them — on a
// 4 Mbit/s link with 64 chunks of 64 KiB queued, 8 s, after which the
// download looked stalled and asked for its whole window again
// (docs/architecture.md, "Distribution"). Nor does it need one: a lost
// request is asked again when the download stalls, and a request resent
// after a reconnect (QoS 1) would only repeat the fresh one the agent sends
// then. QoS 0 saves the broker's PUBACK to every device for every request.
func (a *Agent) requestChunks(req *efpb.FetchRequest) {
	b, err := proto.Marshal(req)
	if err != nil {
		a.log.Error("encode fetch request", "err", err)
		return
	}
	c := a.mqtt()
	if c == nil {
		return
	}
	if err := c.PublishNoWait(a.topics.Fetch(a.opts.DeviceID), 0, false, b); err != nil {
		a.log.Debug("fetch request not sent", "err", err)
	}
}

// reportSlot reports where a slot stands now: the update in progress, the
// last failure of the current generation, or the active version.
func (a *Agent) reportSlot(ctx context.Context, s *slot) {
	state, version, reason := a.slotReport(s)
	a.report(ctx, s, state, version, reason)
}

// slotReport is what reportSlot reports for s.
func (a *Agent) slotReport(s *slot) (state efpb.ModelState, version, reason string) {
	if t := s.st.Target; t != nil {
		st := efpb.ModelState_MODEL_STATE_DOWNLOADING
		switch t.Phase {
		case PhaseVerifying:
			st = efpb.ModelState_MODEL_STATE_VERIFYING
		case PhaseStaging:
			st = efpb.ModelState_MODEL_STATE_STAGING
		}
		return st, t.Version, ""
	}
	if s.st.Trial != nil && s.st.Active != nil {
		return efpb.ModelState_MODEL_STATE_PENDING, s.st.Active.Version, "serving on trial (health period)"
	}
	if f := s.st.LastFailure; f != nil && f.Generation == a.u.generation {
		st := efpb.ModelState_MODEL_STATE_FAILED
		if f.RolledBack {
			st = efpb.ModelState_MODEL_STATE_ROLLED_BACK
		}
		return st, f.Version, f.Reason
	}
	if s.st.Active != nil {
		return efpb.ModelState_MODEL_STATE_ACTIVE, s.st.Active.Version, ""
	}
	return efpb.ModelState_MODEL_STATE_IDLE, "", ""
}

func (a *Agent) report(ctx context.Context, s *slot, state efpb.ModelState, version, reason string) {
	a.emitStatus(a.statusEvent(s, state, version, reason))
}

// statusEvent is the status event of slot s in state about version.
func (a *Agent) statusEvent(s *slot, state efpb.ModelState, version, reason string) *efpb.StatusEvent {
	ev := &efpb.StatusEvent{ModelName: s.name, ModelVersion: version, State: state, Reason: reason}
	if s.asm != nil {
		ev.ChunksHave, ev.ChunksTotal = uint32(s.asm.Have()), uint32(s.asm.Total())
	}
	if s.st.Active != nil {
		ev.ActiveVersion = s.st.Active.Version
	}
	return ev
}

// fillStatus fills the envelope fields common to every status event but
// its sequence number, which queueStatus gives it.
func (a *Agent) fillStatus(ev *efpb.StatusEvent) {
	ev.ProtocolVersion = efpb.ProtocolVersion1
	ev.DeviceId = a.opts.DeviceID
	ev.TimeUnixMs = a.opts.Clock().UnixMilli()
	ev.Generation = a.u.generation
}

// queueStatus numbers ev and queues it in the outbox: stored and
// forwarded, kept until the control plane acknowledged it (outbox.go),
// like telemetry.
func (a *Agent) queueStatus(ev *efpb.StatusEvent) {
	ev.Seq = a.nextSeq()
	b, err := proto.Marshal(ev)
	if err != nil {
		a.log.Error("encode status", "err", err)
		return
	}
	if err := a.outbox.push(ev.Seq, kindStatus, b); err != nil {
		a.log.Error("queue status event", "err", err)
	}
}

func (a *Agent) sendTelemetry(ctx context.Context) {
	t := &efpb.Telemetry{
		ProtocolVersion: efpb.ProtocolVersion1,
		DeviceId:        a.opts.DeviceID,
		Seq:             a.nextSeq(),
		TimeUnixMs:      a.opts.Clock().UnixMilli(),
		Generation:      a.u.generation,
		AgentVersion:    a.opts.Version,
		UptimeSeconds:   uint64(a.opts.Clock().Sub(a.started).Seconds()),
		RssBytes:        readRSS(),
		DroppedPayloads: a.dropped.Load(),
		TrustVersion:    a.verify.Version(),
	}
	for _, s := range a.slotList() {
		am := &efpb.ActiveModel{Name: s.name, State: efpb.ModelState_MODEL_STATE_IDLE, Rejects: s.rejects.Load()}
		if m := s.serving.Load(); m != nil {
			am.Version, am.State = m.version, efpb.ModelState_MODEL_STATE_ACTIVE
			am.Inferences, am.Errors = m.inferences.Load(), m.errors.Load()
		}
		t.Models = append(t.Models, am)
	}
	if a.mon != nil {
		t.Monitoring = a.mon.collect(a.opts.Clock())
	}
	t.Shadow = a.collectShadows(a.opts.Clock())
	t.ReportsDropped = a.outbox.Dropped()
	t.Peers = a.PeerStats()
	t.Transfers = a.transfers.snapshot()
	b, err := proto.Marshal(t)
	if err != nil {
		a.log.Error("encode telemetry", "err", err)
		return
	}
	// Store and forward (outbox.go): queued on disk, sent in order.
	if err := a.outbox.push(t.Seq, kindTelemetry, b); err != nil {
		a.log.Error("queue telemetry", "err", err)
		return
	}
	a.telemetryMade.Add(1)
}

// TelemetryReports is the number of telemetry reports this agent made and
// queued for the control plane since it was created. Each one is
// delivered (the control plane acknowledged it), still queued
// (QueuedReports) or counted as dropped (ReportsDropped).
func (a *Agent) TelemetryReports() uint64 { return a.telemetryMade.Load() }

func (a *Agent) presenceMessage(online bool) *mqttc.Message {
	b, _ := proto.Marshal(&efpb.Presence{
		DeviceId:     a.opts.DeviceID,
		Online:       online,
		TimeUnixMs:   a.opts.Clock().UnixMilli(),
		AgentVersion: a.opts.Version,
	})
	return &mqttc.Message{Topic: a.topics.Presence(a.opts.DeviceID), Payload: b, QoS: 1}
}

// publishPresence announces online on connect and offline on a clean stop;
// the broker publishes the offline will when the agent vanishes.
func (a *Agent) publishPresence(online bool) {
	msg := a.presenceMessage(online)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	a.publish(ctx, msg.Topic, msg.Payload)
}

// readRSS returns the resident set size of this process (0 if unknown).
func readRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, []byte("VmRSS:")) {
			continue
		}
		f := bytes.Fields(line[len("VmRSS:"):])
		if len(f) >= 1 {
			kb, err := strconv.ParseUint(string(f[0]), 10, 64)
			if err == nil {
				return kb * 1024
			}
		}
	}
	return 0
}
