package soak

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// What the soak learns from the wire: the proxy between the agents and
// the broker taps every packet (sim.Proxy.SetTap). Desired states the
// control plane sent a device make its assignment history; telemetry
// publishes the broker acknowledged make the ledger of acknowledged
// reports.

// publish is the part of an MQTT PUBLISH the soak reads.
type publish struct {
	topic   string
	qos     byte
	id      uint16
	payload []byte
}

// parsePublish reads a PUBLISH packet (fixed header included); ok is
// false for any other packet or a malformed one.
func parsePublish(pkt []byte) (p publish, ok bool) {
	if len(pkt) < 2 || pkt[0]>>4 != 3 {
		return p, false
	}
	i := 1
	for i < len(pkt) && pkt[i]&0x80 != 0 {
		i++
	}
	if i >= len(pkt) {
		return p, false
	}
	b := pkt[i+1:]
	if len(b) < 2 {
		return p, false
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n {
		return p, false
	}
	p.topic, p.qos = string(b[2:2+n]), (pkt[0]>>1)&3
	off := 2 + n
	if p.qos > 0 {
		if len(b) < off+2 {
			return p, false
		}
		p.id = binary.BigEndian.Uint16(b[off:])
		off += 2
	}
	p.payload = b[off:]
	return p, true
}

// pubackID returns the packet id of a PUBACK.
func pubackID(pkt []byte) (uint16, bool) {
	if len(pkt) != 4 || pkt[0]>>4 != 4 || pkt[1] != 2 {
		return 0, false
	}
	return binary.BigEndian.Uint16(pkt[2:]), true
}

// history is every version of every model each device was sent in a
// desired state, as the wire saw it: a device may serve only those.
type history struct {
	mu       sync.Mutex
	versions map[string]map[string]map[string]bool // device → model → version → assigned
	states   uint64                                // desired states seen
	bad      uint64                                // desired-state payloads that did not decode
}

func newHistory() *history {
	return &history{versions: map[string]map[string]map[string]bool{}}
}

// record adds the assignments of one desired-state envelope sent to device.
func (h *history) record(device string, envelope []byte) {
	env := &efpb.Envelope{}
	ds := &efpb.DesiredState{}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(envelope) == 0 {
		return // a cleared retained message
	}
	if proto.Unmarshal(envelope, env) != nil || proto.Unmarshal(env.Payload, ds) != nil {
		h.bad++
		return
	}
	h.states++
	byModel := h.versions[device]
	if byModel == nil {
		byModel = map[string]map[string]bool{}
		h.versions[device] = byModel
	}
	for _, a := range ds.GetModels() {
		if byModel[a.GetName()] == nil {
			byModel[a.GetName()] = map[string]bool{}
		}
		byModel[a.GetName()][a.GetVersion()] = true
	}
}

// assigned reports whether device was ever sent model@version.
func (h *history) assigned(device, model, version string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.versions[device][model][version]
}

// counts returns the desired states seen and those that did not decode.
func (h *history) counts() (states, bad uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.states, h.bad
}

// ledger follows every telemetry report the broker acknowledged (a PUBACK
// to the device for its telemetry publish: the moment today's agent
// deletes the report from its outbox) until it is found among the
// control plane's persisted sequence numbers.
type ledger struct {
	mu       sync.Mutex
	inflight map[uint64]map[uint16]uint64 // proxied connection → packet id → report seq
	devices  map[string]*deviceLedger
	// undecodable counts telemetry payloads that did not decode.
	undecodable uint64
}

type deviceLedger struct {
	// pending holds the acknowledged seqs not yet found persisted; true
	// once a check found one missing inside the control plane's window.
	pending map[uint64]bool
	// done holds the recent seqs already confirmed or given up (pruned to
	// doneSpan below high): a resend acknowledged again is not counted
	// twice, and the ledger stays bounded (the soak's own heap is
	// measured too).
	done  map[uint64]bool
	high  uint64 // highest seq acknowledged
	acked uint64 // distinct seqs acknowledged
}

// doneSpan is how far below a device's highest acknowledged seq the
// ledger remembers finished seqs; an outbox resends from its head, never
// that far back.
const doneSpan = 4096

func newLedger() *ledger {
	return &ledger{inflight: map[uint64]map[uint16]uint64{}, devices: map[string]*deviceLedger{}}
}

// published notes a telemetry publish of device on connection conn.
func (l *ledger) published(conn uint64, p publish) {
	t := &efpb.Telemetry{}
	l.mu.Lock()
	defer l.mu.Unlock()
	if proto.Unmarshal(p.payload, t) != nil || t.GetSeq() == 0 {
		l.undecodable++
		return
	}
	if p.qos == 0 || len(t.GetMonitoring()) == 0 {
		// Nothing will acknowledge it; or it carries no monitoring report,
		// and the control plane records the seqs of monitoring reports only
		// (controlplane/monitor.Service.Ingest): the rest of a telemetry
		// message updates the device's row and is not counted.
		return
	}
	m := l.inflight[conn]
	if m == nil {
		m = map[uint16]uint64{}
		l.inflight[conn] = m
	}
	m[p.id] = t.GetSeq()
}

// acked notes the broker's PUBACK of packet id on conn to device.
func (l *ledger) acked(conn uint64, device string, id uint16) {
	l.mu.Lock()
	defer l.mu.Unlock()
	seq, ok := l.inflight[conn][id]
	if !ok {
		return // a status or fetch publish
	}
	delete(l.inflight[conn], id)
	d := l.devices[device]
	if d == nil {
		d = &deviceLedger{pending: map[uint64]bool{}, done: map[uint64]bool{}}
		l.devices[device] = d
	}
	if _, ok := d.pending[seq]; ok || d.done[seq] || (d.high > doneSpan && seq < d.high-doneSpan) {
		return
	}
	d.pending[seq] = false
	d.acked++
	d.high = max(d.high, seq)
}

// closed forgets a connection's packets in flight.
func (l *ledger) closed(conn uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.inflight, conn)
}

