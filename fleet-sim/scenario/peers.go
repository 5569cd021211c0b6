package scenario

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/edgefleet/edgefleet/fleet-sim/sim"
	"github.com/edgefleet/edgefleet/internal/labels"
)

// Site-local sharing in fleet-sim: agents that share their site's
// downloads (agent: {peers: ...}) over real memberlist on loopback, each
// site behind one WAN link to the broker (network: {wan_per_site: 4Mbit})
// that the proxy throttles and counts, and the faults: a lying peer, a
// peer killed while it fetches for its site, a partitioned LAN.

func registerPeers(r *Registry) {
	r.RegisterAction("lie", func() Action { return &Lie{} })
	r.RegisterAction("kill_source", func() Action { return &KillSource{} })
	r.RegisterAction("partition_lan", func() Action { return &PartitionLAN{} })
	r.RegisterAction("heal_lan", func() Action { return &HealLAN{} })
	r.RegisterAction("wait_peers", func() Action { return &WaitPeers{} })
	r.RegisterAssertion("wan_bytes_per_site", func() Assertion { return &WANBytesPerSite{} })
	r.RegisterAssertion("peer_blocked", func() Assertion { return &PeerBlocked{} })
}

// PeersSpec makes agents share their site's downloads.
type PeersSpec struct {
	// Selector picks the devices that share ("" all); the others take the
	// broker-only path, e.g. to compare both in one run.
	Selector string `yaml:"selector"`
}

func (p *PeersSpec) validate() error {
	if p == nil || p.Selector == "" {
		return nil
	}
	if _, err := labels.Parse(p.Selector); err != nil {
		return fmt.Errorf("agent: peers: selector %q: %v", p.Selector, err)
	}
	return nil
}

// pick returns sim.Options.Peers.
func (p *PeersSpec) pick() func(sim.Device) bool {
	if p == nil {
		return nil
	}
	if p.Selector == "" {
		return func(sim.Device) bool { return true }
	}
	sel, _ := labels.Parse(p.Selector) // validated
	return func(d sim.Device) bool { return sel.Match(d.Labels) }
}

var rateRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*(bit|kbit|Mbit|Gbit|B|KiB|MiB)(?:/s)?$`)

// parseRate reads a link rate ("4Mbit", "512kbit", "1MiB/s") as bytes per
// second; "" is 0 (unlimited).
func parseRate(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	m := rateRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q: want a number and bit, kbit, Mbit, Gbit, B, KiB or MiB (per second), e.g. 4Mbit", s)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	mult := map[string]float64{"bit": 1.0 / 8, "kbit": 1e3 / 8, "Mbit": 1e6 / 8, "Gbit": 1e9 / 8, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20}[m[2]]
	n := v * mult
	if n < 1 || n > math.MaxInt32 {
		return 0, fmt.Errorf("%q is out of range", s)
	}
	return int(n), nil
}

func needPeers(sc *Scenario) error {
	if sc.Agent.Peers == nil {
		return errors.New("needs agent: {peers: {}}")
	}
	return nil
}

// Lie makes the picked sharing devices corrupt every chunk they serve
// their peers (off: serve them as they are again).
type Lie struct {
	Pick Pick `yaml:",inline"`
	Off  bool `yaml:"off"`
}

// Validate implements the optional validation.
func (l *Lie) Validate(sc *Scenario) error {
	if err := needPeers(sc); err != nil {
		return err
	}
	return l.Pick.validate()
}

// Run implements Action.
func (l *Lie) Run(_ context.Context, env *Env) (string, error) {
	ms, err := l.Pick.pick(env, func(m *sim.Member) bool { return m.Sharing() })
	if err != nil {
		return "", err
	}
	if len(ms) == 0 {
		return "", errors.New("no sharing device matched")
	}
	for _, m := range ms {
		m.SetLying(!l.Off)
	}
	if l.Off {
		return fmt.Sprintf("%d devices serve their peers honestly again", len(ms)), nil
	}
	return fmt.Sprintf("%d devices corrupt what they serve their peers: %v", len(ms), ids(ms)), nil
}

// KillSource waits until one sharing device of the selected ones has
// fetched After (a fraction) of model@version from the broker for its site
// — the member the site elected to fetch it, which its peers are fetching
// from — then kills its agent mid-transfer and starts it again after Down.
type KillSource struct {
	Model    string        `yaml:"model"`
	Version  string        `yaml:"version"`
	Selector string        `yaml:"selector"`
	After    float64       `yaml:"after"`
	Down     time.Duration `yaml:"down"`
	Timeout  time.Duration `yaml:"timeout"`
}

// Validate implements the optional validation.
func (k *KillSource) Validate(sc *Scenario) error {
	if err := needPeers(sc); err != nil {
		return err
	}
	if k.Model == "" || k.Version == "" {
		return errors.New("model and version are required")
	}
	if k.After == 0 {
		k.After = 0.3
	}
	if k.After <= 0 || k.After >= 1 || k.Down < 0 {
		return errors.New("after must be in (0, 1) and down ≥ 0")
	}
	if k.Timeout == 0 {
		k.Timeout = time.Minute
	}
	return nil
}

func brokerBytes(m *sim.Member, version string) uint64 {
	if a := m.Agent(); a != nil {
		for _, t := range a.Transfers() {
			if t.ModelVersion == version {
				return t.BrokerBytes
			}
		}
	}
	return 0
}

// Run implements Action.
func (k *KillSource) Run(ctx context.Context, env *Env) (string, error) {
	ms, err := env.Select(k.Selector)
	if err != nil {
		return "", err
	}
	size, ok := env.ModelSize(k.Model + "@" + k.Version)
	if !ok {
		return "", fmt.Errorf("%s@%s was not pushed in this run", k.Model, k.Version)
	}
	want := uint64(k.After * float64(size))
	deadline := time.Now().Add(env.Real(k.Timeout))
	for {
		var src *sim.Member
		for _, m := range ms {
			if m.Sharing() && brokerBytes(m, k.Version) >= want && Status(m, k.Model).Serving != k.Version {
				src = m
				break
			}
		}
		if src != nil {
			got := brokerBytes(src, k.Version)
			if err := env.Fleet.RestartAfter(ctx, src.Device.ID, env.Real(k.Down)); err != nil {
				return "", err
			}
			return fmt.Sprintf("killed %s after it fetched %d of %d bytes from the broker; back after %v", src.Device.ID, got, size, k.Down), nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no device of %q fetched %.0f%% of %s@%s from the broker within %v", k.Selector, 100*k.After, k.Model, k.Version, k.Timeout)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// PartitionLAN cuts the picked sharing devices off from the other devices
// on the LAN (the broker stays reachable), until heal_lan, and waits until
// the members of their sites see the cut.
type PartitionLAN struct {
	Pick       Pick `yaml:",inline"`
	WaitLimits `yaml:",inline"`
}

// Validate implements the optional validation.
func (p *PartitionLAN) Validate(sc *Scenario) error {
	if err := needPeers(sc); err != nil {
		return err
	}
	if err := p.WaitLimits.validate(); err != nil {
		return err
	}
	return p.Pick.validate()
}

// Run implements Action.
func (p *PartitionLAN) Run(ctx context.Context, env *Env) (string, error) {
	ms, err := p.Pick.pick(env, func(m *sim.Member) bool { return m.Sharing() })
	if err != nil {
		return "", err
	}
	groups := map[string]int{}
	sites := map[string]bool{}
	for _, m := range ms {
		groups[m.Device.ID] = 1
		sites[m.Device.Labels["site"]] = true
	}
	env.Fleet.LAN().Partition(groups)
	// Wait until the members see the cut: each side of each site sees
	// only its own (memberlist declares the others dead).
	side := map[string]int{} // "site/group" → sharing members
	var members []*sim.Member
	for _, m := range env.Fleet.Members() {
		if m.Sharing() && sites[m.Device.Labels["site"]] {
			side[fmt.Sprintf("%s/%d", m.Device.Labels["site"], groups[m.Device.ID])]++
			members = append(members, m)
		}
	}
	start := env.Since()
	var behind offenders
	_, err = env.wait(ctx, waitSpec{limits: p.WaitLimits}, func() bool {
		behind = offenders{}
		for _, m := range members {
			want := side[fmt.Sprintf("%s/%d", m.Device.Labels["site"], groups[m.Device.ID])] - 1
			if a := m.Agent(); a != nil {
				if ps := a.PeerStats(); ps == nil || int(ps.GetMembers()) != want {
					behind.add("%s sees %d peers, want %d", m.Device.ID, ps.GetMembers(), want)
				}
			}
		}
		return behind.n == 0
	})
	if err != nil {
		return "", fmt.Errorf("the members never saw the partition: %s; %w", &behind, err)
	}
	return fmt.Sprintf("%d devices cut off from the rest of the LAN; the members saw it after %.2fs", len(ms), (env.Since() - start).Seconds()), nil
}

// HealLAN ends every LAN partition.
type HealLAN struct{}

// Validate implements the optional validation.
func (*HealLAN) Validate(sc *Scenario) error { return needPeers(sc) }

// Run implements Action.
func (*HealLAN) Run(_ context.Context, env *Env) (string, error) {
	env.Fleet.LAN().Partition(nil)
	return fmt.Sprintf("LAN healed (%d packets and dials were cut)", env.Fleet.LAN().Cut()), nil
}

// WANBytesPerSite checks the bytes of model@version's chunks that crossed
// each site's WAN link (the proxy counts them, MQTT framing included)
// against the model's size: at most MaxRatio (and at least MinRatio, to
// show what a site without sharing costs), for the sites of the selected
// devices. It records each site's ratio and the time from the first deploy
// of the version until all the selected devices served it.
type WANBytesPerSite struct {
	Model    string  `yaml:"model"`
	Version  string  `yaml:"version"`
	Selector string  `yaml:"selector"`
	MaxRatio float64 `yaml:"max_ratio"`
	MinRatio float64 `yaml:"min_ratio"`
	// Baseline selects devices on the broker-only path in the same run:
	// each site's ratio must be at most BaselineFraction of the mean of
	// theirs. A ratio against a baseline measured alongside holds on a
	// loaded machine, where retries inflate both.
	Baseline         string  `yaml:"baseline"`
	BaselineFraction float64 `yaml:"baseline_fraction"`
	// Figure names the recorded figures; default wan.
	Figure string `yaml:"figure"`
}

// Validate implements the optional validation.
func (w *WANBytesPerSite) Validate(sc *Scenario) error {
	if !sc.Network.Proxy {
		return errors.New("needs network: {proxy: true}")
	}
	if w.Model == "" || w.Version == "" {
		return errors.New("model and version are required")
	}
	if w.MaxRatio < 0 || w.MinRatio < 0 || (w.MaxRatio > 0 && w.MinRatio > w.MaxRatio) {
		return errors.New("want 0 ≤ min_ratio ≤ max_ratio")
	}
	if w.Figure == "" {
		w.Figure = "wan"
	}
	if (w.Baseline == "") != (w.BaselineFraction == 0) || w.BaselineFraction < 0 {
		return errors.New("baseline and a positive baseline_fraction go together")
	}
	return nil
}

// siteRatios returns the WAN ratio of each site of the selected devices.
func siteRatios(env *Env, selector, key string, size uint64) (map[string]float64, error) {
	ms, err := env.Select(selector)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, m := range ms {
		if s := m.Device.Labels["site"]; s != "" {
			if _, done := out[s]; !done {
				_, chunks := env.Fleet.Proxy().SiteBytes(s, key)
				out[s] = float64(chunks) / float64(size)
			}
		}
	}
	return out, nil
}

// Deadline implements Assertion.
func (*WANBytesPerSite) Deadline() time.Duration { return 0 }

// Check implements Assertion.
func (w *WANBytesPerSite) Check(env *Env) (bool, string) {
	key := w.Model + "@" + w.Version
	size, ok := env.ModelSize(key)
	if !ok || size == 0 {
		return false, fmt.Sprintf("%s was not pushed in this run", key)
	}
	ms, err := env.Select(w.Selector)
	if err != nil {
		return false, err.Error()
	}
	var sites []string
	var last time.Duration
	agentBroker := map[string]uint64{} // site → what its agents say came from the broker
	for _, m := range ms {
		agentBroker[m.Device.Labels["site"]] += brokerBytes(m, w.Version)
		if s := m.Device.Labels["site"]; s != "" && !slices.Contains(sites, s) {
			sites = append(sites, s)
		}
		if t, ok := env.FirstServing(m.Device.ID, w.Model, w.Version); ok {
			last = max(last, t)
		}
	}
	if len(sites) == 0 {
		return false, fmt.Sprintf("no device of %q has a site", w.Selector)
	}
	slices.Sort(sites)
	ratios := map[string]float64{}
	var over, under offenders
	lo, hi := math.Inf(1), 0.0
	for _, s := range sites {
		_, chunks := env.Fleet.Proxy().SiteBytes(s, key)
		r := float64(chunks) / float64(size)
		ratios[s] = math.Round(r*1000) / 1000
		lo, hi = min(lo, r), max(hi, r)
		if w.MaxRatio > 0 && r > w.MaxRatio {
			over.add("%s %.2f", s, r)
		}
		if r < w.MinRatio {
			under.add("%s %.2f", s, r)
		}
	}
	env.SetFigure(w.Figure+"_ratio_by_site", ratios)
	agentRatios := map[string]float64{}
	for s, b := range agentBroker {
		agentRatios[s] = math.Round(float64(b)/float64(size)*1000) / 1000
	}
	env.SetFigure(w.Figure+"_agent_broker_ratio_by_site", agentRatios)
	env.SetFigure(w.Figure+"_ratio_max", math.Round(hi*1000)/1000)
	env.SetFigure(w.Figure+"_ratio_min", math.Round(lo*1000)/1000)
	if at, ok := env.Deployed(key); ok && last > at {
		env.SetFigure(w.Figure+"_all_active_s", math.Round((last-at).Seconds()*100)/100)
	}
	if rate, _ := parseRate(env.Scenario.Network.WANPerSite); rate > 0 {
		// The fluid-model bound: one device alone pulling the model over
		// its site's link.
		env.SetFigure("wan_one_copy_s", math.Round(float64(size)/float64(rate)*100)/100)
	}
	if over.n > 0 {
		return false, fmt.Sprintf("%d of %d sites moved more than %.2f× %s over their WAN link: %s", over.n, len(sites), w.MaxRatio, key, &over)
	}
	if w.Baseline != "" {
		base, err := siteRatios(env, w.Baseline, key, size)
		if err != nil || len(base) == 0 {
			return false, fmt.Sprintf("baseline %q: no site (%v)", w.Baseline, err)
		}
		mean := 0.0
		for _, r := range base {
			mean += r / float64(len(base))
		}
		env.SetFigure(w.Figure+"_baseline_ratio", math.Round(mean*1000)/1000)
		var worse offenders
		for _, s := range sites {
			if r := float64(ratios[s]); r > w.BaselineFraction*mean {
				worse.add("%s %.2f", s, r)
			}
		}
		if worse.n > 0 {
			return false, fmt.Sprintf("%d of %d sites moved more than %.2f of the broker-only sites' %.2f× %s: %s", worse.n, len(sites), w.BaselineFraction, mean, key, &worse)
		}
	}
	if under.n > 0 {
		return false, fmt.Sprintf("%d of %d sites moved less than %.2f× %s over their WAN link: %s", under.n, len(sites), w.MinRatio, key, &under)
	}
	return true, ""
}

// PeerBlocked checks that at least Min of the selected sharing devices
// blocked Device (a lying peer) and count bad chunks from it.
type PeerBlocked struct {
	Device   string `yaml:"device"`
	Selector string `yaml:"selector"`
	Min      int    `yaml:"min"`
}

// Validate implements the optional validation.
func (p *PeerBlocked) Validate(sc *Scenario) error {
	if err := needPeers(sc); err != nil {
		return err
	}
	if p.Device == "" {
		return errors.New("device is required")
	}
	if p.Min == 0 {
		p.Min = 1
	}
	return nil
}

// Deadline implements Assertion.
func (*PeerBlocked) Deadline() time.Duration { return 0 }

// Check implements Assertion.
func (p *PeerBlocked) Check(env *Env) (bool, string) {
	ms, err := env.Select(p.Selector)
	if err != nil {
		return false, err.Error()
	}
	n := 0
	var bad uint64
	for _, m := range ms {
		a := m.Agent()
		if a == nil || m.Device.ID == p.Device {
			continue
		}
		if ps := a.PeerStats(); ps != nil {
			bad += ps.BadChunks
			if slices.Contains(ps.Blocked, p.Device) {
				n++
			}
		}
	}
	env.SetFigure("blocked_"+p.Device, n)
	env.SetFigure("bad_chunks_from_peers", bad)
	if n < p.Min {
		return false, fmt.Sprintf("%d devices blocked %s, want at least %d (%d bad chunks from peers counted)", n, p.Device, p.Min, bad)
	}
	return true, ""
}

// WaitPeers waits until every selected sharing device has its signed site
// document and sees every other sharing device of its site alive.
type WaitPeers struct {
	Selector string `yaml:"selector"`
	// Fraction of its site's other sharing devices each must see alive
	// (default 1: all). On a starved machine memberlist's views flap; a
	// download works from a partial view.
	Fraction   float64 `yaml:"fraction"`
	WaitLimits `yaml:",inline"`
}

// Validate implements the optional validation.
func (w *WaitPeers) Validate(sc *Scenario) error {
	if err := needPeers(sc); err != nil {
		return err
	}
	if w.Fraction == 0 {
		w.Fraction = 1
	}
	if w.Fraction < 0 || w.Fraction > 1 {
		return errors.New("fraction must be in (0, 1]")
	}
	return w.WaitLimits.validate()
}

// Run implements Action.
func (w *WaitPeers) Run(ctx context.Context, env *Env) (string, error) {
	ms, err := env.Select(w.Selector)
	if err != nil {
		return "", err
	}
	perSite := map[string]int{}
	for _, m := range env.Fleet.Members() {
		if m.Sharing() {
			perSite[m.Device.Labels["site"]]++
		}
	}
	start := env.Since()
	var behind offenders
	res, err := env.wait(ctx, waitSpec{limits: w.WaitLimits}, func() bool {
		behind = offenders{}
		for _, m := range ms {
			if !m.Sharing() {
				continue
			}
			want := int(math.Ceil(w.Fraction * float64(perSite[m.Device.Labels["site"]]-1)))
			a := m.Agent()
			if a == nil {
				behind.add("%s not running", m.Device.ID)
				continue
			}
			if ps := a.PeerStats(); ps == nil || ps.SiteVersion == 0 || int(ps.Members) < want {
				behind.add("%s sees %d of %d peers", m.Device.ID, ps.GetMembers(), want)
			}
		}
		return behind.n == 0
	})
	if err != nil {
		return "", fmt.Errorf("%d devices have not joined their site: %s; %w", behind.n, &behind, err)
	}
	return fmt.Sprintf("every sharing device joined its site after %.2fs%s", (env.Since() - start).Seconds(), res.note()), nil
}
