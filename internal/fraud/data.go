// Package fraud is edgefleet's worked example: synthetic card transactions
// with a hidden, drift-able fraud rule, a logistic-regression trainer, and
// the export of a trained model as an ONNX artifact with the manifest
// metadata agents check. Imported by controlplane/cli (model train),
// controlplane/demo (the MLOps loop's traffic), controlplane/retrain (the
// builtin trainer), fleet-sim/... and internal/fleettest.
package fraud

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
)

// NumFeatures is the number of model input features.
const NumFeatures = 7

// Indexes of the features in a Row, in model input order.
const (
	FeatAmount       = iota // transaction amount in currency units, log-normal
	FeatHour                // local hour of day, 0-23
	FeatMerchantRisk        // merchant risk score, 0..1
	FeatDistanceKm          // distance from the card holder's home, heavy tailed
	FeatVelocity1h          // transactions on this card in the last hour
	FeatForeign             // 1 if the merchant is abroad, else 0
	FeatCardAgeDays         // days since the card was issued
)

// FeatureNames returns the feature names in model input order (a new slice
// on every call).
func FeatureNames() []string {
	return []string{"amount", "hour", "merchant_risk", "distance_km", "velocity_1h", "foreign", "card_age_days"}
}

// Row is one transaction's features in model input order.
type Row [NumFeatures]float32

// Pattern selects which features drive fraud in the hidden labelling rule.
// Switching the pattern is concept drift: feature distributions stay the same
// but a model trained on the old pattern gets worse.
type Pattern int

const (
	// PatternClassic: large amounts at risky merchants, far from home,
	// abroad, at night. The default.
	PatternClassic Pattern = iota
	// PatternCardTesting: bursts of small transactions on new cards.
	PatternCardTesting
)

// String returns the pattern's name.
func (p Pattern) String() string {
	switch p {
	case PatternClassic:
		return "classic"
	case PatternCardTesting:
		return "card-testing"
	default:
		return fmt.Sprintf("pattern(%d)", int(p))
	}
}

// Defaults for zero fields of Params.
const (
	DefaultFraudRate   = 0.15
	DefaultLabelNoise  = 0.02
	DefaultForeignRate = 0.06
)

// ErrInvalidParams is wrapped by errors about bad generator parameters or
// training configuration.
var ErrInvalidParams = errors.New("invalid parameters")

// Params shape the synthetic data. The zero value is the reference
// distribution; the shift knobs exist so tests and fleet-sim can inject
// covariate drift (AmountScale, HourShift, DistanceScale, ForeignRate) and
// concept drift (Pattern).
type Params struct {
	// FraudRate is the expected fraction of fraud labels before label noise,
	// in (0, 1). 0 means DefaultFraudRate.
	FraudRate float64
	// LabelNoise is the probability that a label is flipped, in [0, 0.5).
	// 0 means DefaultLabelNoise; a negative value means no noise.
	LabelNoise float64
	// AmountScale multiplies every amount. 0 means 1.
	AmountScale float64
	// HourShift moves every hour by this many hours (mod 24). 0 is no shift.
	HourShift int
	// DistanceScale multiplies every distance. 0 means 1.
	DistanceScale float64
	// ForeignRate is the fraction of foreign transactions, in (0, 1].
	// 0 means DefaultForeignRate.
	ForeignRate float64
	// Pattern selects the hidden fraud rule.
	Pattern Pattern
}

