package controlplane

import (
	"context"
	"encoding/hex"
	"encoding/json"
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
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// maxDeployDevices bounds the explicit device list of one deployment.
const maxDeployDevices = 100_000

// deploy issues a new desired state to every target device: the device's
// assignment for req.Model becomes req.Version, other assignments stay.
func (s *Server) deploy(ctx context.Context, req api.DeployRequest) (*api.DeployResult, error) {
	if err := transfer.ValidName(req.Model); err != nil {
		return nil, newErr(api.ErrInvalid, "model: %v", err)
	}
	if err := transfer.ValidVersion(req.Version); err != nil {
		return nil, newErr(api.ErrInvalid, "version: %v", err)
	}
	rec := s.models.get(req.Model, req.Version)
	if rec == nil {
		return nil, newErr(api.ErrNotFound, "model %s version %s does not exist; upload it first", req.Model, req.Version)
	}
	sum, err := hex.DecodeString(rec.SHA256)
	if err != nil {
		return nil, fmt.Errorf("deploy: stored sha256 of %s %s: %w", req.Model, req.Version, err)
	}
	ids, err := s.deployTargets(req)
	if err != nil {
		return nil, err
	}
	want := &efpb.ModelAssignment{Name: req.Model, Version: req.Version, Sha256: sum}
	assign := func(cur []*efpb.ModelAssignment) []*efpb.ModelAssignment {
		out := slices.DeleteFunc(cur, func(a *efpb.ModelAssignment) bool { return a.Name == want.Name })
		out = append(out, proto.CloneOf(want))
		slices.SortFunc(out, func(a, b *efpb.ModelAssignment) int { return strings.Compare(a.Name, b.Name) })
		return out
	}

	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	issued, err := s.issueDesired(ids, assign)
	if err != nil {
		return nil, fmt.Errorf("deploy %s %s: %w", req.Model, req.Version, err)
	}
	res := &api.DeployResult{Model: req.Model, Version: req.Version, Devices: make([]api.DeployedDevice, 0, len(issued))}
	s.expectFetches(req.Model, req.Version, issuedIDs(issued))
	for _, d := range issued {
		dd := api.DeployedDevice{ID: d.id, Generation: d.gen}
		if err := s.bus.Publish(ctx, s.scheme.Desired(d.id), d.env, true); err != nil {
			dd.PublishError = err.Error()
			s.log.Error("publish desired state failed", "device", d.id, "generation", d.gen, "err", err)
		}
		res.Devices = append(res.Devices, dd)
	}
	s.log.Info("deployed", "model", req.Model, "version", req.Version, "devices", len(res.Devices))
	return res, nil
}

// deployTargets resolves the explicit device list or the selector.
func (s *Server) deployTargets(req api.DeployRequest) ([]string, error) {
	switch {
	case len(req.Devices) > 0 && req.Selector != "":
		return nil, newErr(api.ErrInvalid, "give either devices or selector, not both")
	case len(req.Devices) == 0 && req.Selector == "":
		return nil, newErr(api.ErrInvalid, "give the target devices as devices (a list of ids) or selector (e.g. \"site=berlin\")")
	case len(req.Devices) > maxDeployDevices:
		return nil, newErr(api.ErrInvalid, "%d devices listed, max %d; use a selector", len(req.Devices), maxDeployDevices)
	}
	if req.Selector != "" {
		sel, err := labels.Parse(req.Selector)
		if err != nil {
			return nil, newErr(api.ErrInvalid, "%v", err)
		}
		ids := s.reg.ids(sel)
		if len(ids) == 0 {
			return nil, newErr(api.ErrInvalid, "selector %q matches no registered device", sel.String())
		}
		return ids, nil
	}
	ids := slices.Clone(req.Devices)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	var unknown []string
	for _, id := range ids {
		if err := topics.ValidDeviceID(id); err != nil {
			return nil, newErr(api.ErrInvalid, "devices: %v", err)
		}
		if !s.reg.exists(id) {
			unknown = append(unknown, id)
		}
	}
	if len(unknown) > 0 {
		if len(unknown) > 10 {
			unknown = append(unknown[:10], fmt.Sprintf("and %d more", len(unknown)-10))
		}
		return nil, newErr(api.ErrNotFound, "unknown devices: %s", strings.Join(unknown, ", "))
	}
	return ids, nil
}

type issuedState struct {
	id  string
	gen uint64
	env []byte
}

// issueDesired signs and stores, for each device, a desired state with the
// next generation and the assignments change(current) returns; the store is
// synced before it returns, so a generation is never published before it
// is durable (and never reused after a crash). Callers hold deployMu, which
// serialises generation allocation and publishing: a newer state can never
// be overtaken on the retained topic by an older one.
func (s *Server) issueDesired(ids []string, change func([]*efpb.ModelAssignment) []*efpb.ModelAssignment) ([]issuedState, error) {
	now := s.clock()
	out := make([]issuedState, 0, len(ids))
	sums := make([]*api.DesiredSummary, 0, len(ids))
	for _, id := range ids {
		var st issuedState
		var sum *api.DesiredSummary
		err := s.kv.Update(func(tx *store.Tx) error {
			var prev desiredRecord
			var cur []*efpb.ModelAssignment
			switch err := tx.GetJSON(prefixDesired+id, &prev); {
			case err == nil:
				d, err := desiredPayload(prev.Envelope)
				if err != nil {
					return err
				}
				cur = d.Models
			case !errors.Is(err, store.ErrNotFound):
				return err
			}
			d := &efpb.DesiredState{
				ProtocolVersion: efpb.ProtocolVersion,
				DeviceId:        id,
				Generation:      prev.Generation + 1,
				Models:          change(cur),
				IssuedUnix:      now.Unix(),
				ExpiresUnix:     now.Add(s.opts.DesiredTTL).Unix(),
			}
			env, err := signing.SignMessage(efpb.PayloadTypeDesired, d, s.keys.Control)
			if err != nil {
				return err
			}
			if _, err := s.keys.Verifier.VerifyDesired(env, now); err != nil {
				return fmt.Errorf("the signed desired state does not verify with the trust bundle: %w", err)
			}
			envBytes, err := proto.Marshal(env)
			if err != nil {
				return err
			}
			st = issuedState{id: id, gen: d.Generation, env: envBytes}
			sum = desiredSummary(d)
			return tx.SetJSON(prefixDesired+id, desiredRecord{Generation: d.Generation, Envelope: envBytes})
		}, false)
		if err != nil {
			return nil, fmt.Errorf("issue desired state for %s: %w", id, err)
		}
		out = append(out, st)
		sums = append(sums, sum)
	}
	if err := s.db.Sync(); err != nil {
		return nil, fmt.Errorf("issue desired states: %w", err)
	}
	for i, st := range out {
		s.reg.setDesired(st.id, sums[i])
	}
	s.metrics.deploys.Add(float64(len(out)))
	return out, nil
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

// publishRetained (re)publishes everything devices expect to find retained:
// the trust bundle, every manifest and every device's newest desired state.
// The embedded broker keeps retained messages in memory only, so this runs
// at every start, and after every reconnect to an external broker.
func (s *Server) publishRetained(ctx context.Context) error {
	if err := s.bus.Publish(ctx, s.scheme.Trust(), s.keys.BundleBytes, true); err != nil {
		return fmt.Errorf("publish trust bundle: %w", err)
	}
	recs := s.models.all()
	for _, rec := range recs {
		if err := s.bus.Publish(ctx, s.scheme.Manifest(rec.Name, rec.Version), rec.Envelope, true); err != nil {
			return fmt.Errorf("publish manifest %s %s: %w", rec.Name, rec.Version, err)
		}
	}
	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	n := 0
	err := s.kv.Scan(prefixDesired, func(key string, val []byte) error {
		var rec desiredRecord
		if err := json.Unmarshal(val, &rec); err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		id := strings.TrimPrefix(key, prefixDesired)
		if err := s.bus.Publish(ctx, s.scheme.Desired(id), rec.Envelope, true); err != nil {
			return fmt.Errorf("publish desired state of %s: %w", id, err)
		}
		n++
		return nil
	})
	if err != nil {
		return err
	}
	s.log.Info("retained state published", "manifests", len(recs), "desired_states", n)
	return nil
}

// renew re-signs what is about to expire, so devices never see an expired
// document for the fleet's current state: manifests with less than a third
// of ManifestTTL left get a new expiry (same content otherwise), and
// desired states with less than a third of DesiredTTL left are re-issued
// with the same assignments and the next generation.
func (s *Server) renew(ctx context.Context) error {
	now := s.clock()
	for _, rec := range s.models.all() {
		if rec.Expires.Sub(now) >= s.opts.ManifestTTL/3 && keys.SignedBy(rec.Envelope, s.keys.Release.ID) {
			continue // re-signed when expiring or after a release-key rotation
		}
		if err := s.renewManifest(ctx, rec, now); err != nil {
			return err
		}
	}

	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	var due []string
	for _, d := range s.reg.list(nil) {
		if d.Desired != nil && (d.Desired.Expires.Sub(now) < s.opts.DesiredTTL/3 || s.desiredSignedByOldKey(d.ID)) {
			due = append(due, d.ID)
		}
	}
	if len(due) == 0 {
		return nil
	}
	issued, err := s.issueDesired(due, func(cur []*efpb.ModelAssignment) []*efpb.ModelAssignment { return cur })
	if err != nil {
		return fmt.Errorf("renew desired states: %w", err)
	}
	for _, d := range issued {
		if err := s.bus.Publish(ctx, s.scheme.Desired(d.id), d.env, true); err != nil {
			s.log.Error("publish renewed desired state failed", "device", d.id, "err", err)
		}
	}
	s.log.Info("desired states renewed", "devices", len(issued))
	return nil
}

func (s *Server) renewManifest(ctx context.Context, rec *modelRecord, now time.Time) error {
	m, err := decodeManifest(rec)
	if err != nil {
		return fmt.Errorf("renew manifest: %w", err)
	}
	m.ExpiresUnix = now.Add(s.opts.ManifestTTL).Unix()
	env, err := signing.SignMessage(efpb.PayloadTypeManifest, m, s.keys.Release)
	if err != nil {
		return fmt.Errorf("renew manifest %s %s: %w", rec.Name, rec.Version, err)
	}
	envBytes, err := proto.Marshal(env)
	if err != nil {
		return fmt.Errorf("renew manifest %s %s: %w", rec.Name, rec.Version, err)
	}
	next := &modelRecord{ModelVersion: rec.ModelVersion, Envelope: envBytes}
	next.Expires = time.Unix(m.ExpiresUnix, 0).UTC()
	s.uploadMu.Lock()
	err = s.kv.SetJSON(modelKey(rec.Name, rec.Version), next, true)
	if err == nil {
		s.models.put(next)
	}
	s.uploadMu.Unlock()
	if err != nil {
		return fmt.Errorf("renew manifest %s %s: %w", rec.Name, rec.Version, err)
	}
	if err := s.bus.Publish(ctx, s.scheme.Manifest(rec.Name, rec.Version), envBytes, true); err != nil {
		s.log.Error("publish renewed manifest failed", "model", rec.Name, "version", rec.Version, "err", err)
	}
	s.log.Info("manifest renewed", "model", rec.Name, "version", rec.Version, "expires", next.Expires)
	return nil
}

func issuedIDs(issued []issuedState) []string {
	ids := make([]string, len(issued))
	for i, d := range issued {
		ids[i] = d.id
	}
	return ids
}

// desiredSignedByOldKey reports whether device id's stored desired state
// was signed by a control key other than the current one.
func (s *Server) desiredSignedByOldKey(id string) bool {
	var rec desiredRecord
	if err := s.kv.GetJSON(prefixDesired+id, &rec); err != nil {
		return false
	}
	return !keys.SignedBy(rec.Envelope, s.keys.Control.ID)
}
