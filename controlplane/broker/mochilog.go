package broker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// mochi's own log lines carry whole packets ("pk", "packet"): a refused
// 1.9 MB publish became a 6.8 MB WARN line with the payload as decimal
// numbers, so one device credential could fill a disk. mochiHandler sits
// between mochi and the broker's logger: a packet is logged as its type,
// topic and size only, and mochi's warnings and errors are limited per
// client (the rest counted in Broker.LogsSuppressed).
type mochiHandler struct {
	next  slog.Handler
	limit *perClientLimit
}

// Per-client pacing of mochi's warnings and errors.
const (
	mochiLogBurst   = 3
	mochiLogEvery   = time.Minute
	mochiLogClients = 4096 // clients remembered; the oldest are forgotten beyond
)

func newMochiHandler(next slog.Handler, suppressed *atomic.Uint64) *mochiHandler {
	return &mochiHandler{next: next, limit: &perClientLimit{suppressed: suppressed, seen: map[string]*clientLog{}}}
}

func (h *mochiHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *mochiHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	client := ""
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "client" {
			client = a.Value.String()
		}
		out.AddAttrs(redactPacket(a))
		return true
	})
	if r.Level >= slog.LevelWarn && !h.limit.allow(client, r.Time) {
		return nil
	}
	return h.next.Handle(ctx, out)
}

func (h *mochiHandler) WithAttrs(as []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(as))
	for i, a := range as {
		red[i] = redactPacket(a)
	}
	return &mochiHandler{next: h.next.WithAttrs(red), limit: h.limit}
}

func (h *mochiHandler) WithGroup(name string) slog.Handler {
	return &mochiHandler{next: h.next.WithGroup(name), limit: h.limit}
}

// redactPacket replaces a packet value by a summary without its payload.
func redactPacket(a slog.Attr) slog.Attr {
	switch pk := a.Value.Any().(type) {
	case packets.Packet:
		return slog.String(a.Key, summarize(&pk))
	case *packets.Packet:
		if pk != nil {
			return slog.String(a.Key, summarize(pk))
		}
	}
	return a
}

func summarize(pk *packets.Packet) string {
	t := pk.FixedHeader.Type
	name, ok := packets.PacketNames[t]
	if !ok {
		name = fmt.Sprintf("type %d", t)
	}
	if t == packets.Publish {
		return fmt.Sprintf("%s topic=%q payload=%d bytes qos=%d retain=%t", name, pk.TopicName, len(pk.Payload), pk.FixedHeader.Qos, pk.FixedHeader.Retain)
	}
	return name
}

// perClientLimit lets each client log mochiLogBurst lines per
// mochiLogEvery and counts the rest.
type perClientLimit struct {
	suppressed *atomic.Uint64

	mu   sync.Mutex
	seen map[string]*clientLog
}

type clientLog struct {
	start time.Time // of the current window
	n     int       // lines logged in it
}

func (l *perClientLimit) allow(client string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.seen[client]
	if c == nil {
		if len(l.seen) >= mochiLogClients {
			clear(l.seen) // forgetting only lets a few more lines through
		}
		c = &clientLog{start: now}
		l.seen[client] = c
	}
	if now.Sub(c.start) >= mochiLogEvery {
		c.start, c.n = now, 0
	}
	if c.n >= mochiLogBurst {
		l.suppressed.Add(1)
		return false
	}
	c.n++
	return true
}