// TelemetryCheck is one comparison of the acknowledged reports with the
// control plane's persisted sequence numbers.
type TelemetryCheck struct {
	// At is seconds since the soak started; Why is "control plane
	// restart" or "final".
	At  float64 `json:"at_s"`
	Why string  `json:"why"`
	// Acked is the distinct reports acknowledged so far, Confirmed those
	// found persisted so far, Missing those acknowledged and inside the
	// control plane's window but not persisted now, Lost those a check
	// found missing that then left the window unseen (so far),
	// Unverifiable those that left the window before any check saw them
	// (a killed agent's successor skips up to 1,024 seqs).
	Acked        uint64 `json:"acked"`
	Confirmed    uint64 `json:"confirmed"`
	Missing      uint64 `json:"missing"`
	Lost         uint64 `json:"lost"`
	Unverifiable uint64 `json:"unverifiable"`
	// MissingDevices names a few devices with missing reports.
	MissingDevices []string `json:"missing_devices,omitempty"`
}

// check compares the pending reports with the persisted windows: a report
// found is confirmed and forgotten; one inside a window but not seen stays
// pending (a later check may find it: a resend) and is counted missing in
// this check; one below a window can no longer be looked up: lost if an
// earlier check found it missing, unverifiable if none had looked.
func (l *ledger) check(persisted map[string]seqWindow, at float64, why string, tot *TelemetryCheck) TelemetryCheck {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := TelemetryCheck{At: at, Why: why}
	ids := make([]string, 0, len(l.devices))
	for id := range l.devices {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		d := l.devices[id]
		c.Acked += d.acked
		w, ok := persisted[id]
		missing := false
		for seq, seenMissing := range d.pending {
			if !ok {
				missing = true
				c.Missing++
				continue
			}
			switch w.state(seq) {
			case seqSeen:
				tot.Confirmed++
				delete(d.pending, seq)
				d.done[seq] = true
			case seqBelow:
				if seenMissing {
					tot.Lost++
				} else {
					tot.Unverifiable++
				}
				delete(d.pending, seq)
				d.done[seq] = true
			default:
				missing = true
				c.Missing++
				d.pending[seq] = true
			}
		}
		for seq := range d.done {
			if d.high > doneSpan && seq < d.high-doneSpan {
				delete(d.done, seq)
			}
		}
		if missing && len(c.MissingDevices) < 5 {
			c.MissingDevices = append(c.MissingDevices, id)
		}
	}
	c.Confirmed, c.Lost, c.Unverifiable = tot.Confirmed, tot.Lost, tot.Unverifiable
	return c
}

