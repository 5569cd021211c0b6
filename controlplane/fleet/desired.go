package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/internal/labels"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// maxDeployDevices bounds the explicit device list of one deployment.
const maxDeployDevices = 100_000

// Deploy makes req.Version the desired version of req.Model on every
// target device (explicit ids or a selector); other assignments stay.
func (f *Fleet) Deploy(ctx context.Context, req api.DeployRequest) (*api.DeployResult, error) {
	if err := topics.ValidModelName(req.Model); err != nil {
		return nil, api.Errorf(api.ErrInvalid, "model: %v", err)
	}
	if err := topics.ValidModelVersion(req.Version); err != nil {
		return nil, api.Errorf(api.ErrInvalid, "version: %v", err)
	}
	if _, err := f.opts.Models.SHA256(req.Model, req.Version); err != nil {
		return nil, err
	}
	ids, err := f.targets(req)
	if err != nil {
		return nil, err
	}
	issued, err := f.assign(ctx, req.Model, req.Version, ids)
	if err != nil {
		return nil, fmt.Errorf("deploy %s %s: %w", req.Model, req.Version, err)
	}
	res := &api.DeployResult{Model: req.Model, Version: req.Version, Devices: make([]api.DeployedDevice, len(issued))}
	for i, d := range issued {
		res.Devices[i] = api.DeployedDevice{ID: d.id, Generation: d.gen}
		if d.err != nil {
			res.Devices[i].PublishError = d.err.Error()
		}
	}
	f.log.Info("deployed", "model", req.Model, "version", req.Version, "devices", len(res.Devices))
	return res, nil
}

// Assign makes version the desired version of model on each device (other
// models untouched) and returns the generation issued per device. A
// failed publish is not an error: the state is stored and published again
// when the control plane (re)connects to the broker. The rollout engine
// calls it with its own lock held (lock order: docs/architecture.md).
func (f *Fleet) Assign(ctx context.Context, model, version string, ids []string) (map[string]uint64, error) {
	issued, err := f.assign(ctx, model, version, ids)
	if err != nil {
		return nil, err
	}
	gens := make(map[string]uint64, len(issued))
	for _, d := range issued {
		gens[d.id] = d.gen
	}
	return gens, nil
}

// assign issues and publishes the desired states of one assignment, and
// tells the model registry how many devices will fetch the version.
func (f *Fleet) assign(ctx context.Context, model, version string, ids []string) ([]issuedState, error) {
	sum, err := f.opts.Models.SHA256(model, version)
	if err != nil {
		return nil, err
	}
	want := &efpb.ModelAssignment{Name: model, Version: version, Sha256: sum}
	if env, err := f.opts.Models.Envelope(model, version); err == nil && len(env) <= f.opts.InlineManifestMax {
		want.Manifest = env
	}
	change := func(cur []*efpb.ModelAssignment) []*efpb.ModelAssignment {
		out := withoutManifests(slices.DeleteFunc(cur, func(a *efpb.ModelAssignment) bool { return a.Name == want.Name }))
		out = append(out, proto.CloneOf(want))
		slices.SortFunc(out, func(a, b *efpb.ModelAssignment) int { return strings.Compare(a.Name, b.Name) })
		return out
	}
	// Serving the version ends its shadow (a challenger promoted).
	dropShadow := func(cur []*efpb.ShadowAssignment) []*efpb.ShadowAssignment {
		return slices.DeleteFunc(cur, func(s *efpb.ShadowAssignment) bool { return s.Name == model && s.Version == version })
	}
	f.issueMu.Lock()
	defer f.issueMu.Unlock()
	issued, err := f.issueShadows(ids, change, dropShadow)
	if err != nil {
		return nil, err
	}
	f.expectFetches(model, version, issued)
	f.publish(ctx, issued)
	return issued, nil
}

// withoutManifests drops the manifests of assignments a desired state
// carries over (ModelAssignment.manifest travels only with the change that
// brought the version: the topic has it, and a carried copy would outlive
// its renewals).
func withoutManifests(as []*efpb.ModelAssignment) []*efpb.ModelAssignment {
	for i, a := range as {
		if a.Manifest != nil {
			a = proto.CloneOf(a)
			a.Manifest = nil
			as[i] = a
		}
	}
	return as
}

// publish publishes issued desired states, retained, recording failures in
// each; callers hold issueMu.
func (f *Fleet) publish(ctx context.Context, issued []issuedState) {
	for i := range issued {
		d := &issued[i]
		if d.err = f.opts.Bus.Publish(ctx, f.opts.Scheme.Desired(d.id), d.env, true); d.err != nil {
			f.log.Error("publish desired state failed", "device", d.id, "generation", d.gen, "err", d.err)
		}
	}
}

