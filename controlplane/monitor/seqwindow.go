package monitor

import "encoding/binary"

// seqWindow remembers which of a device's last seqWindowSize telemetry
// sequence numbers were ingested. Reports may arrive out of order (a QoS 1
// redelivery, parallel ingest connections): a high-water mark alone would
// drop a late report as a duplicate; the window accepts it once.
type seqWindow struct {
	high uint64                 // highest seq seen; 0 before any
	seen [seqWindowWords]uint64 // bit i: seq high-i was seen
}

const (
	seqWindowWords = 16
	seqWindowSize  = seqWindowWords * 64
	seqWindowBytes = 8 + seqWindowWords*8
)

// add records seq and reports whether it is new. A seq older than the
// window is treated as seen: it cannot be told apart from a duplicate.
func (w *seqWindow) add(seq uint64) bool {
	switch {
	case seq == 0:
		return false
	case seq > w.high:
		w.shift(seq - w.high)
		w.high = seq
		w.seen[0] |= 1
		return true
	}
	d := w.high - seq
	if d >= seqWindowSize {
		return false
	}
	word, bit := d/64, d%64
	if w.seen[word]&(1<<bit) != 0 {
		return false
	}
	w.seen[word] |= 1 << bit
	return true
}

// shift moves the window up by n: bit i becomes bit i+n.
func (w *seqWindow) shift(n uint64) {
	if n >= seqWindowSize {
		w.seen = [seqWindowWords]uint64{}
		return
	}
	words, bits := int(n/64), n%64
	for i := seqWindowWords - 1; i >= 0; i-- {
		var v uint64
		if j := i - words; j >= 0 {
			v = w.seen[j] << bits
			if bits > 0 && j-1 >= 0 {
				v |= w.seen[j-1] >> (64 - bits)
			}
		}
		w.seen[i] = v
	}
}

func (w *seqWindow) marshal() []byte {
	b := make([]byte, seqWindowBytes)
	binary.BigEndian.PutUint64(b, w.high)
	for i, v := range w.seen {
		binary.BigEndian.PutUint64(b[8+8*i:], v)
	}
	return b
}

// unmarshalSeqWindow reads a stored window. The older 8-byte form held only
// the high-water mark: everything below it counts as seen.
func unmarshalSeqWindow(b []byte) (seqWindow, bool) {
	var w seqWindow
	switch len(b) {
	case 8:
		w.high = binary.BigEndian.Uint64(b)
		for i := range w.seen {
			w.seen[i] = ^uint64(0)
		}
	case seqWindowBytes:
		w.high = binary.BigEndian.Uint64(b)
		for i := range w.seen {
			w.seen[i] = binary.BigEndian.Uint64(b[8+8*i:])
		}
	default:
		return w, false
	}
	return w, true
}
