package efpb

import (
	"errors"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"
)

// Bounds of an Ack, checked by DecodeAck before anything acts on it. The
// control plane splits what it acknowledges into messages within them.
const (
	// MaxAckRanges bounds the ranges of one Ack.
	MaxAckRanges = 512
	// MaxAckSize bounds an encoded Ack: 512 ranges of two 10-byte varints
	// with their tags, plus the header, fit with room to spare.
	MaxAckSize = 16 << 10
)

// ErrBadAck is wrapped by every error of DecodeAck.
var ErrBadAck = errors.New("bad ack")

// DecodeAck decodes and checks an Ack: at most MaxAckSize bytes, a
// protocol version this build reads, at most MaxAckRanges ranges, each
// with 0 < first <= last (seq 0 is never a report's).
func DecodeAck(b []byte) (*Ack, error) {
	if len(b) > MaxAckSize {
		return nil, fmt.Errorf("%w: %d bytes, max %d", ErrBadAck, len(b), MaxAckSize)
	}
	a := &Ack{}
	if err := proto.Unmarshal(b, a); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadAck, err)
	}
	if a.ProtocolVersion > ProtocolVersion {
		return nil, fmt.Errorf("%w: protocol_version %d, this build speaks %d", ErrBadAck, a.ProtocolVersion, ProtocolVersion)
	}
	if len(a.Ranges) > MaxAckRanges {
		return nil, fmt.Errorf("%w: %d ranges, max %d", ErrBadAck, len(a.Ranges), MaxAckRanges)
	}
	for _, r := range a.Ranges {
		if r.GetFirst() == 0 || r.GetFirst() > r.GetLast() {
			return nil, fmt.Errorf("%w: range %d..%d", ErrBadAck, r.GetFirst(), r.GetLast())
		}
	}
	return a, nil
}

// AckRanges sorts seqs (in place), drops zeros and duplicates, and returns
// them as inclusive ranges of consecutive numbers, split into groups of at
// most MaxAckRanges (one Ack each).
func AckRanges(seqs []uint64) [][]*SeqRange {
	slices.Sort(seqs)
	var out [][]*SeqRange
	var cur []*SeqRange
	for _, s := range seqs {
		if s == 0 {
			continue
		}
		if n := len(cur); n > 0 && s <= cur[n-1].Last+1 {
			cur[n-1].Last = max(cur[n-1].Last, s)
			continue
		}
		if len(cur) == MaxAckRanges {
			out = append(out, cur)
			cur = nil
		}
		cur = append(cur, &SeqRange{First: s, Last: s})
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}
