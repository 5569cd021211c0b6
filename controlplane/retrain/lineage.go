package retrain

import (
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// maxLineage bounds the chain walked (parents form no cycle in practice,
// but a hand-made manifest could name one).
const maxLineage = 100

// Lineage walks version's parents through their signed manifests,
// newest first, until a version without a parent (or one that no longer
// exists, which ends the chain with its name only).
func (s *Service) Lineage(model, version string) (api.Lineage, error) {
	out := api.Lineage{Model: model}
	seen := map[string]bool{}
	for v := version; v != "" && !seen[v] && len(out.Chain) < maxLineage; {
		seen[v] = true
		m, err := s.opts.Models.Manifest(model, v)
		if err != nil {
			if len(out.Chain) == 0 {
				return out, err
			}
			out.Chain = append(out.Chain, api.LineageEntry{Version: v})
			break
		}
		e := lineageEntry(m)
		out.Chain = append(out.Chain, e)
		v = e.Parent
	}
	return out, nil
}

func lineageEntry(m *efpb.Manifest) api.LineageEntry {
	ti := m.GetTraining()
	e := api.LineageEntry{
		Version: m.GetVersion(), Created: time.Unix(m.GetCreatedUnix(), 0).UTC(), Algorithm: ti.GetAlgorithm(),
		Parent: ti.GetParentVersion(), Trainer: ti.GetTrainer(), Trigger: ti.GetTrigger(), Job: ti.GetRetrainJob(),
	}
	for _, d := range ti.GetDatasets() {
		e.Datasets = append(e.Datasets, api.LineageDataset{Model: d.GetModel(), Version: int(d.GetVersion()), SHA256: d.GetSha256(), Rows: d.GetRows(),
			Base: d.GetVersion() == 0})
	}
	if len(ti.GetTrainerParams()) > 0 {
		e.Params = map[string]string{}
		for _, kv := range ti.GetTrainerParams() {
			e.Params[kv.GetKey()] = kv.GetValue()
		}
	}
	if len(ti.GetEvaluation()) > 0 {
		e.Eval = map[string]float64{}
		for _, mt := range ti.GetEvaluation() {
			e.Eval[mt.GetName()] = mt.GetValue()
		}
	}
	if len(ti.GetMetrics()) > 0 {
		e.Metrics = map[string]float64{}
		for _, mt := range ti.GetMetrics() {
			e.Metrics[mt.GetName()] = mt.GetValue()
		}
	}
	return e
}
