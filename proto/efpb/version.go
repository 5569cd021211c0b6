// Package efpb holds edgefleet's wire messages, generated from
// proto/edgefleet.proto, and the protocol version; nothing here depends on
// the rest of the tree. Imported by agent, controlplane/..., fleet-sim/... and
// internal/....
package efpb

// ProtocolVersion is the newest wire protocol version this build reads.
// A receiver refuses a document whose protocol_version is higher.
// History: proto/HISTORY.md.
const ProtocolVersion = 2

// ProtocolVersion1 is the protocol_version a writer stamps on a document
// that uses nothing newer than version 1: every message but a manifest
// that needs version 2 (see ManifestVersion). Writers stamp the lowest
// version that reads a document, so an older reader accepts everything it
// can understand and refuses, with a reason, only what it cannot.
const ProtocolVersion1 = 1

// Payload types of the signed DSSE envelopes.
const (
	PayloadTypeTrustBundle = "application/vnd.edgefleet.trustbundle+protobuf"
	PayloadTypeManifest    = "application/vnd.edgefleet.manifest+protobuf"
	PayloadTypeDesired     = "application/vnd.edgefleet.desired+protobuf"
	// PayloadTypeSitePeers and PayloadTypeMemberTicket were added on
	// 2026-12-06 (site-local sharing); older agents never see them.
	PayloadTypeSitePeers    = "application/vnd.edgefleet.sitepeers+protobuf"
	PayloadTypeMemberTicket = "application/vnd.edgefleet.member+protobuf"
)

// ManifestVersion returns the lowest protocol version whose readers check m
// correctly: 2 when m uses any version 2 field (a datatype other than FP32
// in its schema or test vectors, a tensor kind or classes, typed test
// vector data, a relative tolerance, a label or score output, or reference
// statistics tied to an input), else 1. A version 1 agent would misread
// such a manifest (it knows only float32 test vectors and one FP32 output),
// so it must refuse it by its version.
func ManifestVersion(m *Manifest) uint32 {
	if m.GetRelativeTolerance() != 0 || m.GetLabelOutput() != "" || m.GetScoreOutput() != "" {
		return 2
	}
	for _, specs := range [][]*TensorSpec{m.GetInputs(), m.GetOutputs()} {
		for _, s := range specs {
			if (s.GetDatatype() != "" && s.GetDatatype() != "FP32") || s.GetKind() != TensorKind_TENSOR_KIND_TENSOR || s.GetClasses() != nil {
				return 2
			}
		}
	}
	for _, fs := range m.GetReference() {
		if fs.GetInput() != "" {
			return 2
		}
	}
	for _, tv := range m.GetTestVectors() {
		for _, ts := range [][]*Tensor{tv.GetInputs(), tv.GetExpected()} {
			for _, t := range ts {
				if !tensorV1(t) {
					return 2
				}
			}
		}
	}
	return ProtocolVersion1
}

// tensorV1 reports whether t is a version 1 tensor: float32 data only.
func tensorV1(t *Tensor) bool {
	return (t.GetDatatype() == "" || t.GetDatatype() == "FP32") && len(t.GetIntData()) == 0 && len(t.GetUintData()) == 0 &&
		len(t.GetDoubleData()) == 0 && len(t.GetBoolData()) == 0 && len(t.GetBytesData()) == 0
}