// withDefaults returns p with zero fields replaced by their defaults, or an
// error naming the first bad field.
func (p Params) withDefaults() (Params, error) {
	if p.FraudRate == 0 {
		p.FraudRate = DefaultFraudRate
	}
	switch {
	case p.LabelNoise == 0:
		p.LabelNoise = DefaultLabelNoise
	case p.LabelNoise < 0:
		p.LabelNoise = 0
	}
	if p.AmountScale == 0 {
		p.AmountScale = 1
	}
	if p.DistanceScale == 0 {
		p.DistanceScale = 1
	}
	if p.ForeignRate == 0 {
		p.ForeignRate = DefaultForeignRate
	}
	p.HourShift = ((p.HourShift % 24) + 24) % 24
	switch {
	case !(p.FraudRate > 0 && p.FraudRate < 1):
		return p, fmt.Errorf("%w: fraud rate %v is outside (0, 1)", ErrInvalidParams, p.FraudRate)
	case !(p.LabelNoise < 0.5):
		return p, fmt.Errorf("%w: label noise %v is not below 0.5", ErrInvalidParams, p.LabelNoise)
	case !(p.AmountScale > 0) || math.IsInf(p.AmountScale, 0):
		return p, fmt.Errorf("%w: amount scale %v is not a positive number", ErrInvalidParams, p.AmountScale)
	case !(p.DistanceScale > 0) || math.IsInf(p.DistanceScale, 0):
		return p, fmt.Errorf("%w: distance scale %v is not a positive number", ErrInvalidParams, p.DistanceScale)
	case !(p.ForeignRate > 0 && p.ForeignRate <= 1):
		return p, fmt.Errorf("%w: foreign rate %v is outside (0, 1]", ErrInvalidParams, p.ForeignRate)
	case p.Pattern != PatternClassic && p.Pattern != PatternCardTesting:
		return p, fmt.Errorf("%w: unknown pattern %d (want %d classic or %d card-testing)",
			ErrInvalidParams, int(p.Pattern), int(PatternClassic), int(PatternCardTesting))
	}
	return p, nil
}

// Constants of the reference distribution and of the hidden rule.
const (
	medianAmount     = 45.0
	amountSigma      = 1.0
	medianDistanceKm = 8.0
	distanceSigma    = 1.3
	meanVelocity     = 0.8
	meanCardAgeDays  = 600.0
	maxCardAgeDays   = 3650.0
	dayShare         = 0.85 // share of transactions around the afternoon peak
	ruleSharpness    = 3.0  // scales the hidden score: higher is less ambiguous
	calibrationRows  = 8192
)

// Generator produces labelled synthetic transactions. The same seed and
// Params give the same stream. A Generator is not safe for concurrent use.
type Generator struct {
	p    Params
	bias float64 // intercept of the hidden rule, calibrated to FraudRate
	rng  *rand.Rand
}

// NewGenerator returns a generator for seed and p (zero fields take their
// defaults). It calibrates the hidden rule's intercept on a separate sample so
// that the expected fraud rate is p.FraudRate under the shifted features too.
func NewGenerator(seed uint64, p Params) (*Generator, error) {
	p, err := p.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("fraud: new generator: %w", err)
	}
	g := &Generator{p: p}
	g.bias = g.calibrate(rand.New(rand.NewPCG(seed, 0xca11b2a7e)))
	g.rng = rand.New(rand.NewPCG(seed, 0x7a45ac7))
	return g, nil
}

// Params returns the generator's parameters with defaults applied.
func (g *Generator) Params() Params { return g.p }

// Next returns the next transaction and whether it is labelled fraud.
func (g *Generator) Next() (Row, bool) {
	r := g.features(g.rng)
	fraud := g.rng.Float64() < sigmoid(g.score(r)+g.bias)
	if g.rng.Float64() < g.p.LabelNoise {
		fraud = !fraud
	}
	return r, fraud
}

// Generate returns the next n transactions.
func (g *Generator) Generate(n int) *Dataset {
	d := &Dataset{Rows: make([]Row, n), Labels: make([]bool, n)}
	for i := range n {
		d.Rows[i], d.Labels[i] = g.Next()
	}
	return d
}

// FraudProbability returns the hidden rule's probability that r is fraud,
// before label noise: the best any model could learn.
func (g *Generator) FraudProbability(r Row) float64 {
	return sigmoid(g.score(r) + g.bias)
}

func (g *Generator) features(rng *rand.Rand) Row {
	var r Row
	amount := medianAmount * math.Exp(amountSigma*rng.NormFloat64()) * g.p.AmountScale
	r[FeatAmount] = float32(math.Max(0.5, math.Round(amount*100)/100))

	var hour float64
	if rng.Float64() < dayShare {
		hour = 14 + 4*rng.NormFloat64()
	} else {
		hour = 24 * rng.Float64()
	}
	h := (int(math.Floor(hour))%24 + 24) % 24
	r[FeatHour] = float32((h + g.p.HourShift) % 24)

	u := rng.Float64()
	r[FeatMerchantRisk] = float32(u * u)

	dist := medianDistanceKm * math.Exp(distanceSigma*rng.NormFloat64()) * g.p.DistanceScale
	r[FeatDistanceKm] = float32(math.Round(dist*10) / 10)

	r[FeatVelocity1h] = float32(poisson(rng, meanVelocity))

	if rng.Float64() < g.p.ForeignRate {
		r[FeatForeign] = 1
	}

	age := math.Min(maxCardAgeDays, math.Floor(rng.ExpFloat64()*meanCardAgeDays)+1)
	r[FeatCardAgeDays] = float32(age)
	return r
}