// seqWindow is the control plane's persisted record of a device's ingested
// report seqs (controlplane/monitor's seqWindow, read back from its store
// under monitor/s/<device>): the highest seq and a bitmap of the 1024
// below it. The soak reads the store itself, while the control plane is
// stopped, rather than asking the running one: it checks what was
// persisted, not what is in memory.
type seqWindow struct {
	high uint64
	seen []uint64 // bit i of word i/64: seq high-i was seen
}

type seqState int

const (
	seqNotSeen seqState = iota
	seqSeen
	seqBelow // older than the window: unknown
)

func (w seqWindow) state(seq uint64) seqState {
	if seq > w.high {
		return seqNotSeen
	}
	d := w.high - seq
	if d >= uint64(len(w.seen))*64 {
		return seqBelow
	}
	if w.seen[d/64]&(1<<(d%64)) != 0 {
		return seqSeen
	}
	return seqNotSeen
}

// decodeSeqWindow reads a stored window: 8 bytes of high-water mark, then
// the bitmap words, big-endian (the 8-byte legacy form has no bitmap:
// everything below the mark counts as seen, which the soak cannot check,
// so it is refused).
func decodeSeqWindow(b []byte) (seqWindow, error) {
	if len(b) < 16 || (len(b)-8)%8 != 0 {
		return seqWindow{}, fmt.Errorf("a stored seq window of %d bytes: want 8 + 8×words (the control plane's format changed?)", len(b))
	}
	w := seqWindow{high: binary.BigEndian.Uint64(b), seen: make([]uint64, (len(b)-8)/8)}
	for i := range w.seen {
		w.seen[i] = binary.BigEndian.Uint64(b[8+8*i:])
	}
	return w, nil
}

// Where controlplane/monitor keeps the windows in the control plane's store.
const (
	monitorNamespace = "monitor"
	seqPrefix        = "s/"
)

// readPersisted opens the stopped control plane's store in cpDir and
// reads every device's persisted seq window.
func readPersisted(cpDir string) (map[string]seqWindow, error) {
	db, err := store.Open(store.Options{Dir: filepath.Join(cpDir, "db"), Profile: store.ProfileServer})
	if err != nil {
		return nil, fmt.Errorf("open the control plane's store: %w", err)
	}
	out := map[string]seqWindow{}
	var errs []error
	err = db.Namespace(monitorNamespace).Scan(seqPrefix, func(key string, val []byte) error {
		w, err := decodeSeqWindow(val)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
			return nil
		}
		out[key[len(seqPrefix):]] = w
		return nil
	})
	if cerr := db.Close(); cerr != nil {
		errs = append(errs, fmt.Errorf("close the control plane's store: %w", cerr))
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("scan persisted seqs: %w", err))
	}
	return out, errors.Join(errs...)
}

// tap is the proxy tap feeding the history and the ledger.
func tap(scheme topics.Scheme, h *history, l *ledger) func(conn uint64, device string, toDevice bool, pkt []byte) {
	return func(conn uint64, device string, toDevice bool, pkt []byte) {
		if pkt == nil {
			l.closed(conn)
			return
		}
		switch kind := pkt[0] >> 4; {
		case kind == 4 && toDevice:
			if id, ok := pubackID(pkt); ok {
				l.acked(conn, device, id)
			}
		case kind == 3:
			p, ok := parsePublish(pkt)
			if !ok {
				return
			}
			t, err := scheme.Parse(p.topic)
			if err != nil {
				return
			}
			switch {
			case toDevice && t.Kind == topics.KindDesired && t.Device == device:
				h.record(device, p.payload)
			case !toDevice && t.Kind == topics.KindTelemetry && t.Device == device:
				l.published(conn, p)
			}
		}
	}
}
