// Package efpb holds edgefleet's wire messages, generated from
// proto/edgefleet.proto, and the protocol version; nothing here depends on
// the rest of the tree. Imported by agent, controlplane/..., fleet-sim/... and
// internal/....
package efpb

// ProtocolVersion is the wire protocol version this build speaks. Messages
// carry it; a receiver refuses a higher major version than it knows.
// History: proto/HISTORY.md.
const ProtocolVersion = 1

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
