package fleet

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// AssignShadow gives each device version of model as a challenger to
// score in shadow beside the version it serves (efpb.ShadowAssignment), or
// withdraws model's challenger when version is "". The served assignments
// are untouched. It implements the rollout engine's ShadowIssuer and, like
// Assign, is called with the engine's lock held.
func (f *Fleet) AssignShadow(ctx context.Context, model, version string, ids []string) (map[string]uint64, error) {
	var want *efpb.ShadowAssignment
	if version != "" {
		sum, err := f.opts.Models.SHA256(model, version)
		if err != nil {
			return nil, err
		}
		want = &efpb.ShadowAssignment{Name: model, Version: version, Sha256: sum}
	}
	change := func(cur []*efpb.ShadowAssignment) []*efpb.ShadowAssignment {
		out := slices.DeleteFunc(cur, func(s *efpb.ShadowAssignment) bool { return s.Name == model })
		if want != nil {
			out = append(out, proto.CloneOf(want))
		}
		slices.SortFunc(out, func(a, b *efpb.ShadowAssignment) int { return strings.Compare(a.Name, b.Name) })
		return out
	}
	same := func(cur []*efpb.ModelAssignment) []*efpb.ModelAssignment { return cur }
	f.issueMu.Lock()
	defer f.issueMu.Unlock()
	issued, err := f.issueShadows(ids, same, change)
	if err != nil {
		return nil, fmt.Errorf("shadow %s %s: %w", model, version, err)
	}
	if version != "" {
		f.expectFetches(model, version, issued)
	}
	f.publish(ctx, issued)
	gens := make(map[string]uint64, len(issued))
	for _, d := range issued {
		gens[d.id] = d.gen
	}
	return gens, nil
}

// servedShadows keeps the shadows of models the device is assigned whose
// version is not the one it serves: a challenger needs a champion.
func servedShadows(models []*efpb.ModelAssignment, shadows []*efpb.ShadowAssignment) []*efpb.ShadowAssignment {
	return slices.DeleteFunc(shadows, func(s *efpb.ShadowAssignment) bool {
		i := slices.IndexFunc(models, func(m *efpb.ModelAssignment) bool { return m.Name == s.Name })
		return i < 0 || models[i].Version == s.Version
	})
}
