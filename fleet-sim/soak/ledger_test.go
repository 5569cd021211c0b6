package soak

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func encode(t *testing.T, p packets.ControlPacket) []byte {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, p.Write(&b))
	return b.Bytes()
}

func publishPacket(t *testing.T, topic string, qos byte, id uint16, payload []byte) []byte {
	t.Helper()
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.TopicName, p.Qos, p.MessageID, p.Payload = topic, qos, id, payload
	return encode(t, p)
}

func puback(t *testing.T, id uint16) []byte {
	t.Helper()
	p := packets.NewControlPacket(packets.Puback).(*packets.PubackPacket)
	p.MessageID = id
	return encode(t, p)
}

func desiredEnvelope(t *testing.T, assignments map[string]string) []byte {
	t.Helper()
	ds := &efpb.DesiredState{}
	for name, v := range assignments {
		ds.Models = append(ds.Models, &efpb.ModelAssignment{Name: name, Version: v})
	}
	payload, err := proto.Marshal(ds)
	require.NoError(t, err)
	env, err := proto.Marshal(&efpb.Envelope{Payload: payload})
	require.NoError(t, err)
	return env
}

func telemetry(t *testing.T, seq uint64, monitoring bool) []byte {
	t.Helper()
	m := &efpb.Telemetry{Seq: seq, DeviceId: "dev-1"}
	if monitoring {
		m.Monitoring = []*efpb.MonitorReport{{ModelName: model, ModelVersion: "1.0.0", Rows: 1}}
	}
	b, err := proto.Marshal(m)
	require.NoError(t, err)
	return b
}

// The tap builds the assignment history from desired states sent to a
// device and the ledger from telemetry publishes the broker acknowledged.
func TestTapHistoryAndLedger(t *testing.T) {
	var sc topics.Scheme
	h, l := newHistory(), newLedger()
	tp := tap(sc, h, l)

	tp(1, "dev-1", true, publishPacket(t, sc.Desired("dev-1"), 1, 7, desiredEnvelope(t, map[string]string{model: "1.0.0"})))
	tp(1, "dev-1", true, publishPacket(t, sc.Desired("dev-2"), 1, 8, desiredEnvelope(t, map[string]string{model: "9.0.0"})))
	tp(1, "dev-1", true, publishPacket(t, sc.Desired("dev-1"), 1, 9, []byte("not a protobuf envelope \xff")))
	assert.True(t, h.assigned("dev-1", model, "1.0.0"))
	assert.False(t, h.assigned("dev-1", model, "9.0.0"), "another device's desired state does not count for this one")
	assert.False(t, h.assigned("dev-2", model, "9.0.0"), "only desired states on the device's own connection count")
	states, bad := h.counts()
	assert.Equal(t, uint64(1), states)
	assert.Equal(t, uint64(1), bad, "an undecodable desired state is counted, so the invariant can fail on it")

	// Seq 5 acknowledged, seq 6 never, seq 7 without monitoring (the
	// control plane does not record those), seq 5 resent and acknowledged
	// again on a new connection.
	tp(1, "dev-1", false, publishPacket(t, sc.Telemetry("dev-1"), 1, 100, telemetry(t, 5, true)))
	tp(1, "dev-1", false, publishPacket(t, sc.Telemetry("dev-1"), 1, 101, telemetry(t, 6, true)))
	tp(1, "dev-1", false, publishPacket(t, sc.Telemetry("dev-1"), 1, 102, telemetry(t, 7, false)))
	tp(1, "dev-1", false, publishPacket(t, sc.Status("dev-1"), 1, 103, []byte{1}))
	tp(1, "dev-1", true, puback(t, 100))
	tp(1, "dev-1", true, puback(t, 102))
	tp(1, "dev-1", true, puback(t, 103))
	tp(1, "dev-1", false, nil) // the connection ends: 101 is forgotten
	tp(2, "dev-1", false, publishPacket(t, sc.Telemetry("dev-1"), 1, 101, telemetry(t, 5, true)))
	tp(2, "dev-1", true, puback(t, 101))

	var tot TelemetryCheck
	c := l.check(map[string]seqWindow{}, 1, "test", &tot)
	assert.Equal(t, uint64(1), c.Acked, "one distinct acknowledged report with monitoring")
	assert.Equal(t, uint64(1), c.Missing, "not persisted anywhere yet")
	assert.Equal(t, []string{"dev-1"}, c.MissingDevices)
}

