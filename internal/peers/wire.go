package peers

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// Message kinds: the first byte of every user message.
const (
	kindAnnounce byte = 'A'
	kindRequest  byte = 'Q'
	kindResponse byte = 'R'
)

// A message is its kind, a uvarint length, a JSON header of that length,
// and raw data after it (only a response carries data: a chunk is sent as
// it is, not base64 in JSON).
const (
	maxHeaderBytes = 2048
	// maxMsgBytes bounds any message: a chunk and its header.
	maxMsgBytes = MaxChunkBytes + maxHeaderBytes + 16
)

var errMalformed = errors.New("malformed peer message")

// announceMsg says which chunks of a model Origin holds and whether it is
// downloading the model (Fetching) and, if so, whether it fetches it from
// the broker for the site (Source), and which member it takes for the
// site's source (Leader; a source holds its first requests back until the
// site's downloads name it).
type announceMsg struct {
	Origin string `json:"o"`
	Site   string `json:"s"`
	Seq    uint64 `json:"q"`
	Key    string `json:"k"`
	// Total is the number of chunks of the model; Have how many Origin
	// holds (also beyond MaxIndex, which Runs and Bits stop at).
	Total uint32 `json:"t"`
	Have  uint32 `json:"h"`
	// Runs are the held indexes as [start, end) pairs; Bits a bitmap of
	// them (bit i%8 of byte i/8), sent instead when it is shorter.
	Runs     []uint32 `json:"r,omitempty"`
	Bits     []byte   `json:"b,omitempty"`
	Fetching bool     `json:"f,omitempty"`
	Source   bool     `json:"src,omitempty"`
	Leader   string   `json:"l,omitempty"`
}

// request asks a peer for one chunk. Wait, in milliseconds, asks the peer
// to hold the request until it has the chunk, if it is downloading it.
type request struct {
	ID    uint64 `json:"i"`
	From  string `json:"f"`
	Site  string `json:"s"`
	Key   string `json:"k"`
	Index uint32 `json:"x"`
	Wait  uint32 `json:"w,omitempty"`
	// expired marks, inside this node, a held request whose wait ended.
	expired bool
}

// Response outcomes.
const (
	respOK       = 0 // data follows
	respNotFound = 1 // the peer does not hold the chunk and is not getting it
	respNotYet   = 2 // the peer is downloading the model but the chunk is not in yet
	respBusy     = 3 // too many requests waiting at the peer
)

// response answers a request; the data after the header is unverified.
type response struct {
	ID     uint64 `json:"i"`
	Site   string `json:"s"`
	Result int    `json:"r"`
}

func encode(kind byte, hdr any, data []byte) ([]byte, error) {
	h, err := json.Marshal(hdr)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	if len(h) > maxHeaderBytes {
		return nil, fmt.Errorf("encode: header of %d bytes is over %d", len(h), maxHeaderBytes)
	}
	buf := make([]byte, 0, 1+binary.MaxVarintLen32+len(h)+len(data))
	buf = append(buf, kind)
	buf = binary.AppendUvarint(buf, uint64(len(h)))
	buf = append(buf, h...)
	return append(buf, data...), nil
}

// decode splits a message into kind, header and data, bounding every
// length before it is used.
func decode(buf []byte) (kind byte, hdr, data []byte, err error) {
	if len(buf) < 2 {
		return 0, nil, nil, fmt.Errorf("%w: %d bytes", errMalformed, len(buf))
	}
	if len(buf) > maxMsgBytes {
		return 0, nil, nil, fmt.Errorf("%w: %d bytes exceeds %d", errMalformed, len(buf), maxMsgBytes)
	}
	n, w := binary.Uvarint(buf[1:])
	if w <= 0 || n > maxHeaderBytes || uint64(len(buf)-1-w) < n {
		return 0, nil, nil, fmt.Errorf("%w: bad header length", errMalformed)
	}
	start := 1 + w
	return buf[0], buf[start : start+int(n)], buf[start+int(n):], nil
}

func unmarshal(hdr []byte, v any) error {
	if err := json.Unmarshal(hdr, v); err != nil {
		return fmt.Errorf("%w: %w", errMalformed, err)
	}
	return nil
}

// runsOf encodes sorted, distinct indexes as [start, end) pairs.
func runsOf(idx []uint32) []uint32 {
	var out []uint32
	for i := 0; i < len(idx); {
		j := i + 1
		for j < len(idx) && idx[j] == idx[j-1]+1 {
			j++
		}
		out = append(out, idx[i], idx[j-1]+1)
		i = j
	}
	return out
}

// bitsOf is the bitmap of indexes below MaxIndex.
func bitsOf(idx []uint32) []byte {
	var bits []byte
	for _, i := range idx {
		if i >= MaxIndex {
			continue
		}
		for int(i/8) >= len(bits) {
			bits = append(bits, 0)
		}
		bits[i/8] |= 1 << (i % 8)
	}
	return bits
}

// heldSet is what one announcement says a peer holds, as a bitmap over
// indexes below MaxIndex.
func heldSet(m *announceMsg) ([]byte, error) {
	if len(m.Runs) == 0 {
		return m.Bits, nil
	}
	if len(m.Runs)%2 != 0 || len(m.Runs) > maxRuns*2 {
		return nil, fmt.Errorf("%w: %d run bounds", errMalformed, len(m.Runs))
	}
	bits := make([]byte, 0, 16)
	prev := uint32(0)
	for i := 0; i < len(m.Runs); i += 2 {
		s, e := m.Runs[i], min(m.Runs[i+1], MaxIndex)
		if s < prev || s >= m.Runs[i+1] {
			return nil, fmt.Errorf("%w: run [%d, %d) out of order", errMalformed, s, m.Runs[i+1])
		}
		prev = m.Runs[i+1]
		for j := s; j < e; j++ {
			for int(j/8) >= len(bits) {
				bits = append(bits, 0)
			}
			bits[j/8] |= 1 << (j % 8)
		}
	}
	return bits, nil
}

// maxRuns bounds the runs of one announcement; beyond it the bitmap is sent.
const maxRuns = 64
