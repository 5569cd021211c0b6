package sim

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/edgefleet/edgefleet/internal/topics"
)

// Device is one simulated device: its id and the labels it is registered
// with.
type Device struct {
	ID     string
	Labels map[string]string
}

// FleetSpec describes a fleet as sites × devices per site. The zero value
// of each optional field is a documented default.
type FleetSpec struct {
	// Sites is the number of sites (label site=<SitePrefix><i>). Required.
	Sites int `yaml:"sites" json:"sites"`
	// DevicesPerSite is the number of devices at each site. Required.
	DevicesPerSite int `yaml:"devices_per_site" json:"devices_per_site"`
	// SitePrefix names sites; default "site-".
	SitePrefix string `yaml:"site_prefix" json:"site_prefix,omitempty"`
	// IDPrefix names devices <IDPrefix><site>-<n>; default "dev-".
	IDPrefix string `yaml:"id_prefix" json:"id_prefix,omitempty"`
	// Regions are assigned to sites round-robin (label region); none if empty.
	Regions []string `yaml:"regions" json:"regions,omitempty"`
	// Hardware is the hardware mix: label hw=<name> with integer weights,
	// assigned deterministically within each site. Default {"x86": 1}.
	Hardware map[string]int `yaml:"hardware" json:"hardware,omitempty"`
	// Labels are added to every device.
	Labels map[string]string `yaml:"labels" json:"labels,omitempty"`
}

// MaxDevices bounds a fleet description; a process runs out of file
// descriptors long before.
const MaxDevices = 100_000

// ErrInvalidFleet is wrapped by errors about a bad fleet description.
var ErrInvalidFleet = errors.New("invalid fleet")

// Expand returns the fleet's devices, ordered by site then number.
func (s FleetSpec) Expand() ([]Device, error) {
	if s.Sites <= 0 || s.DevicesPerSite <= 0 {
		return nil, fmt.Errorf("%w: sites (%d) and devices_per_site (%d) must both be positive", ErrInvalidFleet, s.Sites, s.DevicesPerSite)
	}
	if s.Sites*s.DevicesPerSite > MaxDevices {
		return nil, fmt.Errorf("%w: %d devices is more than %d", ErrInvalidFleet, s.Sites*s.DevicesPerSite, MaxDevices)
	}
	if s.SitePrefix == "" {
		s.SitePrefix = "site-"
	}
	if s.IDPrefix == "" {
		s.IDPrefix = "dev-"
	}
	hw := s.Hardware
	if len(hw) == 0 {
		hw = map[string]int{"x86": 1}
	}
	// A deterministic slot table: names sorted, each repeated by weight.
	var table []string
	names := make([]string, 0, len(hw))
	for n := range hw {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		w := hw[n]
		if w <= 0 || w > 1000 {
			return nil, fmt.Errorf("%w: hardware %q has weight %d; want 1..1000", ErrInvalidFleet, n, w)
		}
		for range w {
			table = append(table, n)
		}
	}
	for _, r := range s.Regions {
		if strings.TrimSpace(r) == "" {
			return nil, fmt.Errorf("%w: empty region name", ErrInvalidFleet)
		}
	}
	out := make([]Device, 0, s.Sites*s.DevicesPerSite)
	for si := range s.Sites {
		site := fmt.Sprintf("%s%d", s.SitePrefix, si+1)
		for di := range s.DevicesPerSite {
			id := fmt.Sprintf("%s%d-%d", s.IDPrefix, si+1, di+1)
			if err := topics.ValidDeviceID(id); err != nil {
				return nil, fmt.Errorf("%w: device id %q: %v", ErrInvalidFleet, id, err)
			}
			l := map[string]string{"site": site, "hw": table[di%len(table)]}
			if len(s.Regions) > 0 {
				l["region"] = s.Regions[si%len(s.Regions)]
			}
			for k, v := range s.Labels {
				l[k] = v
			}
			out = append(out, Device{ID: id, Labels: l})
		}
	}
	return out, nil
}
