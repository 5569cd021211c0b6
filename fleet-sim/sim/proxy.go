package sim

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/internal/memnet"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Proxy is a proxy (TCP or in-memory) between agents and the MQTT broker that understands
// just enough MQTT to know which device a connection belongs to (the
// CONNECT client id) and where publish payloads are. It counts bytes per
// device in both directions and injects faults: dropped connections,
// refused reconnects for a while, and corrupted chunk payloads.
type Proxy struct {
	dial func(ctx context.Context) (net.Conn, error) // to the broker
	ln   net.Listener
	mem  *memnet.Listener // ln when the agents connect in memory
	log  *slog.Logger

	// mu guards conns, down and corrupt.
	mu      sync.Mutex
	conns   map[*proxyConn]struct{}
	down    map[string]time.Time // device → refuse connections until
	corrupt map[string]int       // device → chunk publishes still to corrupt
	rate    map[string]int       // device → bandwidth cap, bytes/s, broker → device
	site    map[string]*siteLink // device → its site's shared WAN link
	links   map[string]*siteLink // site → its WAN link

	bytesIn   sync.Map // device → *atomic.Uint64 (broker → device)
	bytesOut  sync.Map // device → *atomic.Uint64 (device → broker)
	corrupted atomic.Uint64
	accepted  atomic.Uint64
	connSeq   atomic.Uint64

	// tap sees every forwarded packet (SetTap); nil: none.
	tap atomic.Pointer[Tap]

	wg        sync.WaitGroup
	closeOnce sync.Once
}

type proxyConn struct {
	id        uint64 // unique per proxy, for Tap
	client    net.Conn
	device    string // set once the CONNECT was read; guarded by Proxy.mu
	closed    chan struct{}
	closeOnce sync.Once
}

func (c *proxyConn) close() {
	c.closeOnce.Do(func() { close(c.closed) })
	_ = c.client.Close()
}

// maxPacket bounds one MQTT packet through the proxy (the broker's default
// maximum is 2 MiB).
const maxPacket = 4 << 20

// NewProxy listens on 127.0.0.1:0 and forwards to target (host:port).
func NewProxy(target string, log *slog.Logger) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	var d net.Dialer
	return newProxy(ln, func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", target) }, log), nil
}

// NewMemoryProxy accepts in-memory connections (Dial) and forwards each
// to a connection from dialBroker: agents and broker in one process, with
// the proxy's faults and counters and no sockets.
func NewMemoryProxy(dialBroker func(ctx context.Context) (net.Conn, error), log *slog.Logger) *Proxy {
	mem := memnet.Listen("fleet-sim-proxy")
	p := newProxy(mem, dialBroker, log)
	p.mem = mem
	return p
}

func newProxy(ln net.Listener, dial func(ctx context.Context) (net.Conn, error), log *slog.Logger) *Proxy {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{
		dial:    dial,
		ln:      ln,
		log:     log.With("component", "sim-proxy"),
		conns:   map[*proxyConn]struct{}{},
		down:    map[string]time.Time{},
		corrupt: map[string]int{},
		rate:    map[string]int{},
		site:    map[string]*siteLink{},
		links:   map[string]*siteLink{},
	}
	p.wg.Add(1)
	go p.accept()
	return p
}

// URL is the broker URL agents are given: the listening address, or for an
// in-memory proxy only a name (they connect with Dial).
func (p *Proxy) URL() string {
	if p.mem != nil {
		return "tcp://fleet-sim-proxy.in-process"
	}
	return "tcp://" + p.ln.Addr().String()
}

// Dial connects to an in-memory proxy (NewMemoryProxy).
func (p *Proxy) Dial(ctx context.Context) (net.Conn, error) {
	if p.mem == nil {
		return nil, errors.New("proxy: Dial needs an in-memory proxy")
	}
	return p.mem.Dial(ctx)
}

