package controlplane

import (
	"context"
	"log/slog"
	"strings"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/fleet"
	"github.com/edgefleet/edgefleet/controlplane/models"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/controlplane/retrain"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// RetrainConfig configures retrain jobs. The zero value runs the builtin
// trainer only.
type RetrainConfig struct {
	// Trainers are the external trainers a retrain policy may name as
	// "command:NAME": NAME → program and its leading arguments (the job
	// appends --data DIR --out DIR). Only these run.
	Trainers map[string][]string
}

// alertFeed hands monitoring's alerts to the retrain worker: the monitor
// is built before the retrain service (which needs the rollout engine,
// which needs monitoring), so they meet at this channel, made first.
type alertFeed struct {
	ch  chan retrain.Alert
	log *slog.Logger
}

func newAlertFeed(log *slog.Logger) alertFeed {
	return alertFeed{ch: make(chan retrain.Alert, retrain.DefaultAlertQueue), log: log}
}

// OfferAlert implements monitor.Retrainer without blocking the alerter.
func (f alertFeed) OfferAlert(a monitor.Alert) {
	select {
	case f.ch <- retrain.Alert{Rule: a.Rule, Model: a.Model, Version: a.Version, Site: a.Site, Feature: a.Feature, Value: a.Value, Threshold: a.Threshold}:
	default:
		f.log.Warn("retrain alert queue full: alert not offered to retraining", "rule", a.Rule, "model", a.Model, "site", a.Site)
	}
}

// retrainModels is the retrain jobs' view of the model registry.
type retrainModels struct{ *models.Registry }

func (m retrainModels) Publish(ctx context.Context, name, version string, onnx []byte, meta *efpb.Manifest, reference []byte) (api.ModelVersion, error) {
	return m.AddUpload(ctx, models.Upload{Name: name, Version: version, Model: onnx, Meta: meta, Reference: reference})
}

// retrainFleet names a model's current version: the one most devices are
// assigned, else the newest uploaded.
type retrainFleet struct {
	reg    *fleet.Registry
	models *models.Registry
}

func (f retrainFleet) Current(model string) (string, bool) {
	counts := map[string]int{}
	f.reg.Visit(func(d *api.Device) bool {
		if v := d.Desired.Version(model); v != "" {
			counts[v]++
		}
		return true
	})
	best := ""
	for v, n := range counts {
		if n > counts[best] || n == counts[best] && v < best {
			best = v
		}
	}
	if best != "" {
		return best, true
	}
	v := newestVersion(f.models, model)
	return v, v != ""
}

func newestVersion(reg *models.Registry, model string) string {
	var newest api.ModelVersion
	for _, mv := range reg.List() {
		if mv.Name == model && (newest.Version == "" || mv.Created.After(newest.Created) ||
			mv.Created.Equal(newest.Created) && strings.Compare(mv.Version, newest.Version) > 0) {
			newest = mv
		}
	}
	return newest.Version
}

// retrainAPI is the API's view of retraining: lineage of the newest
// version when none is named.
type retrainAPI struct {
	*retrain.Service
	models *models.Registry
}

func (r retrainAPI) Lineage(model, version string) (api.Lineage, error) {
	if version == "" {
		if version = newestVersion(r.models, model); version == "" {
			return api.Lineage{}, api.Errorf(api.ErrNotFound, "model %s has no versions", model)
		}
	}
	return r.Service.Lineage(model, version)
}
