package console

import (
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/labels"
)

// Fleet page limits: a page of devices, and the values offered in the
// site and version filters.
const (
	pageSize   = 50
	maxFacets  = 200
	siteLabel  = "site"
	stateOn    = "online"
	stateOff   = "offline"
	stateBusy  = "updating"
	stateNoApp = "no-model"
)

// fleetFilter is the fleet page's query.
type fleetFilter struct {
	Q        string // search: a substring of the id, a label value or key=value
	Selector string // label selector, e.g. site=north,hw!=arm
	Site     string
	State    string // online, offline, updating, no-model or a model state
	Version  string // model@version, active on the device
	Page     int
}

func parseFleetFilter(q url.Values) fleetFilter {
	f := fleetFilter{
		Q: strings.TrimSpace(q.Get("q")), Selector: strings.TrimSpace(q.Get("selector")),
		Site: q.Get("site"), State: q.Get("state"), Version: q.Get("version"),
	}
	f.Page, _ = strconv.Atoi(q.Get("page"))
	if f.Page < 1 {
		f.Page = 1
	}
	return f
}

func (f fleetFilter) values(page int) url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"q": f.Q, "selector": f.Selector, "site": f.Site, "state": f.State, "version": f.Version} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if page > 1 {
		v.Set("page", strconv.Itoa(page))
	}
	return v
}

// fleetStates are the state filter's choices.
var fleetStates = []string{stateOn, stateOff, stateBusy, string(api.ModelActive), string(api.ModelFailed), string(api.ModelRolledBack), stateNoApp}

type deviceRow struct {
	ID       string
	Online   bool
	Revoked  bool
	LastSeen time.Time
	Labels   []kv
	Models   []modelCell
	Agent    string
	Refusal  string
	Blocked  string
}

type modelCell struct {
	Name, Active, Target string
	State                api.ModelState
	Reason               string
}

type fleetData struct {
	Filter      fleetFilter
	SelectorErr string
	Sites       []string
	Versions    []string
	States      []string
	Total       int
	Online      int
	Matched     int
	Devices     []deviceRow
	Page, Pages int
	PrevURL     string
	NextURL     string
	First, Last int // 1-based positions of the rows shown
}

func (c *Console) fleetPage(w http.ResponseWriter, r *http.Request, req *request) {
	d := c.fleet(parseFleetFilter(r.URL.Query()))
	c.renderLive(w, r, "fleet.html", c.view(req, "Fleet", "fleet", d))
}

// fleet filters the registry in one pass without copying it: only the
// rows of the page asked for are built.
func (c *Console) fleet(f fleetFilter) *fleetData {
	d := &fleetData{Filter: f, States: fleetStates}
	var sel *labels.Selector
	if f.Selector != "" {
		s, err := labels.Parse(f.Selector)
		if err != nil {
			d.SelectorErr = err.Error()
		} else {
			sel = &s
		}
	}
	search := strings.ToLower(f.Q)
	from := (f.Page - 1) * pageSize
	type nameVersion struct{ name, version string }
	sites, versions := map[string]bool{}, map[nameVersion]bool{}
	c.opts.Fleet.Visit(func(dev *api.Device) bool {
		d.Total++
		if dev.Online {
			d.Online++
		}
		if s := dev.Labels[siteLabel]; s != "" && len(sites) < maxFacets {
			sites[s] = true
		}
		for name, st := range dev.Reported {
			if st.ActiveVersion != "" && len(versions) < maxFacets {
				versions[nameVersion{name, st.ActiveVersion}] = true
			}
		}
		if d.SelectorErr != "" || !matchDevice(dev, f, sel, search) {
			return true
		}
		if d.Matched >= from && d.Matched < from+pageSize {
			d.Devices = append(d.Devices, row(dev, c.opts.Models.Corrupt))
		}
		d.Matched++
		return true
	})
	d.Sites = slices.Sorted(maps.Keys(sites))
	for nv := range versions {
		d.Versions = append(d.Versions, nv.name+"@"+nv.version)
	}
	slices.Sort(d.Versions)
	d.Pages = max(1, (d.Matched+pageSize-1)/pageSize)
	d.Page = min(f.Page, d.Pages)
	if d.Page > 1 {
		d.PrevURL = "/ui/fleet?" + f.values(d.Page-1).Encode()
	}
	if d.Page < d.Pages {
		d.NextURL = "/ui/fleet?" + f.values(d.Page+1).Encode()
	}
	if len(d.Devices) > 0 {
		d.First, d.Last = from+1, from+len(d.Devices)
	}
	return d
}

func matchDevice(dev *api.Device, f fleetFilter, sel *labels.Selector, search string) bool {
	if sel != nil && !sel.Match(dev.Labels) {
		return false
	}
	if f.Site != "" && dev.Labels[siteLabel] != f.Site {
		return false
	}
	if f.Version != "" {
		name, version, _ := strings.Cut(f.Version, "@")
		if st := dev.Reported[name]; st == nil || st.ActiveVersion != version {
			return false
		}
	}
	if f.State != "" && !matchState(dev, f.State) {
		return false
	}
	if search != "" && !matchSearch(dev, search) {
		return false
	}
	return true
}

func matchState(dev *api.Device, state string) bool {
	switch state {
	case stateOn:
		return dev.Online
	case stateOff:
		return !dev.Online
	case stateNoApp:
		return len(dev.Reported) == 0
	}
	for _, st := range dev.Reported {
		if state == stateBusy && (st.State.InProgress() || st.State == api.ModelPending) || string(st.State) == state {
			return true
		}
	}
	return false
}

// matchSearch reports whether search (lower case) is part of the
// device's id or of a label value, or is one of its labels as key=value;
// without allocating, as it runs for every device of the fleet.
func matchSearch(dev *api.Device, search string) bool {
	if containsFold(dev.ID, search) {
		return true
	}
	key, value, isLabel := strings.Cut(search, "=")
	for k, v := range dev.Labels {
		if containsFold(v, search) || isLabel && strings.EqualFold(k, key) && strings.EqualFold(v, value) {
			return true
		}
	}
	return false
}

// containsFold is strings.Contains ignoring case, for a lower-case sub.
func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}

// row copies what the fleet table shows of dev; corrupt says which
// versions the control plane cannot serve.
func row(dev *api.Device, corrupt func(model, version string) string) deviceRow {
	r := deviceRow{ID: dev.ID, Online: dev.Online, Revoked: dev.Revoked, LastSeen: dev.LastSeen, Agent: dev.AgentVersion, Blocked: dev.BlockedBy(corrupt)}
	for _, k := range slices.Sorted(maps.Keys(dev.Labels)) {
		r.Labels = append(r.Labels, kv{k, dev.Labels[k]})
	}
	for _, name := range slices.Sorted(maps.Keys(dev.Reported)) {
		st := dev.Reported[name]
		r.Models = append(r.Models, modelCell{Name: name, Active: st.ActiveVersion, Target: st.TargetVersion, State: st.State, Reason: st.Reason})
	}
	if dev.LastRefusal != nil {
		r.Refusal = dev.LastRefusal.Reason
	}
	return r
}
