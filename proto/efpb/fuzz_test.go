package efpb_test

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// fuzzDecode is the property every decoder must have: arbitrary bytes never
// panic, and whatever decodes re-encodes to bytes that decode to an equal
// message. Seeds: the type's fixture, plus testdata/fuzz/<FuzzName>/.
func fuzzDecode(f *testing.F, fixture string, newMsg func() proto.Message) {
	f.Add(fixtureOf(f, fixture))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		m := newMsg()
		if err := proto.Unmarshal(data, m); err != nil {
			return
		}
		again, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatalf("re-marshal of a decoded %s failed: %v", fixture, err)
		}
		m2 := newMsg()
		if err := proto.Unmarshal(again, m2); err != nil {
			t.Fatalf("decode of a re-marshalled %s failed: %v", fixture, err)
		}
		if !proto.Equal(m, m2) {
			t.Fatalf("%s changed in a round trip:\n first %v\nsecond %v", fixture, m, m2)
		}
	})
}

func FuzzDecodeEnvelope(f *testing.F) {
	fuzzDecode(f, "Envelope", func() proto.Message { return &efpb.Envelope{} })
}

func FuzzDecodeTrustBundle(f *testing.F) {
	fuzzDecode(f, "TrustBundle", func() proto.Message { return &efpb.TrustBundle{} })
}

func FuzzDecodeTrustChain(f *testing.F) {
	fuzzDecode(f, "TrustChain", func() proto.Message { return &efpb.TrustChain{} })
}

func FuzzDecodeManifest(f *testing.F) {
	fuzzDecode(f, "Manifest", func() proto.Message { return &efpb.Manifest{} })
}

func FuzzDecodeDesiredState(f *testing.F) {
	fuzzDecode(f, "DesiredState", func() proto.Message { return &efpb.DesiredState{} })
}

func FuzzDecodeChunk(f *testing.F) {
	fuzzDecode(f, "Chunk", func() proto.Message { return &efpb.Chunk{} })
}

func FuzzDecodeFetchRequest(f *testing.F) {
	fuzzDecode(f, "FetchRequest", func() proto.Message { return &efpb.FetchRequest{} })
}

func FuzzDecodeStatusEvent(f *testing.F) {
	fuzzDecode(f, "StatusEvent", func() proto.Message { return &efpb.StatusEvent{} })
}

func FuzzDecodeTelemetry(f *testing.F) {
	fuzzDecode(f, "Telemetry", func() proto.Message { return &efpb.Telemetry{} })
}

func FuzzDecodePresence(f *testing.F) {
	fuzzDecode(f, "Presence", func() proto.Message { return &efpb.Presence{} })
}

func FuzzDecodeAck(f *testing.F) {
	fuzzDecode(f, "Ack", func() proto.Message { return &efpb.Ack{} })
}

// DecodeAck accepts only what proto.Unmarshal accepts, within its bounds,
// and AckRanges of what it accepted covers exactly the acknowledged seqs.
func FuzzCheckAck(f *testing.F) {
	f.Add(fixtureOf(f, "Ack"))
	f.Add([]byte{})
	f.Add([]byte{0x1a, 0x04, 0x08, 0x05, 0x10, 0x02}) // first > last
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := efpb.DecodeAck(data)
		if err != nil {
			return
		}
		if len(data) > efpb.MaxAckSize || len(a.Ranges) > efpb.MaxAckRanges {
			t.Fatalf("DecodeAck accepted %d bytes with %d ranges", len(data), len(a.Ranges))
		}
		var seqs []uint64
		want := map[uint64]bool{}
		for _, r := range a.Ranges {
			if r.First == 0 || r.First > r.Last {
				t.Fatalf("DecodeAck accepted range %d..%d", r.First, r.Last)
			}
			for s := r.First; s <= r.Last && s-r.First < 64; s++ {
				seqs = append(seqs, s)
				want[s] = true
			}
		}
		got := map[uint64]bool{}
		for _, group := range efpb.AckRanges(seqs) {
			if len(group) > efpb.MaxAckRanges {
				t.Fatalf("AckRanges made a group of %d ranges", len(group))
			}
			for i, r := range group {
				if i > 0 && r.First <= group[i-1].Last+1 {
					t.Fatalf("AckRanges left ranges %v and %v unmerged or unsorted", group[i-1], r)
				}
				for s := r.First; s <= r.Last; s++ {
					got[s] = true
				}
			}
		}
		if len(got) != len(want) {
			t.Fatalf("AckRanges covers %d seqs, want %d", len(got), len(want))
		}
		for s := range want {
			if !got[s] {
				t.Fatalf("AckRanges lost seq %d", s)
			}
		}
	})
}

// DecodeChunkView must agree with proto.Unmarshal on every input: the same
// bytes are accepted or refused, and decode to the same fields.
func FuzzDecodeChunkView(f *testing.F) {
	f.Add(fixtureOf(f, "Chunk"))
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x02, 0xff, 0xfe})             // name, not UTF-8
	f.Add([]byte{0x18, 0x80, 0x80, 0x80, 0x80, 0x10}) // index beyond uint32
	f.Add([]byte{0x22, 0x03, 'a', 'b', 'c', 0x22, 0x01, 'z', 0x0d, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, data []byte) {
		want := &efpb.Chunk{}
		wantErr := proto.Unmarshal(data, want)
		got, err := efpb.DecodeChunkView(data)
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("DecodeChunkView error %v, proto.Unmarshal error %v", err, wantErr)
		}
		if err != nil {
			return
		}
		if got.Name != want.Name || got.Version != want.Version || got.Index != want.Index || string(got.Data) != string(want.Data) {
			t.Fatalf("DecodeChunkView %+v, proto.Unmarshal %v", got, want)
		}
	})
}