// expectFetches tells the model registry how many of the devices just
// given model@version will ask for its chunks: those online that do not
// already serve it (offline ones ask when they come back, in a round of
// their own).
func (f *Fleet) expectFetches(model, version string, issued []issuedState) {
	n := 0
	for _, st := range issued {
		d, ok := f.reg.Get(st.id)
		if !ok || !d.Online {
			continue
		}
		if r := d.Reported[model]; r != nil && r.ActiveVersion == version {
			continue
		}
		n++
	}
	f.opts.Models.ExpectFetches(model, version, n)
}

// targets resolves the explicit device list or the selector.
func (f *Fleet) targets(req api.DeployRequest) ([]string, error) {
	switch {
	case len(req.Devices) > 0 && req.Selector != "":
		return nil, api.Errorf(api.ErrInvalid, "give either devices or selector, not both")
	case len(req.Devices) == 0 && req.Selector == "":
		return nil, api.Errorf(api.ErrInvalid, "give the target devices as devices (a list of ids) or selector (e.g. \"site=berlin\")")
	case len(req.Devices) > maxDeployDevices:
		return nil, api.Errorf(api.ErrInvalid, "%d devices listed, max %d; use a selector", len(req.Devices), maxDeployDevices)
	}
	if req.Selector != "" {
		sel, err := labels.Parse(req.Selector)
		if err != nil {
			return nil, api.Errorf(api.ErrInvalid, "%v", err)
		}
		ids := f.reg.IDs(sel)
		if len(ids) == 0 {
			return nil, api.Errorf(api.ErrInvalid, "selector %q matches no registered device", sel.String())
		}
		return ids, nil
	}
	ids := slices.Clone(req.Devices)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	var unknown []string
	for _, id := range ids {
		if err := topics.ValidDeviceID(id); err != nil {
			return nil, api.Errorf(api.ErrInvalid, "devices: %v", err)
		}
		if !f.reg.Exists(id) {
			unknown = append(unknown, id)
		}
	}
	if len(unknown) > 0 {
		if len(unknown) > 10 {
			unknown = append(unknown[:10], fmt.Sprintf("and %d more", len(unknown)-10))
		}
		return nil, api.Errorf(api.ErrNotFound, "unknown devices: %s", strings.Join(unknown, ", "))
	}
	return ids, nil
}

// issuedState is one device's newly issued desired state; err is set when
// publishing it failed.
type issuedState struct {
	id  string
	gen uint64
	env []byte
	err error
}

// issueDesired signs and stores, for each device, a desired state with the
// next generation and the assignments change(current) returns; the store is
// synced before it returns, so a generation is never published before it
// is durable (and never reused after a crash). Callers hold issueMu, which
// serialises generation allocation and publishing: a newer state can never
// be overtaken on the retained topic by an older one.
func (f *Fleet) issue(ids []string, change func([]*efpb.ModelAssignment) []*efpb.ModelAssignment) ([]issuedState, error) {
	return f.issueShadows(ids, change, nil)
}

// issueShadows is issue that also changes the shadow assignments (nil:
// they are carried over); see shadow.go.
func (f *Fleet) issueShadows(ids []string, change func([]*efpb.ModelAssignment) []*efpb.ModelAssignment,
	changeShadows func([]*efpb.ShadowAssignment) []*efpb.ShadowAssignment) ([]issuedState, error) {
	now := f.opts.Clock()
	out := make([]issuedState, 0, len(ids))
	sums := make([]*api.DesiredSummary, 0, len(ids))
	// One transaction per maxDevicesPerWrite devices; the first document
	// signed is checked against the trust bundle (the others are signed
	// by the same key: a control key the bundle does not list fails there).
	verified := false
	for part := range slices.Chunk(ids, maxDevicesPerWrite) {
		var partOut []issuedState
		var partSums []*api.DesiredSummary
		err := f.opts.KV.Update(func(tx *store.Tx) error {
			partOut, partSums = partOut[:0], partSums[:0] // a retried transaction starts again
			for _, id := range part {
				st, sum, err := f.issueOne(tx, id, now, change, changeShadows, !verified)
				if err != nil {
					return fmt.Errorf("issue desired state for %s: %w", id, err)
				}
				verified = true
				partOut, partSums = append(partOut, st), append(partSums, sum)
			}
			return nil
		}, false)
		if err != nil {
			return nil, err
		}
		out, sums = append(out, partOut...), append(sums, partSums...)
	}
	if err := f.opts.Sync(); err != nil {
		return nil, fmt.Errorf("issue desired states: %w", err)
	}
	for i, st := range out {
		f.reg.setDesired(st.id, sums[i])
	}
	f.deploys.Add(float64(len(out)))
	return out, nil
}

