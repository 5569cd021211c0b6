package fraud

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
)

// ErrTraining is wrapped by errors about data a model cannot be trained on.
var ErrTraining = errors.New("cannot train")

// DefaultL2 is the L2 penalty on the standardised coefficients used when
// TrainConfig.L2 is zero.
const DefaultL2 = 1e-3

// Model is a logistic regression over standardised features:
// p = sigmoid(Intercept + sum_j Coef[j] * (x[j]-Mean[j])/Std[j]).
type Model struct {
	Mean      [NumFeatures]float64
	Std       [NumFeatures]float64
	Coef      [NumFeatures]float64
	Intercept float64
}

// Folded returns the model with the standardisation folded in, as the
// float32 weights and bias the ONNX graph carries:
// p = sigmoid(bias + sum_j weights[j] * x[j]).
func (m *Model) Folded() (weights [NumFeatures]float32, bias float32) {
	b := m.Intercept
	for j := range NumFeatures {
		w := m.Coef[j] / m.Std[j]
		weights[j] = float32(w)
		b -= w * m.Mean[j]
	}
	return weights, float32(b)
}

// Predict returns the fraud probability of each row computed exactly as the
// exported ONNX graph does (folded float32 weights), so ONNX Runtime's output
// must match it to within float32 rounding.
func (m *Model) Predict(rows []Row) []float32 {
	w, b := m.Folded()
	out := make([]float32, len(rows))
	for i, r := range rows {
		z := float64(b)
		for j := range NumFeatures {
			z += float64(w[j]) * float64(r[j])
		}
		out[i] = float32(sigmoid(z))
	}
	return out
}

// probability is the float64 model output used for training metrics.
func (m *Model) probability(r *Row) float64 {
	z := m.Intercept
	for j := range NumFeatures {
		z += m.Coef[j] * (float64(r[j]) - m.Mean[j]) / m.Std[j]
	}
	return sigmoid(z)
}

// Train fits a logistic regression to d with Newton's method (IRLS) on
// standardised features and an L2 penalty l2 on the coefficients (not the
// intercept). It is deterministic: the same data gives the same model.
func Train(d *Dataset, l2 float64) (*Model, error) {
	return TrainContext(context.Background(), d, l2)
}

// ctxCheckRows is how many rows a pass over the data handles between two
// looks at the context.
const ctxCheckRows = 4096

// TrainContext is Train that stops when ctx ends (between Newton
// iterations, and every ctxCheckRows rows within one), returning ctx's
// error: a retrain job's cancel or time limit reaches the fit.
func TrainContext(ctx context.Context, d *Dataset, l2 float64) (*Model, error) {
	n := d.Len()
	if n == 0 || len(d.Rows) != len(d.Labels) {
		return nil, fmt.Errorf("fraud: train: %w: %d rows and %d labels", ErrTraining, len(d.Rows), len(d.Labels))
	}
	if !(l2 >= 0) || math.IsInf(l2, 0) {
		return nil, fmt.Errorf("fraud: train: %w: l2 %v is not a non-negative number", ErrInvalidParams, l2)
	}
	pos := d.FraudRate()
	if pos == 0 || pos == 1 {
		return nil, fmt.Errorf("fraud: train: %w: all %d labels are the same class", ErrTraining, n)
	}

	m := &Model{}
	for j := range NumFeatures {
		var sum float64
		for i := range d.Rows {
			sum += float64(d.Rows[i][j])
		}
		mean := sum / float64(n)
		var ss float64
		for i := range d.Rows {
			dv := float64(d.Rows[i][j]) - mean
			ss += dv * dv
		}
		std := math.Sqrt(ss / float64(n))
		if std == 0 || math.IsNaN(std) {
			std = 1 // a constant feature: leave it unscaled, its coefficient goes to 0
		}
		m.Mean[j], m.Std[j] = mean, std
	}

	// Design matrix: standardised features plus a constant 1 for the intercept.
	const k = NumFeatures + 1
	x := make([][k]float64, n)
	y := make([]float64, n)
	for i, r := range d.Rows {
		for j := range NumFeatures {
			x[i][j] = (float64(r[j]) - m.Mean[j]) / m.Std[j]
		}
		x[i][NumFeatures] = 1
		if d.Labels[i] {
			y[i] = 1
		}
	}

	var beta [k]float64
	beta[NumFeatures] = math.Log(pos / (1 - pos))
	loss := penalisedLoss(x, y, &beta, l2)
	for iter := 0; iter < 100; iter++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("fraud: train: %w", err)
		}
		var grad [k]float64
		var hess [k][k]float64
		for i := range x {
			if i%ctxCheckRows == ctxCheckRows-1 && ctx.Err() != nil {
				return nil, fmt.Errorf("fraud: train: %w", ctx.Err())
			}
			p := sigmoid(dot(&x[i], &beta))
			r := p - y[i]
			wt := p * (1 - p)
			for a := range k {
				grad[a] += r * x[i][a]
				for b := 0; b <= a; b++ {
					hess[a][b] += wt * x[i][a] * x[i][b]
				}
			}
		}
		for a := range k {
			grad[a] /= float64(n)
			for b := 0; b <= a; b++ {
				hess[a][b] /= float64(n)
				hess[b][a] = hess[a][b]
			}
			if a < NumFeatures {
				grad[a] += l2 * beta[a]
				hess[a][a] += l2
			}
			hess[a][a] += 1e-12 // keeps the system solvable on separable data
		}
		step, ok := solveSPD(hess, grad)
		if !ok {
			return nil, fmt.Errorf("fraud: train: %w: singular Hessian at iteration %d", ErrTraining, iter)
		}
		// Damped Newton: halve the step until the penalised loss does not rise.
		t := 1.0
		var next [k]float64
		var nextLoss float64
		for {
			for a := range k {
				next[a] = beta[a] - t*step[a]
			}
			nextLoss = penalisedLoss(x, y, &next, l2)
			if nextLoss <= loss || t < 1e-6 {
				break
			}
			t /= 2
		}
		var maxStep float64
		for a := range k {
			maxStep = math.Max(maxStep, math.Abs(next[a]-beta[a]))
		}
		beta, loss = next, nextLoss
		if maxStep < 1e-9 {
			break
		}
	}
	copy(m.Coef[:], beta[:NumFeatures])
	m.Intercept = beta[NumFeatures]
	return m, nil
}

