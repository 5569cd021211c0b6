package topics

// Field data capture (issue 13): a device uploads captured rows on its own
// capture topic and reads the control plane's acknowledgements on its own
// capture-ack topic. Kept in this file so the rest of the scheme merges
// cleanly with other additions.
//
//	<prefix>/dev/{id}/capture        agent → cp, QoS 1 (efpb.CaptureBatch)
//	<prefix>/dev/{id}/capture-ack    cp → agent, QoS 1 (efpb.CaptureAck)

const (
	leafCapture    = "capture"
	leafCaptureAck = "capture-ack"
)

// Capture kinds have numbers of their own, clear of the iota block in
// topics.go, so kinds added there by other work never collide with them.
const (
	KindCapture    Kind = 40
	KindCaptureAck Kind = 41
)

// Capture is where the device uploads batches of captured rows (agent → cp).
func (s Scheme) Capture(dev string) string { return s.dev(dev, leafCapture) }

// CaptureAck is where the control plane acknowledges the device's stored
// capture batches (cp → agent, never retained).
func (s Scheme) CaptureAck(dev string) string { return s.dev(dev, leafCaptureAck) }

// AllCapture is the control plane's filter for every device's capture topic.
func (s Scheme) AllCapture() string { return s.dev("+", leafCapture) }

// captureKind returns the capture kind of a device topic leaf.
func captureKind(leaf string) (Kind, bool) {
	switch leaf {
	case leafCapture:
		return KindCapture, true
	case leafCaptureAck:
		return KindCaptureAck, true
	}
	return 0, false
}

// captureKindName names the capture kinds ("" for others).
func captureKindName(k Kind) string {
	switch k {
	case KindCapture:
		return leafCapture
	case KindCaptureAck:
		return leafCaptureAck
	}
	return ""
}