// issueOne signs and writes in tx device id's next desired state; with
// verify the signed document is checked against the trust bundle.
func (f *Fleet) issueOne(tx *store.Tx, id string, now time.Time, change func([]*efpb.ModelAssignment) []*efpb.ModelAssignment,
	changeShadows func([]*efpb.ShadowAssignment) []*efpb.ShadowAssignment, verify bool) (issuedState, *api.DesiredSummary, error) {
	var prev desiredRecord
	var cur []*efpb.ModelAssignment
	var shadows []*efpb.ShadowAssignment
	b, err := tx.Get(prefixDesired + id)
	if err == nil {
		prev, err = decodeDesiredRecord(b)
	}
	switch {
	case err == nil:
		d, err := desiredPayload(prev.Envelope)
		if err != nil {
			return issuedState{}, nil, err
		}
		cur, shadows = d.Models, d.Shadows
	case !errors.Is(err, store.ErrNotFound):
		return issuedState{}, nil, err
	}
	models := change(cur)
	if changeShadows != nil {
		shadows = changeShadows(shadows)
	}
	shadows = servedShadows(models, shadows)
	f.withCapture(models)
	if len(models) > maxReportedModels {
		return issuedState{}, nil, api.Errorf(api.ErrInvalid, "device %s would run %d models; a device runs at most %d (the control plane tracks no more)", id, len(models), maxReportedModels)
	}
	d := &efpb.DesiredState{
		ProtocolVersion: efpb.ProtocolVersion1,
		DeviceId:        id,
		Generation:      prev.Generation + 1,
		Models:          models,
		IssuedUnix:      now.Unix(),
		ExpiresUnix:     now.Add(f.opts.DesiredTTL).Unix(),
		Shadows:         shadows,
	}
	env, err := signing.SignMessage(efpb.PayloadTypeDesired, d, f.opts.Keys.Control)
	if err != nil {
		return issuedState{}, nil, err
	}
	if verify {
		if _, err := f.opts.Keys.Verifier.VerifyDesired(env, now); err != nil {
			return issuedState{}, nil, fmt.Errorf("the signed desired state does not verify with the trust bundle: %w", err)
		}
	}
	envBytes, err := proto.Marshal(env)
	if err != nil {
		return issuedState{}, nil, err
	}
	if err := tx.Set(prefixDesired+id, desiredRecord{Generation: d.Generation, Envelope: envBytes}.encode()); err != nil {
		return issuedState{}, nil, err
	}
	return issuedState{id: id, gen: d.Generation, env: envBytes}, desiredSummary(d), nil
}

func desiredPayload(envBytes []byte) (*efpb.DesiredState, error) {
	env := &efpb.Envelope{}
	if err := proto.Unmarshal(envBytes, env); err != nil {
		return nil, fmt.Errorf("stored desired state: %w", err)
	}
	d := &efpb.DesiredState{}
	if err := proto.Unmarshal(env.Payload, d); err != nil {
		return nil, fmt.Errorf("stored desired state: %w", err)
	}
	return d, nil
}

// PublishRetained publishes every device's newest desired state, retained
// (the embedded broker keeps retained messages in memory only: this runs
// at every start and after a reconnect to an external broker).
func (f *Fleet) PublishRetained(ctx context.Context) (int, error) {
	f.issueMu.Lock()
	defer f.issueMu.Unlock()
	n := 0
	err := f.opts.KV.Scan(prefixDesired, func(key string, val []byte) error {
		rec, err := decodeDesiredRecord(val)
		if err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		id := strings.TrimPrefix(key, prefixDesired)
		if err := f.opts.Bus.Publish(ctx, f.opts.Scheme.Desired(id), rec.Envelope, true); err != nil {
			return fmt.Errorf("publish desired state of %s: %w", id, err)
		}
		n++
		return nil
	})
	return n, err
}

// Renew re-issues, with the same assignments and the next generation, the
// desired states that have less than a third of DesiredTTL left or were
// signed by a control key that was rotated out, so devices never see an
// expired or unverifiable document for the fleet's current state.
func (f *Fleet) Renew(ctx context.Context) error {
	now := f.opts.Clock()
	f.issueMu.Lock()
	defer f.issueMu.Unlock()
	var due []string
	for _, d := range f.reg.List(nil) {
		if d.Desired != nil && (d.Desired.Expires.Sub(now) < f.opts.DesiredTTL/3 || f.signedByOldKey(d.ID)) {
			due = append(due, d.ID)
		}
	}
	if len(due) == 0 {
		return nil
	}
	issued, err := f.issue(due, withoutManifests)
	if err != nil {
		return fmt.Errorf("renew desired states: %w", err)
	}
	f.publish(ctx, issued)
	f.log.Info("desired states renewed", "devices", len(issued))
	return nil
}

// signedByOldKey reports whether device id's stored desired state was
// signed by a control key other than the current one.
func (f *Fleet) signedByOldKey(id string) bool {
	b, err := f.opts.KV.Get(prefixDesired + id)
	if err != nil {
		return false
	}
	rec, err := decodeDesiredRecord(b)
	if err != nil {
		return false
	}
	return !keys.SignedBy(rec.Envelope, f.opts.Keys.Control.ID)
}