func dot(a, b *[NumFeatures + 1]float64) float64 {
	var s float64
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

func penalisedLoss(x [][NumFeatures + 1]float64, y []float64, beta *[NumFeatures + 1]float64, l2 float64) float64 {
	var loss float64
	for i := range x {
		loss += logLoss(dot(&x[i], beta), y[i])
	}
	loss /= float64(len(x))
	for j := range NumFeatures {
		loss += l2 / 2 * beta[j] * beta[j]
	}
	return loss
}

// logLoss is the cross-entropy of a logit z against label y, computed stably.
func logLoss(z, y float64) float64 {
	// log(1+exp(z)) - y*z
	var softplus float64
	if z > 0 {
		softplus = z + math.Log1p(math.Exp(-z))
	} else {
		softplus = math.Log1p(math.Exp(z))
	}
	return softplus - y*z
}

// solveSPD solves h x = g by Cholesky decomposition; ok is false when h is
// not positive definite.
func solveSPD(h [NumFeatures + 1][NumFeatures + 1]float64, g [NumFeatures + 1]float64) (x [NumFeatures + 1]float64, ok bool) {
	const k = NumFeatures + 1
	var l [k][k]float64
	for i := range k {
		for j := 0; j <= i; j++ {
			s := h[i][j]
			for p := range j {
				s -= l[i][p] * l[j][p]
			}
			if i == j {
				if !(s > 0) {
					return x, false
				}
				l[i][i] = math.Sqrt(s)
			} else {
				l[i][j] = s / l[j][j]
			}
		}
	}
	var z [k]float64
	for i := range k {
		s := g[i]
		for p := range i {
			s -= l[i][p] * z[p]
		}
		z[i] = s / l[i][i]
	}
	for i := k - 1; i >= 0; i-- {
		s := z[i]
		for p := i + 1; p < k; p++ {
			s -= l[p][i] * x[p]
		}
		x[i] = s / l[i][i]
	}
	return x, true
}

// Metrics are a model's scores on a labelled data set, with fraud as the
// positive class and a 0.5 decision threshold.
type Metrics struct {
	Rows      int
	Accuracy  float64
	Precision float64 // 0 when nothing is predicted fraud
	Recall    float64 // 0 when there is no fraud
	F1        float64
	AUC       float64 // ROC AUC; 0.5 when only one class is present
	LogLoss   float64
	// BaselineAccuracy is the accuracy of always predicting the majority class.
	BaselineAccuracy float64
}

// Evaluate scores m on d.
func (m *Model) Evaluate(d *Dataset) Metrics {
	n := d.Len()
	met := Metrics{Rows: n}
	if n == 0 {
		return met
	}
	scores := make([]float64, n)
	var tp, fp, fn, tn int
	for i := range n {
		p := m.probability(&d.Rows[i])
		scores[i] = p
		pred := p >= 0.5
		switch {
		case pred && d.Labels[i]:
			tp++
		case pred && !d.Labels[i]:
			fp++
		case !pred && d.Labels[i]:
			fn++
		default:
			tn++
		}
		y := 0.0
		if d.Labels[i] {
			y = 1
		}
		p = math.Min(math.Max(p, 1e-15), 1-1e-15)
		met.LogLoss -= y*math.Log(p) + (1-y)*math.Log(1-p)
	}
	met.LogLoss /= float64(n)
	met.Accuracy = float64(tp+tn) / float64(n)
	if tp+fp > 0 {
		met.Precision = float64(tp) / float64(tp+fp)
	}
	if tp+fn > 0 {
		met.Recall = float64(tp) / float64(tp+fn)
	}
	if met.Precision+met.Recall > 0 {
		met.F1 = 2 * met.Precision * met.Recall / (met.Precision + met.Recall)
	}
	positives := tp + fn
	met.BaselineAccuracy = float64(max(positives, n-positives)) / float64(n)
	met.AUC = auc(scores, d.Labels[:n])
	return met
}

// auc is the ROC AUC by the rank-sum (Mann-Whitney) formula with tied scores
// given their average rank.
func auc(scores []float64, labels []bool) float64 {
	n := len(scores)
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return scores[idx[a]] < scores[idx[b]] })
	var rankSumPos float64
	var nPos int
	for i := 0; i < n; {
		j := i
		for j+1 < n && scores[idx[j+1]] == scores[idx[i]] {
			j++
		}
		avgRank := float64(i+j)/2 + 1
		for p := i; p <= j; p++ {
			if labels[idx[p]] {
				rankSumPos += avgRank
				nPos++
			}
		}
		i = j + 1
	}
	nNeg := n - nPos
	if nPos == 0 || nNeg == 0 {
		return 0.5
	}
	return (rankSumPos - float64(nPos)*float64(nPos+1)/2) / (float64(nPos) * float64(nNeg))
}