// A report acknowledged and never persisted is missing at every check
// and at the end; one found later (a resend) is confirmed; one that left
// the window before it was found is unverifiable, not confirmed.
func TestLedgerCheck(t *testing.T) {
	l := newLedger()
	ack := func(conn uint64, seq uint64) {
		l.published(conn, publish{qos: 1, id: uint16(seq), payload: telemetry(t, seq, true)})
		l.acked(conn, "dev-1", uint16(seq))
	}
	for _, s := range []uint64{10, 11, 12, 13} {
		ack(1, s)
	}
	win := func(high uint64, seen ...uint64) seqWindow {
		w := seqWindow{high: high, seen: make([]uint64, 16)}
		for _, s := range seen {
			d := high - s
			w.seen[d/64] |= 1 << (d % 64)
		}
		return w
	}
	var tot TelemetryCheck
	c := l.check(map[string]seqWindow{"dev-1": win(13, 10, 13)}, 1, "first", &tot)
	assert.Equal(t, TelemetryCheck{At: 1, Why: "first", Acked: 4, Confirmed: 2, Missing: 2, MissingDevices: []string{"dev-1"}}, c)

	ack(2, 10) // acknowledged again (a resend): not counted twice
	c = l.check(map[string]seqWindow{"dev-1": win(13, 10, 11, 13)}, 2, "second", &tot)
	assert.Equal(t, uint64(4), c.Acked)
	assert.Equal(t, uint64(3), c.Confirmed, "11 arrived since")
	assert.Equal(t, uint64(1), c.Missing, "12 still missing")

	ack(3, 14) // acknowledged after the last check, never looked up in a window
	c = l.check(map[string]seqWindow{"dev-1": win(13+2000, 2013)}, 3, "final", &tot)
	assert.Equal(t, uint64(0), c.Missing)
	assert.Equal(t, uint64(1), c.Lost, "12 was missing at a check and left the window unseen")
	assert.Equal(t, uint64(1), c.Unverifiable, "14 left the window before any check could look")
	assert.Equal(t, uint64(3), c.Confirmed)
}

// The soak reads the windows the real aggregator writes: the format is
// checked against controlplane/monitor, not against a copy of it.
func TestReadPersistedMatchesTheAggregator(t *testing.T) {
	cpDir := t.TempDir()
	db, err := store.Open(store.Options{Dir: filepath.Join(cpDir, "db"), Profile: store.ProfileServer})
	require.NoError(t, err)
	agg, err := monitor.Open(monitor.Options{KV: db.Namespace(monitorNamespace)})
	require.NoError(t, err)
	for _, seq := range []uint64{1, 2, 4, 70, 200} {
		tm := &efpb.Telemetry{Seq: seq, Monitoring: []*efpb.MonitorReport{{ModelName: model, ModelVersion: "1.0.0", Rows: 1}}}
		dup, err := agg.Ingest("dev-1", seq, tm, nil)
		require.NoError(t, err)
		require.False(t, dup)
	}
	require.NoError(t, agg.Flush())
	require.NoError(t, db.Close())

	got, err := readPersisted(cpDir)
	require.NoError(t, err)
	w, ok := got["dev-1"]
	require.True(t, ok, "dev-1's window: %v", got)
	for seq, want := range map[uint64]seqState{1: seqSeen, 2: seqSeen, 3: seqNotSeen, 4: seqSeen, 69: seqNotSeen, 70: seqSeen, 200: seqSeen, 201: seqNotSeen} {
		assert.Equal(t, want, w.state(seq), "seq %d", seq)
	}
	_, err = decodeSeqWindow([]byte{0, 0, 0, 0, 0, 0, 0, 9})
	assert.Error(t, err, "the legacy 8-byte form cannot be checked and is refused")
}

func TestParsePublishRefusesOtherPackets(t *testing.T) {
	_, ok := parsePublish(puback(t, 3))
	assert.False(t, ok)
	_, ok = parsePublish([]byte{0x32, 0x03, 0x00, 0x05, 'a'})
	assert.False(t, ok, "topic longer than the packet")
	p, ok := parsePublish(publishPacket(t, "a/b", 0, 0, []byte("xy")))
	require.True(t, ok)
	assert.Equal(t, publish{topic: "a/b", payload: []byte("xy")}, p)
	_, ok = pubackID([]byte{0x40, 0x02, 0x00})
	assert.False(t, ok)
}
