// Package ingest checks what devices publish before the control plane acts
// on it: the topic names a device and the expected kind, the payload is
// within bounds, decodes, and names the device of its topic. What fails is
// counted by reason and dropped, never acted on. Imported by controlplane,
// controlplane/fleet, controlplane/models and controlplane/monitor.
package ingest

import (
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/topics"
)

// MaxPayload bounds what the control plane decodes from a device.
const MaxPayload = 256 << 10

// Reasons a device payload is dropped (the reason label of
// edgefleet_mqtt_payloads_dropped_total).
const (
	BadTopic        = "bad_topic"
	TooLarge        = "too_large"
	Decode          = "decode"
	DeviceMismatch  = "device_mismatch"
	UnknownDevice   = "unknown_device"
	Revoked         = "revoked"      // the device's credentials were revoked
	NotAssigned     = "not_assigned" // a fetch for a version the device was not assigned
	RateLimited     = "rate_limited" // a device over its fetch budget
	ProtocolVersion = "protocol_version"
	Invalid         = "invalid"
	UnknownModel    = "unknown_model"
	Store           = "store_error"
	Stale           = "stale"
)

// Checker checks device payloads and counts the ones dropped.
type Checker struct {
	scheme  topics.Scheme
	log     *slog.Logger
	dropped *prometheus.CounterVec // topic_kind, reason
	total   atomic.Uint64
}

// New returns a Checker for scheme's topics, registering its counter on reg.
func New(scheme topics.Scheme, reg prometheus.Registerer, log *slog.Logger) *Checker {
	c := &Checker{
		scheme: scheme,
		log:    log,
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_mqtt_payloads_dropped_total",
			Help: "MQTT payloads from devices that were dropped, by topic kind and reason.",
		}, []string{"topic_kind", "reason"}),
	}
	reg.MustRegister(c.dropped)
	return c
}

// Drop counts and logs a payload the control plane will not act on. Logs
// are debug level: a misbehaving device must not flood the log, and the
// counter says how much was dropped and why.
func (c *Checker) Drop(kind topics.Kind, reason, topic string, err error) {
	// The labelled counter first: whoever sees the total move can rely on
	// the breakdown already holding this drop.
	c.dropped.WithLabelValues(kind.String(), reason).Inc()
	c.total.Add(1)
	c.log.Debug("device payload dropped", "topic", topic, "reason", reason, "err", err)
}

// Dropped is the number of device payloads dropped since start.
func (c *Checker) Dropped() uint64 { return c.total.Load() }

// Device checks what every device payload must satisfy and returns the
// device id from the topic, or "" after counting a drop.
func (c *Checker) Device(kind topics.Kind, topic string, payload []byte) string {
	t, err := c.scheme.Parse(topic)
	if err != nil || t.Kind != kind {
		c.Drop(kind, BadTopic, topic, err)
		return ""
	}
	if len(payload) > MaxPayload {
		c.Drop(kind, TooLarge, topic, fmt.Errorf("%d bytes, max %d", len(payload), MaxPayload))
		return ""
	}
	return t.Device
}

// Decode decodes payload into m and checks that the device id the message
// carries is the one in its topic; it returns the device, or false after
// counting a drop.
func (c *Checker) Decode(kind topics.Kind, topic string, payload []byte, m interface {
	proto.Message
	GetDeviceId() string
}) (string, bool) {
	dev := c.Device(kind, topic, payload)
	if dev == "" {
		return "", false
	}
	if err := proto.Unmarshal(payload, m); err != nil {
		c.Drop(kind, Decode, topic, err)
		return "", false
	}
	if m.GetDeviceId() != dev {
		c.Drop(kind, DeviceMismatch, topic, fmt.Errorf("message names device %q", m.GetDeviceId()))
		return "", false
	}
	return dev, true
}