// Close stops accepting, drops every connection and waits for the proxy's
// goroutines. It is idempotent.
func (p *Proxy) Close() {
	p.closeOnce.Do(func() {
		_ = p.ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
}

// Open returns the number of proxied connections open now.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Accepted is the number of connections accepted so far.
func (p *Proxy) Accepted() uint64 { return p.accepted.Load() }

// Corrupted is the number of chunk publishes corrupted so far.
func (p *Proxy) Corrupted() uint64 { return p.corrupted.Load() }

// Bytes returns the bytes the device received from the broker and sent to
// it, over all its connections.
func (p *Proxy) Bytes(device string) (in, out uint64) {
	if v, ok := p.bytesIn.Load(device); ok {
		in = v.(*atomic.Uint64).Load()
	}
	if v, ok := p.bytesOut.Load(device); ok {
		out = v.(*atomic.Uint64).Load()
	}
	return in, out
}

// Disconnect drops the devices' connections and refuses their reconnects
// for downFor (0: they may reconnect at once). It returns how many
// connections it dropped.
func (p *Proxy) Disconnect(devices []string, downFor time.Duration) int {
	want := make(map[string]bool, len(devices))
	until := time.Now().Add(downFor)
	p.mu.Lock()
	for _, d := range devices {
		want[d] = true
		if downFor > 0 {
			p.down[d] = until
		}
	}
	var drop []*proxyConn
	for c := range p.conns {
		if want[c.device] {
			drop = append(drop, c)
		}
	}
	p.mu.Unlock()
	for _, c := range drop {
		c.close()
	}
	return len(drop)
}

// CorruptChunks makes the proxy flip a byte in the next n chunk publishes
// delivered to each of the devices.
func (p *Proxy) CorruptChunks(devices []string, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range devices {
		p.corrupt[d] += n
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		pc := &proxyConn{id: p.connSeq.Add(1), client: c, closed: make(chan struct{})}
		p.mu.Lock()
		p.conns[pc] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(1)
		go p.serve(pc)
	}
}

func (p *Proxy) counter(m *sync.Map, device string) *atomic.Uint64 {
	if v, ok := m.Load(device); ok {
		return v.(*atomic.Uint64)
	}
	v, _ := m.LoadOrStore(device, new(atomic.Uint64))
	return v.(*atomic.Uint64)
}

// serve runs one proxied connection: it reads the client's CONNECT, dials
// the broker, then copies packets both ways until either side closes.
func (p *Proxy) serve(pc *proxyConn) {
	defer p.wg.Done()
	defer func() {
		pc.close()
		p.mu.Lock()
		delete(p.conns, pc)
		device := pc.device
		p.mu.Unlock()
		if device != "" {
			p.tapPacket(pc, device, false, nil) // the end of the connection
		}
	}()
	cr := bufio.NewReaderSize(pc.client, 16<<10)
	_ = pc.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	first, err := readPacket(cr)
	if err != nil {
		return
	}
	_ = pc.client.SetReadDeadline(time.Time{})
	device, err := connectClientID(first)
	if err != nil {
		p.log.Warn("bad CONNECT through proxy", "err", err)
		return
	}
	p.mu.Lock()
	pc.device = device
	until, isDown := p.down[device]
	if isDown && time.Now().After(until) {
		delete(p.down, device)
		isDown = false
	}
	p.mu.Unlock()
	if isDown {
		return // a dead link: the client sees the connection close
	}
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	server, err := p.dial(dctx)
	cancel()
	if err != nil {
		return
	}
	select {
	case <-pc.closed: // cut while dialing
		_ = server.Close()
		return
	default:
	}
	out, in := p.counter(&p.bytesOut, device), p.counter(&p.bytesIn, device)
	if _, err := server.Write(first); err != nil {
		return
	}
	out.Add(uint64(len(first)))

	p.tapPacket(pc, device, false, first)
	done := make(chan struct{})
	go func() { // client → broker; owned by serve, which waits on done
		defer close(done)
		p.copyToBroker(pc, device, cr, countingWriter{server, out})
		pc.close()
	}()
	cut := make(chan struct{})
	go func() { // closes the broker side once the link is cut; serve waits on cut
		defer close(cut)
		<-pc.closed
		_ = server.Close()
	}()
	sr := bufio.NewReaderSize(server, 64<<10)
	for {
		pkt, err := readPacket(sr)
		if err != nil {
			break
		}
		if pkt[0]>>4 == 3 {
			p.maybeCorrupt(device, pkt)
		}
		link := p.siteOf(device)
		if link != nil && !link.carry(pc, pkt) {
			break
		}
		p.tapPacket(pc, device, true, pkt)
		if _, err := pc.client.Write(pkt); err != nil {
			break
		}
		in.Add(uint64(len(pkt)))
		if !p.throttle(pc, device, len(pkt)) {
			break
		}
	}
	pc.close()
	<-done
	<-cut
}

// siteLink is one site's WAN link from the broker: every device of the
// site shares it (bytesPerSec, 0 unlimited), and it counts what crossed it.
type siteLink struct {
	rate int
	// mu guards free and chunks.
	mu     sync.Mutex
	free   time.Time         // when the link has sent what it was given
	chunks map[string]uint64 // "model@version" → bytes of its chunk publishes
	bytes  atomic.Uint64     // every byte to the site's devices
}

// carry sends pkt over the link: it waits until the link has carried the
// packets before it, at the link's rate; false means the connection was
// cut meanwhile.
func (l *siteLink) carry(pc *proxyConn, pkt []byte) bool {
	l.bytes.Add(uint64(len(pkt)))
	key := ""
	if pkt[0]>>4 == 3 {
		key = chunkVersion(pkt)
	}
	l.mu.Lock()
	if key != "" {
		l.chunks[key] += uint64(len(pkt))
	}
	var wait time.Duration
	if l.rate > 0 {
		now := time.Now()
		start := l.free
		if start.Before(now) {
			start = now
		}
		l.free = start.Add(time.Duration(float64(len(pkt)) / float64(l.rate) * float64(time.Second)))
		wait = l.free.Sub(now)
	}
	l.mu.Unlock()
	if wait <= 0 {
		return true
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-pc.closed:
		return false
	}
}

// chunkVersion is "model@version" of a chunk PUBLISH, or "".
func chunkVersion(pkt []byte) string {
	topic, payload, ok := publishParts(pkt)
	if !ok || !strings.HasSuffix(topic, "/chunks") {
		return ""
	}
	c, err := efpb.DecodeChunkView(payload)
	if err != nil {
		return ""
	}
	return c.Name + "@" + c.Version
}

// publishParts splits a PUBLISH into its topic and payload.
func publishParts(pkt []byte) (topic string, payload []byte, ok bool) {
	b := body(pkt)
	if len(b) < 2 {
		return "", nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n {
		return "", nil, false
	}
	off := 2 + n
	if (pkt[0]>>1)&3 > 0 {
		off += 2 // packet id
	}
	if len(b) < off {
		return "", nil, false
	}
	return string(b[2 : 2+n]), b[off:], true
}

// SetSites puts each device (id → site) behind its site's WAN link, which
// carries bytesPerSec (0: unlimited) from the broker to all of the site's
// devices together, and counts what crosses it (SiteBytes).
func (p *Proxy) SetSites(sites map[string]string, bytesPerSec int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for dev, site := range sites {
		l := p.links[site]
		if l == nil {
			l = &siteLink{rate: bytesPerSec, chunks: map[string]uint64{}}
			p.links[site] = l
		}
		p.site[dev] = l
	}
}

func (p *Proxy) siteOf(device string) *siteLink {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.site[device]
}

// SiteBytes returns what crossed site's WAN link to its devices: every
// byte, and the bytes of model@version's chunk publishes (MQTT framing
// included).
func (p *Proxy) SiteBytes(site, modelVersion string) (all, chunks uint64) {
	p.mu.Lock()
	l := p.links[site]
	p.mu.Unlock()
	if l == nil {
		return 0, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bytes.Load(), l.chunks[modelVersion]
}

// Throttle caps the bandwidth from the broker to each of the devices at
// bytesPerSec (0 removes the cap).
func (p *Proxy) Throttle(devices []string, bytesPerSec int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range devices {
		if bytesPerSec <= 0 {
			delete(p.rate, d)
		} else {
			p.rate[d] = bytesPerSec
		}
	}
}

// throttle waits as long as n bytes take at the device's cap; false means
// the connection was cut meanwhile.
func (p *Proxy) throttle(pc *proxyConn, device string, n int) bool {
	p.mu.Lock()
	rate := p.rate[device]
	p.mu.Unlock()
	if rate <= 0 {
		return true
	}
	t := time.NewTimer(time.Duration(float64(n) / float64(rate) * float64(time.Second)))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-pc.closed:
		return false
	}
}

// maybeCorrupt corrupts pkt if it is a chunk publish and the device has
// corruption budget left, consuming one unit.
func (p *Proxy) maybeCorrupt(device string, pkt []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.corrupt[device] <= 0 || !corruptChunk(pkt) {
		return
	}
	p.corrupt[device]--
	p.corrupted.Add(1)
}

type countingWriter struct {
	w io.Writer
	n *atomic.Uint64
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(uint64(n))
	return n, err
}

// readPacket reads one whole MQTT packet (fixed header included).
func readPacket(r *bufio.Reader) ([]byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	hdr := []byte{h}
	var length, mult int = 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return nil, errors.New("mqtt: remaining length longer than 4 bytes")
		}
		b, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		hdr = append(hdr, b)
		length += int(b&0x7f) * mult
		mult *= 128
		if b&0x80 == 0 {
			break
		}
	}
	if length > maxPacket {
		return nil, fmt.Errorf("mqtt: packet of %d bytes is over %d", length, maxPacket)
	}
	pkt := make([]byte, len(hdr)+length)
	copy(pkt, hdr)
	if _, err := io.ReadFull(r, pkt[len(hdr):]); err != nil {
		return nil, err
	}
	return pkt, nil
}

// body returns the packet without its fixed header.
func body(pkt []byte) []byte {
	i := 1
	for pkt[i]&0x80 != 0 {
		i++
	}
	return pkt[i+1:]
}

// connectClientID returns the client id of an MQTT 3.1.1 CONNECT packet.
func connectClientID(pkt []byte) (string, error) {
	if pkt[0]>>4 != 1 {
		return "", fmt.Errorf("first packet has type %d, want CONNECT (1)", pkt[0]>>4)
	}
	b := body(pkt)
	if len(b) < 2 {
		return "", errors.New("CONNECT too short")
	}
	n := int(binary.BigEndian.Uint16(b))
	off := 2 + n + 1 + 1 + 2 // protocol name, level, flags, keep alive
	if len(b) < off+2 {
		return "", errors.New("CONNECT too short")
	}
	idLen := int(binary.BigEndian.Uint16(b[off:]))
	if len(b) < off+2+idLen {
		return "", errors.New("CONNECT client id truncated")
	}
	return string(b[off+2 : off+2+idLen]), nil
}

// corruptChunk flips the last payload byte of a PUBLISH on a chunk topic
// and reports whether it did.
func corruptChunk(pkt []byte) bool {
	b := body(pkt)
	if len(b) < 2 {
		return false
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n {
		return false
	}
	topic := string(b[2 : 2+n])
	if !strings.HasSuffix(topic, "/chunks") {
		return false
	}
	off := 2 + n
	if (pkt[0]>>1)&3 > 0 {
		off += 2 // packet id
	}
	if len(b) <= off {
		return false
	}
	b[len(b)-1] ^= 0xff
	return true
}

// Tap sees one MQTT packet the proxy forwards (fixed header included):
// conn identifies the proxied connection (unique per proxy), device is its
// CONNECT client id, toDevice the direction (broker → device). A packet
// from the broker is tapped after any corruption and before the device
// gets it; one from the device before the broker gets it. The tap runs on
// the connection's copy loop: it must be quick, and must neither keep nor
// change pkt. When a connection whose CONNECT was read ends, the tap is
// called once more with pkt nil.
type Tap func(conn uint64, device string, toDevice bool, pkt []byte)

// SetTap installs tap (nil removes it). Install it before agents connect
// to see every packet.
func (p *Proxy) SetTap(tap Tap) {
	if tap == nil {
		p.tap.Store(nil)
		return
	}
	p.tap.Store(&tap)
}

func (p *Proxy) tapPacket(pc *proxyConn, device string, toDevice bool, pkt []byte) {
	if t := p.tap.Load(); t != nil {
		(*t)(pc.id, device, toDevice, pkt)
	}
}

// copyToBroker forwards the device's packets one by one (so the tap sees
// each) until either side fails.
func (p *Proxy) copyToBroker(pc *proxyConn, device string, r *bufio.Reader, w io.Writer) {
	for {
		pkt, err := readPacket(r)
		if err != nil {
			return
		}
		p.tapPacket(pc, device, false, pkt)
		if _, err := w.Write(pkt); err != nil {
			return
		}
	}
}

// hold drops the device's connections and refuses its reconnects until
// the returned release is called, which puts back the refusal it had
// before (a partition still running), if any.
func (p *Proxy) hold(device string) (release func()) {
	p.mu.Lock()
	prev, had := p.down[device]
	p.mu.Unlock()
	p.Disconnect([]string{device}, 24*time.Hour)
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if had && time.Now().Before(prev) {
			p.down[device] = prev
		} else {
			delete(p.down, device)
		}
	}
}
