package retrain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// evalBatch is how many held-out rows one run scores.
const evalBatch = 256

// evaluate scores the candidate and the parent on the same held-out rows
// in the control plane's onnxruntime. A row's predicted class is read as
// the agents' monitoring reads it: the label output when the manifest
// names one, else 1 for a single probability >= 0.5, else the argmax of
// the scores; it is correct when it equals the row's label. It stops when
// ctx ends: between batches, and within a run (onnxruntime's terminate
// flag).
func (s *Service) evaluate(ctx context.Context, cand []byte, candMeta *efpb.Manifest, parent []byte, parentMan *efpb.Manifest, rows []labelledRow) (*api.Evaluation, error) {
	if s.opts.Runtime == nil {
		return nil, errors.New("onnxruntime is not loaded in this control plane")
	}
	desc, err := s.opts.Runtime.Describe(cand)
	if err != nil {
		return nil, fmt.Errorf("the candidate is not a loadable ONNX model: %w", err)
	}
	if err := desc.Err(); err != nil {
		return nil, fmt.Errorf("the candidate cannot be served: %w", err)
	}
	ins, outs := desc.Specs()
	candSpec := &efpb.Manifest{Inputs: ins, Outputs: outs, ScoreOutput: candMeta.GetScoreOutput(), LabelOutput: candMeta.GetLabelOutput()}
	c, err := s.score(ctx, cand, candSpec, rows)
	if err != nil {
		return nil, fmt.Errorf("candidate: %w", err)
	}
	p, err := s.score(ctx, parent, parentMan, rows)
	if err != nil {
		return nil, fmt.Errorf("current version: %w", err)
	}
	return &api.Evaluation{Rows: len(rows), Candidate: c, Parent: p}, nil
}

// score runs model (described by m's inputs, outputs, score and label
// outputs) on rows and returns its figures, class 1 positive.
func (s *Service) score(ctx context.Context, model []byte, m *efpb.Manifest, rows []labelledRow) (api.EvaluationScore, error) {
	var sc api.EvaluationScore
	outs := m.GetOutputs()
	if len(outs) == 0 {
		return sc, errors.New("the model has no outputs")
	}
	scoreName := m.GetScoreOutput()
	if scoreName == "" {
		scoreName = outs[0].GetName()
	}
	names := []string{scoreName}
	if l := m.GetLabelOutput(); l != "" && l != scoreName {
		names = append(names, l)
	}
	var inNames []string
	for _, in := range m.GetInputs() {
		inNames = append(inNames, in.GetName())
	}
	sess, err := s.opts.Runtime.Load(model, inNames, names)
	if err != nil {
		return sc, fmt.Errorf("load: %w", err)
	}
	defer sess.Close()
	var tp, fp, fn, tn int
	for start := 0; start < len(rows); start += evalBatch {
		batch := rows[start:min(start+evalBatch, len(rows))]
		inputs, err := tensors(m.GetInputs(), batch)
		if err != nil {
			return sc, err
		}
		out, err := sess.RunContext(ctx, inputs)
		if err != nil {
			return sc, fmt.Errorf("run: %w", err)
		}
		for i, r := range batch {
			class, err := predicted(out, len(names) > 1, i, len(batch))
			if err != nil {
				return sc, err
			}
			want := *r.Label
			switch {
			case class == want && want == 1:
				tp++
			case class == want:
				tn++
			case class == 1:
				fp++
			default:
				fn++
			}
		}
	}
	n := tp + tn + fp + fn
	if n > 0 {
		sc.Accuracy = float64(tp+tn) / float64(n)
	}
	if tp+fp > 0 {
		sc.Precision = float64(tp) / float64(tp+fp)
	}
	if tp+fn > 0 {
		sc.Recall = float64(tp) / float64(tp+fn)
	}
	if sc.Precision+sc.Recall > 0 {
		sc.F1 = 2 * sc.Precision * sc.Recall / (sc.Precision + sc.Recall)
	}
	return sc, nil
}

