package api

import (
	"encoding/json"
	"fmt"
	"time"
)

// RegisterDeviceRequest is the body of POST /api/v1/devices.
type RegisterDeviceRequest struct {
	ID     string            `json:"id"`
	Labels map[string]string `json:"labels,omitempty"`
}

// DeviceCredentials is the answer to a device registration or enrollment:
// everything an agent needs to connect. The password is shown once; only
// its salted hash is stored.
type DeviceCredentials struct {
	ID            string `json:"id"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	BrokerURL     string `json:"broker_url"`
	TopicPrefix   string `json:"topic_prefix"`
	RootPublicKey string `json:"root_public_key"`
}

// Device is the control plane's view of one device.
type Device struct {
	ID      string            `json:"id"`
	Labels  map[string]string `json:"labels,omitempty"`
	Created time.Time         `json:"created"`
	// Desired is the newest desired state issued to the device, if any.
	Desired *DesiredSummary `json:"desired,omitempty"`
	// Reported is the latest status event per model name.
	Reported map[string]*ModelStatus `json:"reported,omitempty"`
	// LastRefusal is the newest signed document the device refused: a
	// trust bundle, a manifest or a desired state (replayed, expired,
	// badly signed ...), with the reason it gave.
	LastRefusal *Refusal `json:"last_refusal,omitempty"`
	// TrustVersion is the version of the trust bundle the device trusts,
	// as its telemetry last said (0: not reported yet).
	TrustVersion uint64 `json:"trust_version,omitempty"`
	// Online is what the device's presence and traffic say since this
	// control plane started (every device starts offline).
	Online bool `json:"online"`
	// Blocked says why the device cannot get what it was assigned (a
	// version whose stored file on the control plane is corrupt).
	Blocked string `json:"blocked,omitempty"`
	// Revoked: the device's credentials were revoked; it cannot connect
	// until it is enrolled again.
	Revoked      bool              `json:"revoked,omitempty"`
	LastSeen     time.Time         `json:"last_seen,omitzero"`
	AgentVersion string            `json:"agent_version,omitempty"`
	Telemetry    *TelemetrySummary `json:"telemetry,omitempty"`
	// Recent are the device's latest status events, newest first, as this
	// control plane received them since it started (at most
	// MaxRecentStatus); only in the answer for a single device.
	Recent []StatusRecord `json:"recent,omitempty"`
}

// MaxRecentStatus is how many status events Device.Recent keeps.
const MaxRecentStatus = 10

// StatusRecord is one status event of a device about one model.
type StatusRecord struct {
	Model string `json:"model"`
	ModelStatus
}

// Refusal is something the device was sent and would not act on, with its
// reason.
type Refusal struct {
	// Kind is what was refused; Model is set for a manifest.
	Kind       RefusalKind `json:"kind,omitempty"`
	Model      string      `json:"model,omitempty"`
	Reason     string      `json:"reason"`
	Generation uint64      `json:"generation"`
	Seq        uint64      `json:"seq"`
	Time       time.Time   `json:"time"`
}

// DesiredSummary is the decoded content of a device's newest desired state.
type DesiredSummary struct {
	Generation uint64       `json:"generation"`
	Models     []Assignment `json:"models"`
	// Shadows are challengers scored in shadow beside Models.
	Shadows []Assignment `json:"shadows,omitempty"`
	Issued  time.Time    `json:"issued"`
	Expires time.Time    `json:"expires"`
}

// Version is the version of model name in the desired state ("" if the
// state does not assign that model).
func (d *DesiredSummary) Version(name string) string {
	if d == nil {
		return ""
	}
	for _, a := range d.Models {
		if a.Name == name {
			return a.Version
		}
	}
	return ""
}

// Assignment names one model version a device should run.
type Assignment struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// ModelStatus is a device's latest reported lifecycle state of one model.
type ModelStatus struct {
	State ModelState `json:"state"`
	// TargetVersion is the version the event is about; ActiveVersion is what
	// serves inference after it.
	TargetVersion string `json:"target_version,omitempty"`
	ActiveVersion string `json:"active_version,omitempty"`
	// PreviousVersion is the version that served before ActiveVersion (the
	// one a rollback returns to), once the device switched.
	PreviousVersion string    `json:"previous_version,omitempty"`
	Reason          string    `json:"reason,omitempty"`
	ChunksHave      uint32    `json:"chunks_have,omitempty"`
	ChunksTotal     uint32    `json:"chunks_total,omitempty"`
	Generation      uint64    `json:"generation"`
	Seq             uint64    `json:"seq"`
	Updated         time.Time `json:"updated"`
}

// TelemetrySummary is the latest telemetry report of a device.
type TelemetrySummary struct {
	Seq             uint64             `json:"seq"`
	Received        time.Time          `json:"received"`
	Generation      uint64             `json:"generation"`
	UptimeSeconds   uint64             `json:"uptime_seconds"`
	RSSBytes        uint64             `json:"rss_bytes"`
	DroppedPayloads uint64             `json:"dropped_payloads"`
	Models          []ActiveModelStats `json:"models,omitempty"`
}

// ActiveModelStats are a device's counters for one loaded model.
type ActiveModelStats struct {
	Name       string     `json:"name"`
	Version    string     `json:"version"`
	State      ModelState `json:"state"`
	Inferences uint64     `json:"inferences"`
	Errors     uint64     `json:"errors"`
	Rejects    uint64     `json:"rejects"`
}

// RevokeResult is the answer to POST /api/v1/devices/{id}/revoke.
type RevokeResult struct {
	ID string `json:"id"`
	// Disconnected reports that the embedded broker closed a live session.
	// An external mosquitto closes it when `edgefleet broker sync` has
	// written the new password file and reloaded it.
	Disconnected bool `json:"disconnected"`
}

// MosquittoAuth is the answer to GET /api/v1/broker/mosquitto: the files
// an external mosquitto needs to let exactly the enrolled devices in.
type MosquittoAuth struct {
	// Generation identifies this content; it is also the ETag, and a
	// request with If-None-Match and ?wait= waits for the next one.
	Generation string `json:"generation"`
	// Passwd is the password file's lines for every device with a
	// password and for the control plane's ingest logins (not its main
	// login, which the broker needs before the control plane can start).
	Passwd string `json:"passwd"`
	// ACL is the ACL file for the control plane's topic scheme and logins.
	ACL string `json:"acl"`
	// Devices counts the device lines in Passwd.
	Devices int `json:"devices"`
	// LegacyDevices have passwords from before mosquitto hashes were kept:
	// they must be enrolled again to log in to an external mosquitto.
	LegacyDevices int `json:"legacy_devices"`
}

// BrokerAuthnRequest is the body of POST /api/v1/broker/authenticate, as
// EMQX's HTTP authentication sends it (deploy/emqx/emqx.conf).
type BrokerAuthnRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
	ClientID string `json:"clientid"`
}

// BrokerAuthzRequest is the body of POST /api/v1/broker/authorize, as
// EMQX's HTTP authorization sends it. Action is "publish" or "subscribe";
// Retain is "true" or "false" (EMQX's ${retain} placeholder is a string).
type BrokerAuthzRequest struct {
	Username string `json:"username"`
	ClientID string `json:"clientid"`
	Topic    string `json:"topic"`
	Action   string `json:"action"`
	Retain   string `json:"retain,omitempty"`
}

// BrokerDecision answers both: Result is "allow" or "deny".
type BrokerDecision struct {
	Result      string `json:"result"`
	IsSuperuser bool   `json:"is_superuser"`
}

// MaxBrokerWait bounds ?wait= on GET /api/v1/broker/mosquitto.
const MaxBrokerWait = time.Minute

// ModelVersion describes an uploaded model version.
type ModelVersion struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// SHA256 is the hex digest of the ONNX bytes.
	SHA256     string       `json:"sha256"`
	Size       uint64       `json:"size"`
	ChunkSize  uint32       `json:"chunk_size"`
	ChunkCount uint32       `json:"chunk_count"`
	Created    time.Time    `json:"created"`
	Expires    time.Time    `json:"expires"`
	Checks     UploadChecks `json:"checks"`
	// Corrupt says why the control plane cannot serve the version's stored
	// file (it no longer matches SHA256): it cannot be deployed, and
	// devices assigned to it wait. Upload the model again as a new version.
	Corrupt string `json:"corrupt,omitempty"`
	// Manifest is the signed manifest's payload as protojson; only in the
	// answer for a single version.
	Manifest json.RawMessage `json:"manifest,omitempty"`
}

// UploadChecks records what the control plane checked at upload.
type UploadChecks struct {
	// TestVectors is the number of test vectors run.
	TestVectors int `json:"test_vectors"`
	// Passed reports whether the model loaded and matched every vector.
	Passed bool `json:"passed"`
	// Forced reports that the upload was accepted with ?force=true although
	// the checks failed.
	Forced bool `json:"forced,omitempty"`
	// Error is why the checks failed.
	Error string `json:"error,omitempty"`
	// Notes say what the control plane derived for the manifest: test
	// vectors recorded from sample or synthetic inputs and their
	// tolerance, reference statistics from reference data.
	Notes []string `json:"notes,omitempty"`
}

// Upload multipart parts: POST /api/v1/models/{name}/versions/{version}
// takes the ONNX bytes in PartModel and, optionally: metadata (a protojson
// manifest with only the fields the model's producer knows) in
// PartMetadata; sample inputs the control plane runs the model on to
// record test vectors (an OIP inference request JSON, a JSON array of
// them, or a CSV for a model with one tabular input) in PartSamples; and a
// CSV of training data for drift reference statistics in PartReference.
// The query parameter force=true stores a model that fails its checks.
const (
	PartModel     = "model"
	PartMetadata  = "metadata"
	PartSamples   = "samples"
	PartReference = "reference"
)

// DeployRequest is the body of POST /api/v1/deployments: a model version and
// either explicit device ids or a label selector.
type DeployRequest struct {
	Model    string   `json:"model"`
	Version  string   `json:"version"`
	Devices  []string `json:"devices,omitempty"`
	Selector string   `json:"selector,omitempty"`
}

// DeployResult lists the devices a deployment issued desired states to.
type DeployResult struct {
	Model   string           `json:"model"`
	Version string           `json:"version"`
	Devices []DeployedDevice `json:"devices"`
}

// DeployedDevice is one device's new desired-state generation. PublishError
// is set when the state was stored but could not be published yet; it is
// published again when the control plane (re)connects to the broker.
type DeployedDevice struct {
	ID           string `json:"id"`
	Generation   uint64 `json:"generation"`
	PublishError string `json:"publish_error,omitempty"`
}

// BlockedBy is why the device cannot get what it was assigned: the first
// desired version it does not run yet for which corrupt gives a reason
// (the control plane's stored file of that version is corrupt); "" when
// nothing blocks it.
func (d *Device) BlockedBy(corrupt func(model, version string) string) string {
	if d.Desired == nil {
		return ""
	}
	for _, m := range d.Desired.Models {
		if st := d.Reported[m.Name]; st != nil && st.ActiveVersion == m.Version {
			continue // it has it
		}
		if reason := corrupt(m.Name, m.Version); reason != "" {
			return fmt.Sprintf("waits for %s@%s, whose stored file is corrupt: %s", m.Name, m.Version, reason)
		}
	}
	return ""
}
