package efpb

import (
	"errors"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// ChunkView is a Chunk decoded without copying its data: Data aliases the
// payload it was decoded from, so it is valid only while that is. A device
// receives every chunk of every download this way; proto.Unmarshal would
// allocate and copy each one first (at fleet-sim's scale, a gigabyte per
// 1 MiB rollout to 1,000 agents).
type ChunkView struct {
	Name    string
	Version string
	Index   uint32
	Data    []byte
}

var errBadUTF8 = errors.New("efpb: chunk: string field is not valid UTF-8")

// DecodeChunkView decodes b as a Chunk, with proto.Unmarshal's rules: a
// later occurrence of a field wins, unknown fields (and known ones with
// another wire type) are skipped, strings must be UTF-8, malformed bytes
// are an error.
func DecodeChunkView(b []byte) (ChunkView, error) {
	var c ChunkView
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ChunkView{}, protowire.ParseError(n)
		}
		if !num.IsValid() {
			return ChunkView{}, errors.New("efpb: chunk: invalid field number")
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType, num == 2 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return ChunkView{}, protowire.ParseError(n)
			}
			if !utf8.Valid(v) {
				return ChunkView{}, errBadUTF8
			}
			if num == 1 {
				c.Name = string(v)
			} else {
				c.Version = string(v)
			}
			b = b[n:]
		case num == 3 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return ChunkView{}, protowire.ParseError(n)
			}
			c.Index = uint32(v)
			b = b[n:]
		case num == 4 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return ChunkView{}, protowire.ParseError(n)
			}
			c.Data = v
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return ChunkView{}, protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return c, nil
}