// predicted is row i's class of rows: from the label output (out[1]) when
// hasLabel, else from the scores (out[0]).
func predicted(out []tensor.Tensor, hasLabel bool, i, rows int) (int64, error) {
	if hasLabel {
		l := &out[1]
		if l.Len() != rows {
			return 0, fmt.Errorf("label output %q has %d values for %d rows", l.Name, l.Len(), rows)
		}
		v, ok := l.Float64(i)
		if !ok {
			return 0, fmt.Errorf("label output %q is %s; evaluation compares numeric labels", l.Name, l.DT())
		}
		return int64(v), nil
	}
	sc := &out[0]
	if sc.Len() == 0 || sc.Len()%rows != 0 {
		return 0, fmt.Errorf("score output %q has %d values for %d rows", sc.Name, sc.Len(), rows)
	}
	width := sc.Len() / rows
	best, bestV := 0, 0.0
	for k := range width {
		v, ok := sc.Float64(i*width + k)
		if !ok {
			return 0, fmt.Errorf("score output %q is %s, not numeric", sc.Name, sc.DT())
		}
		if k == 0 || v > bestV {
			best, bestV = k, v
		}
	}
	if width == 1 {
		if bestV >= 0.5 {
			return 1, nil
		}
		return 0, nil
	}
	return int64(best), nil
}

// tensors builds one tensor per input of rows' captured values, rows
// stacked along the first (batch) dimension, through the inference
// route's own decoding (oip.DecodeInputs): every datatype the agent
// serves is fed as the agent would take it.
func tensors(specs []*efpb.TensorSpec, rows []labelledRow) ([]tensor.Tensor, error) {
	req := &oip.InferRequest{}
	for _, spec := range specs {
		if len(spec.GetShape()) == 0 {
			return nil, fmt.Errorf("input %q is rank 0; evaluation batches rows along the first dimension", spec.GetName())
		}
		if d := spec.GetShape()[0]; d > 0 && d != int64(len(rows)) && len(rows) > 1 {
			return nil, fmt.Errorf("input %q has a fixed batch of %d; evaluation needs a dynamic first dimension", spec.GetName(), d)
		}
		shape := append([]int64{int64(len(rows))}, spec.GetShape()[1:]...)
		width, dynamic := int64(1), -1
		for k, d := range shape[1:] {
			if d < 0 {
				if dynamic >= 0 {
					return nil, fmt.Errorf("input %q has more than one dynamic inner dimension; evaluation cannot tell a row's shape", spec.GetName())
				}
				dynamic = k + 1
				continue
			}
			width *= d
		}
		if dynamic >= 0 { // a dynamic inner dimension: take it from the first row
			n := int64(len(rows[0].Inputs[spec.GetName()]))
			if width == 0 || n%width != 0 {
				return nil, fmt.Errorf("input %q: row %s/%d has %d values, not a multiple of the fixed dimensions", spec.GetName(), rows[0].InferenceID, rows[0].Row, n)
			}
			shape[dynamic], width = n/width, n
		}
		flat := make([]api.Value, 0, int64(len(rows))*width)
		for _, r := range rows {
			vals := r.Inputs[spec.GetName()]
			if int64(len(vals)) != width {
				return nil, fmt.Errorf("row %s/%d has %d values of input %q, which takes %d per row (was it dropped or hashed by the capture policy?)",
					r.InferenceID, r.Row, len(vals), spec.GetName(), width)
			}
			flat = append(flat, vals...)
		}
		data, err := json.Marshal(flat)
		if err != nil {
			return nil, fmt.Errorf("input %q: %w", spec.GetName(), err)
		}
		dt := spec.GetDatatype()
		if dt == "" {
			dt = string(tensor.FP32)
		}
		req.Inputs = append(req.Inputs, oip.RequestInput{Name: spec.GetName(), Shape: shape, Datatype: dt, Data: oip.RawData(data)})
	}
	ts, err := oip.DecodeInputs(req, "evaluation", specs, infer.MaxTensorElements)
	if err != nil {
		return nil, fmt.Errorf("the held-out rows do not fit the model's inputs: %w", err)
	}
	return ts, nil
}
