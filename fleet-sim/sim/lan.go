package sim

import (
	"errors"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// LAN is the simulated local network of the sites' sharing agents: real
// memberlist over loopback sockets (UDP and TCP), with partitions. Each
// agent's member gets a transport (Tune) that drops what it would send to a
// member on the other side of a partition and fails its dials there; both
// sides filter, so a partition cuts both ways.
type LAN struct {
	// crowded relaxes memberlist's failure detection (set before the
	// agents start): hundreds of members in one process on a few cores
	// answer probes late, where devices on a real LAN, each with its own
	// CPU, would not.
	crowded bool

	mu     sync.Mutex
	device map[string]string // member address → device id
	group  map[string]int    // device id → partition group (0: none)
	cut    uint64            // packets dropped and dials refused
}

// NewLAN returns a LAN without partitions.
func NewLAN() *LAN {
	return &LAN{device: map[string]string{}, group: map[string]int{}}
}

// Partition splits the devices into groups (device id → group number, ≥
// 1); members in different groups, or one in a group and one in none,
// cannot reach each other. A nil or empty map heals the LAN.
func (l *LAN) Partition(groups map[string]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.group = map[string]int{}
	for d, g := range groups {
		l.group[d] = g
	}
}

// Cut is the number of packets dropped and dials refused by partitions.
func (l *LAN) Cut() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cut
}

// blocked reports whether a member of device from may not reach addr.
func (l *LAN) blocked(from, addr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.group) == 0 {
		return false
	}
	to, ok := l.device[addr]
	if !ok {
		return false
	}
	if l.group[from] != l.group[to] {
		l.cut++
		return true
	}
	return false
}

// Tune is the memberlist tuning for device's member: a loopback transport
// that the LAN's partitions apply to.
func (l *LAN) Tune(device string) func(*memberlist.Config) {
	return func(cfg *memberlist.Config) {
		nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{cfg.BindAddr}, BindPort: cfg.BindPort, Logger: cfg.Logger,
		})
		if err != nil {
			return // memberlist makes its own: no partitions for this member
		}
		if l.crowded {
			cfg.ProbeInterval = 5 * time.Second
			cfg.ProbeTimeout = 4 * time.Second
			cfg.SuspicionMult = 6
		}
		port := nt.GetAutoBindPort()
		cfg.BindPort = port
		if cfg.AdvertisePort == 0 {
			cfg.AdvertisePort = port
		}
		host := cfg.AdvertiseAddr
		if host == "" {
			host = cfg.BindAddr
		}
		l.mu.Lock()
		l.device[net.JoinHostPort(host, strconv.Itoa(cfg.AdvertisePort))] = device
		l.mu.Unlock()
		cfg.Transport = &lanTransport{NetTransport: nt, lan: l, device: device}
	}
}

// errPartitioned is what a dial across a partition fails with.
var errPartitioned = errors.New("sim: LAN partitioned")

// lanTransport is a NetTransport that a LAN partition applies to.
type lanTransport struct {
	*memberlist.NetTransport
	lan    *LAN
	device string
}

var _ memberlist.NodeAwareTransport = (*lanTransport)(nil)

func (t *lanTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.lan.blocked(t.device, addr) {
		return time.Now(), nil // lost on the way, as UDP is
	}
	return t.NetTransport.WriteTo(b, addr)
}

func (t *lanTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.lan.blocked(t.device, a.Addr) {
		return time.Now(), nil
	}
	return t.NetTransport.WriteToAddress(b, a)
}

func (t *lanTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.lan.blocked(t.device, addr) {
		return nil, errPartitioned
	}
	return t.NetTransport.DialTimeout(addr, timeout)
}

func (t *lanTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.lan.blocked(t.device, a.Addr) {
		return nil, errPartitioned
	}
	return t.NetTransport.DialAddressTimeout(a, timeout)
}