// score is the hidden rule's logit without the intercept. Each term is
// roughly centred on the reference distribution; amount and distance enter
// linearly up to a cap (so a linear model can learn most of the rule), card
// age logarithmically (so it cannot learn all of it).
func (g *Generator) score(r Row) float64 {
	amount := math.Min(float64(r[FeatAmount])/medianAmount, 8)/2 - 0.5
	risk := float64(r[FeatMerchantRisk]) - 1.0/3
	dist := math.Min(float64(r[FeatDistanceKm])/medianDistanceKm, 12)/3 - 0.3
	vel := float64(r[FeatVelocity1h]) - meanVelocity
	foreign := float64(r[FeatForeign])
	age := math.Log(float64(r[FeatCardAgeDays]) / meanCardAgeDays)
	var night float64
	if r[FeatHour] < 6 {
		night = 1
	}
	var s float64
	switch g.p.Pattern {
	case PatternCardTesting:
		s = 1.3*vel - 1.1*amount - 0.9*age + 1.5*risk + 0.5*foreign
	default:
		s = 1.2*amount + 4.5*risk + 0.8*dist + 2.0*foreign + 1.2*night - 0.2*age
	}
	return ruleSharpness * s
}

// calibrate finds the intercept that makes the mean hidden probability over
// a calibration sample equal the fraud rate (bisection; the mean is monotone
// in the intercept).
func (g *Generator) calibrate(rng *rand.Rand) float64 {
	scores := make([]float64, calibrationRows)
	for i := range scores {
		scores[i] = g.score(g.features(rng))
	}
	lo, hi := -60.0, 60.0
	for range 100 {
		mid := (lo + hi) / 2
		var sum float64
		for _, s := range scores {
			sum += sigmoid(s + mid)
		}
		if sum/float64(len(scores)) < g.p.FraudRate {
			lo = mid
		} else {
			hi = mid
		}
	}
	return (lo + hi) / 2
}

// poisson draws from a Poisson distribution with a small mean (Knuth).
func poisson(rng *rand.Rand, mean float64) int {
	limit := math.Exp(-mean)
	k := 0
	for p := rng.Float64(); p > limit; p *= rng.Float64() {
		k++
	}
	return k
}

func sigmoid(z float64) float64 {
	if z >= 0 {
		return 1 / (1 + math.Exp(-z))
	}
	e := math.Exp(z)
	return e / (1 + e)
}

// Dataset is a list of transactions and their labels (true = fraud).
// Rows and Labels have the same length; functions given a Dataset where they
// differ use only the rows that have a label.
type Dataset struct {
	Rows   []Row
	Labels []bool
}

// Len returns the number of labelled rows.
func (d *Dataset) Len() int { return min(len(d.Rows), len(d.Labels)) }

// Slice returns rows [from, to) sharing d's storage; like slicing, it
// panics when the bounds are out of range.
func (d *Dataset) Slice(from, to int) *Dataset {
	return &Dataset{Rows: d.Rows[from:to], Labels: d.Labels[from:to]}
}

// FraudRate returns the fraction of rows labelled fraud.
func (d *Dataset) FraudRate() float64 {
	if d.Len() == 0 {
		return 0
	}
	n := 0
	for _, y := range d.Labels[:d.Len()] {
		if y {
			n++
		}
	}
	return float64(n) / float64(d.Len())
}

// SHA256 returns the hex sha256 of the rows in order, each written as its
// features as little-endian float32 followed by one label byte (1 = fraud).
func (d *Dataset) SHA256() string {
	h := sha256.New()
	var buf [NumFeatures*4 + 1]byte
	for i, r := range d.Rows[:d.Len()] {
		for j, v := range r {
			binary.LittleEndian.PutUint32(buf[4*j:], math.Float32bits(v))
		}
		buf[NumFeatures*4] = 0
		if d.Labels[i] {
			buf[NumFeatures*4] = 1
		}
		h.Write(buf[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}
