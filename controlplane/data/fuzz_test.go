package data

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// FuzzOnCapture: whatever a device publishes on its capture topic, the
// ingest never panics, and it acknowledges only batches it could decode
// (each ack names the device of the topic).
func FuzzOnCapture(f *testing.F) {
	at := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	seed, _ := proto.Marshal(&efpb.CaptureBatch{ProtocolVersion: 1, DeviceId: "dev-1", Stream: 1, Batch: 1,
		Rows:   []*efpb.CaptureRow{row("a", 0, at, 1, 2, lbl(1))},
		Labels: []*efpb.CaptureLabel{{ModelName: "fraud", InferenceId: "b", Row: 1, Label: 0}}})
	f.Add(seed)
	f.Add([]byte{})
	f.Add([]byte{0x08, 0x01, 0x12, 0x05, 'd', 'e', 'v', '-', '1', 0x20, 0x01, 0x2a, 0x02, 0x0a, 0x00})
	e := newEnv(f, nil)
	f.Fuzz(func(t *testing.T, payload []byte) {
		before := len(e.bus.list())
		e.s.OnCapture(topics.Scheme{}.Capture("dev-1"), payload)
		got := e.bus.list()
		if len(got) > before+1 {
			t.Fatalf("%d acks for one payload", len(got)-before)
		}
		if len(got) == before+1 {
			if got[before].DeviceId != "dev-1" {
				t.Fatalf("ack for device %q", got[before].DeviceId)
			}
			b := &efpb.CaptureBatch{}
			if err := proto.Unmarshal(payload, b); err != nil || b.Batch == 0 {
				t.Fatalf("acknowledged an undecodable or unnamed batch (%v)", err)
			}
		}
	})
}
