package api

import "time"

// Group-by dimensions of GET /api/v1/models/{name}/versions/{version}/metrics
// (query parameter by). GroupByLabelPrefix + a label key ("label:hw")
// groups by that device label, as the devices are labelled now.
const (
	GroupBySite        = "site"
	GroupByCohort      = "cohort"
	GroupByDevice      = "device"
	GroupByLabelPrefix = "label:"
)

// MetricsQuery are the query parameters of the model metrics endpoint.
type MetricsQuery struct {
	// From and To bound the range (RFC 3339 on the wire); zero From means
	// To minus a day, zero To means now.
	From, To time.Time
	// By groups the figures: "", GroupBySite, GroupByCohort, GroupByDevice
	// or GroupByLabelPrefix+key.
	By string
	// Points is the number of points of the time series (1..1000); 0
	// means 24.
	Points int
}

// ModelMetrics is a model version's field quality over a time range: the
// answer of the model metrics endpoint.
type ModelMetrics struct {
	Model   string         `json:"model"`
	Version string         `json:"version"`
	From    time.Time      `json:"from"`
	To      time.Time      `json:"to"`
	By      string         `json:"by,omitempty"`
	Total   MetricsFigures `json:"total"`
	// Groups are the figures per value of By (sorted by key).
	Groups []MetricsGroup `json:"groups,omitempty"`
	// Devices are the figures per device.
	Devices []MetricsGroup `json:"devices"`
	// Series is the version's accuracy and drift over time.
	Series []MetricsPoint `json:"series"`
	// UnmonitoredInputs are the version's inputs drift monitoring skips
	// (non-numeric: BYTES), each with its datatype.
	UnmonitoredInputs []string `json:"unmonitored_inputs,omitempty"`
}

// MetricsGroup is the figures of one group.
type MetricsGroup struct {
	Key string `json:"key"`
	MetricsFigures
}

// MetricsPoint is one step of the time series.
type MetricsPoint struct {
	Time     time.Time `json:"time"`
	Rows     uint64    `json:"rows"`
	Accuracy *float64  `json:"accuracy,omitempty"`
	MaxPSI   *float64  `json:"max_psi,omitempty"`
}

// MetricsFigures are what a set of monitoring counts says.
type MetricsFigures struct {
	Devices  int    `json:"devices"`
	Reports  uint64 `json:"reports"`
	Rows     uint64 `json:"rows"`
	Errors   uint64 `json:"errors"`
	Labelled uint64 `json:"labelled"`
	Correct  uint64 `json:"correct"`
	// Accuracy is correct/labelled (absent without labels).
	Accuracy  *float64 `json:"accuracy,omitempty"`
	Precision *float64 `json:"precision,omitempty"`
	Recall    *float64 `json:"recall,omitempty"`
	F1        *float64 `json:"f1,omitempty"`
	// UnknownLabels and DuplicateLabels were not joined on the devices.
	UnknownLabels   uint64 `json:"unknown_labels"`
	DuplicateLabels uint64 `json:"duplicate_labels"`
	// Features is the drift of each input feature from the manifest's
	// reference statistics.
	Features []FeatureDrift `json:"features,omitempty"`
	// MaxPSI is the largest feature PSI, and MaxPSIFeature its feature.
	MaxPSI        float64 `json:"max_psi"`
	MaxPSIFeature string  `json:"max_psi_feature,omitempty"`
	// PredictionPSI and PredictionKS compare this group's prediction
	// distribution with the whole version's over the same range (the
	// manifest carries no reference prediction distribution); MeanScore is
	// the mean predicted score (bin midpoints).
	PredictionPSI float64 `json:"prediction_psi"`
	PredictionKS  float64 `json:"prediction_ks"`
	MeanScore     float64 `json:"mean_score"`
	// LatencyP50Ms and LatencyP99Ms are estimated from the histogram.
	LatencyP50Ms float64 `json:"latency_p50_ms"`
	LatencyP99Ms float64 `json:"latency_p99_ms"`
	// Calibration is the observed positive rate per predicted-probability
	// decile (binary models; -1 where a decile has no labels).
	Calibration []float64 `json:"calibration,omitempty"`
	// Shadow, on the figures of a version scored in shadow (a rollout's
	// shadow stage), compares it with the champions that served the same
	// requests; the served-version figures above are then empty.
	Shadow *ShadowFigures `json:"shadow,omitempty"`
}

// FeatureDrift is one feature's distance from its reference.
type FeatureDrift struct {
	Name string  `json:"name"`
	Rows uint64  `json:"rows"`
	PSI  float64 `json:"psi"`
	KS   float64 `json:"ks"`
}
