package monitor

import (
	"fmt"
	"math"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/rollout"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Shadow figures: a device's efpb.ShadowReport is merged into the cell of
// the challenger's version (model, challenger, bucket, device) as
// Counts.Shadow, so it is kept, rolled up and expired with every other
// count; the cell's Reports (served-version reports) are not counted, so a
// challenger never looks served to VersionMetrics.

// ShadowCounts are the mergeable shadow counts of a challenger.
type ShadowCounts struct {
	// Reports and ReadyReports: shadow reports, and those sent while the
	// challenger was loaded and scoring. Failure is the last refusal.
	Reports           uint64  `json:"reports"`
	ReadyReports      uint64  `json:"ready_reports,omitempty"`
	Failure           string  `json:"failure,omitempty"`
	Rows              uint64  `json:"rows,omitempty"`
	Agree             uint64  `json:"agree,omitempty"`
	ScoreDiff         float64 `json:"score_diff,omitempty"`
	Skipped           uint64  `json:"skipped,omitempty"`
	Errors            uint64  `json:"errors,omitempty"`
	Labelled          uint64  `json:"labelled,omitempty"`
	ChampionCorrect   uint64  `json:"champion_correct,omitempty"`
	ChallengerCorrect uint64  `json:"challenger_correct,omitempty"`
	// LatEdges and Lat are the challenger's inference times (as
	// Counts.LatEdges and Lat are the served version's).
	LatEdges []float64 `json:"lat_edges,omitempty"`
	Lat      []uint64  `json:"lat,omitempty"`
}

// Add merges o into s.
func (s *ShadowCounts) Add(o *ShadowCounts) {
	s.Reports += o.Reports
	s.ReadyReports += o.ReadyReports
	if o.Failure != "" {
		s.Failure = o.Failure
	}
	s.Rows += o.Rows
	s.Agree += o.Agree
	s.ScoreDiff += o.ScoreDiff
	s.Skipped += o.Skipped
	s.Errors += o.Errors
	s.Labelled += o.Labelled
	s.ChampionCorrect += o.ChampionCorrect
	s.ChallengerCorrect += o.ChallengerCorrect
	if len(s.LatEdges) == 0 {
		s.LatEdges = o.LatEdges
	}
	s.Lat = addSlice(s.Lat, o.Lat)
}

// maxFailureLen bounds the refusal reason kept from a report.
const maxFailureLen = 512

// shadowCountsOf checks a shadow report and converts it.
func shadowCountsOf(r *efpb.ShadowReport) (*ShadowCounts, error) {
	if err := topics.ValidModelName(r.GetModelName()); err != nil {
		return nil, fmt.Errorf("%w: shadow: %v", ErrInvalidReport, err)
	}
	if err := topics.ValidModelVersion(r.GetChallengerVersion()); err != nil {
		return nil, fmt.Errorf("%w: shadow: %v", ErrInvalidReport, err)
	}
	switch {
	case r.Agree > r.Rows:
		return nil, fmt.Errorf("%w: shadow: %d rows agree of %d", ErrInvalidReport, r.Agree, r.Rows)
	case r.ChampionCorrect > r.Labelled || r.ChallengerCorrect > r.Labelled:
		return nil, fmt.Errorf("%w: shadow: more correct than the %d labelled rows", ErrInvalidReport, r.Labelled)
	case math.IsNaN(r.ScoreAbsDiff) || r.ScoreAbsDiff < 0 || math.IsInf(r.ScoreAbsDiff, 0):
		return nil, fmt.Errorf("%w: shadow: score difference %v", ErrInvalidReport, r.ScoreAbsDiff)
	case len(r.ChallengerLatencyCounts) > maxBins:
		return nil, fmt.Errorf("%w: shadow: %d latency bins, at most %d", ErrInvalidReport, len(r.ChallengerLatencyCounts), maxBins)
	case len(r.ChallengerLatencyCounts) != 0 && len(r.ChallengerLatencyCounts) != len(r.LatencyEdgesUs)+1:
		return nil, fmt.Errorf("%w: shadow: %d latency counts for %d edges", ErrInvalidReport, len(r.ChallengerLatencyCounts), len(r.LatencyEdgesUs))
	}
	s := &ShadowCounts{Reports: 1, Failure: r.Failure, Rows: r.Rows, Agree: r.Agree, ScoreDiff: r.ScoreAbsDiff,
		Skipped: r.Skipped, Errors: r.Errors, Labelled: r.Labelled, ChampionCorrect: r.ChampionCorrect, ChallengerCorrect: r.ChallengerCorrect}
	if len(r.ChallengerLatencyCounts) > 0 {
		s.LatEdges, s.Lat = r.LatencyEdgesUs, r.ChallengerLatencyCounts
	}
	if r.Ready {
		s.ReadyReports = 1
	}
	if len(s.Failure) > maxFailureLen {
		s.Failure = s.Failure[:maxFailureLen]
	}
	return s, nil
}

// ShadowFigures sums the shadow counts of challenger version of model on
// devices since a time (from its raw bucket on): what the rollout engine's
// shadow gate reads. A device is ready when any of its reports in the range
// said the challenger was scoring, failed when its last refusal is not
// followed by a ready report. *Aggregator implements rollout.ShadowMetrics.
func (a *Aggregator) ShadowFigures(model, version string, devices []string, since time.Time) rollout.ShadowFigures {
	f := rollout.ShadowFigures{Ready: map[string]bool{}, Failed: map[string]string{}}
	now := a.opts.Clock()
	cs, err := a.cells(model, version, since.Truncate(a.opts.RawBucket), now.Add(time.Nanosecond), devices)
	if err != nil {
		a.log.Warn("shadow figures", "model", model, "version", version, "err", err)
		return f
	}
	for _, bc := range cs {
		s := bc.c.Shadow
		if s == nil {
			continue
		}
		if s.ReadyReports > 0 {
			f.Ready[bc.device] = true
			delete(f.Failed, bc.device)
		} else if s.Failure != "" && !f.Ready[bc.device] {
			f.Failed[bc.device] = s.Failure
		}
		f.Rows += s.Rows
		f.Agree += s.Agree
		f.ScoreDiff += s.ScoreDiff
		f.Skipped += s.Skipped
		f.Errors += s.Errors
		f.Labelled += s.Labelled
		f.ChampionCorrect += s.ChampionCorrect
		f.ChallengerCorrect += s.ChallengerCorrect
	}
	return f
}

var _ rollout.ShadowMetrics = (*Aggregator)(nil)
