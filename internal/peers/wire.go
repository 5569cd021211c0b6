package peers

import (
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

// maxMsgBytes bounds any decoded message (a base64 chunk plus framing).
const maxMsgBytes = MaxChunkBytes*4/3 + 4096

var errMalformed = errors.New("malformed peer message")

// announceMsg says which chunks of a model Origin holds.
type announceMsg struct {
	Origin string `json:"o"`
	Site   string `json:"s"`
	Seq    uint64 `json:"q"`
	Key    string `json:"k"`
	Bits   []byte `json:"b"` // bitmap of held indexes, bit i%8 of byte i/8
}

// request asks a peer for one chunk.
type request struct {
	ID    uint64 `json:"i"`
	From  string `json:"f"`
	Site  string `json:"s"`
	Key   string `json:"k"`
	Index uint32 `json:"x"`
}

// response answers a request; Data is unverified.
type response struct {
	ID   uint64 `json:"i"`
	Site string `json:"s"`
	OK   bool   `json:"ok"`
	Data []byte `json:"d,omitempty"`
}

func encode(kind byte, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return append([]byte{kind}, b...), nil
}

// decode splits a message into kind and payload, bounding its size.
func decode(buf []byte) (byte, []byte, error) {
	switch {
	case len(buf) < 2:
		return 0, nil, fmt.Errorf("%w: %d bytes", errMalformed, len(buf))
	case len(buf) > maxMsgBytes:
		return 0, nil, fmt.Errorf("%w: %d bytes exceeds %d", errMalformed, len(buf), maxMsgBytes)
	}
	return buf[0], buf[1:], nil
}

func unmarshal(payload []byte, v any) error {
	if err := json.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("%w: %w", errMalformed, err)
	}
	return nil
}
