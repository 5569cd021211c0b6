package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/oip"
)

// retrainLoop is the MLOps loop on the running fleet: devices capture
// labelled field data, the fraud pattern changes at plant-2 only, the
// accuracy alert of that site starts a retrain job, whose candidate is
// scored in shadow at plant-2, promoted, and explained by its lineage.
func (r *run) retrainLoop(ctx context.Context) error {
	var drifted, normal []device
	for _, d := range r.devices {
		if d.site == "plant-2" {
			drifted = append(drifted, d)
		} else {
			normal = append(normal, d)
		}
	}
	if len(drifted) == 0 {
		return errors.New("demo: no device at plant-2")
	}

	r.step("The MLOps loop: devices capture field data; a retrain policy answers accuracy alerts")
	if err := r.cli(ctx, "data", "policy", "fraud", "--sample-rate", "1"); err != nil {
		return err
	}
	margin := 0.0
	tmpl := api.RolloutSpec{Selector: "fleet=demo", AutoPromote: true, Bake: api.Duration(time.Second),
		Gates:  api.Gates{MinLabelled: 200, ShadowMargin: &margin},
		Stages: []api.RolloutStage{{Name: "shadow", Percent: 100, Shadow: true}, {Name: "serve", Percent: 100}}}
	b, err := json.Marshal(tmpl)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := os.WriteFile(r.path("retrain-rollout.json"), b, 0o600); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	r.say("   rollout template (retrain-rollout.json; a site-scoped job narrows it to its site): %s", b)
	if err := r.cli(ctx, "retrain", "policy", "fraud", "--trainer", api.TrainerBuiltinFraud, "--trigger", "low_accuracy",
		"--window", "1h", "--site-scope", "alert", "--min-labelled", "300", "--margin", "0.05", "--rollout-file", r.path("retrain-rollout.json")); err != nil {
		return err
	}

	r.step("At plant-2 the fraud pattern changes (card testing); labels come back from investigators")
	cardTesting, err := fraud.NewGenerator(42, fraud.Params{Pattern: fraud.PatternCardTesting})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	classic, err := fraud.NewGenerator(43, fraud.Params{})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	before, err := r.labelled(ctx, drifted, cardTesting, 500)
	if err != nil {
		return err
	}
	elsewhere, err := r.labelled(ctx, normal, classic, 200)
	if err != nil {
		return err
	}
	r.say("   plant-2: %d labelled transactions, accuracy of %s %.3f", before.rows, before.version, before.accuracy())
	r.say("   plant-1: %d labelled transactions, accuracy of %s %.3f", elsewhere.rows, elsewhere.version, elsewhere.accuracy())

	r.step("Monitoring raises low_accuracy for plant-2 only; the alert starts a retrain job")
	// Two waits, each with its own budget: the alert that starts a job,
	// then the job (training and evaluation take CPU; on a busy machine
	// the second wait is the longer one).
	var job *api.RetrainJob
	poll := func() bool {
		jobs, err := r.cp.RetrainJobs(ctx, "fraud")
		if err != nil || len(jobs) == 0 {
			return false
		}
		job = jobs[0]
		return true
	}
	if err := waitFor(ctx, 90*time.Second, nil, poll); err != nil {
		return fmt.Errorf("demo: no retrain job was started (no low_accuracy alert for plant-2 yet?; see %s): %w", r.path("controlplane.log"), err)
	}
	if err := waitFor(ctx, 3*time.Minute, nil, func() bool { return poll() && job.State.Terminal() }); err != nil {
		return fmt.Errorf("demo: retrain job %s did not end, it was %s %s (see %s): %w", job.ID, job.State, job.Reason, r.path("controlplane.log"), err)
	}
	if err := r.cli(ctx, "audit", "--action", "monitor.", "--limit", "5"); err != nil {
		return err
	}
	if err := r.cli(ctx, "retrain", "show", job.ID); err != nil {
		return err
	}
	if job.State != api.RetrainRollingOut {
		return fmt.Errorf("demo: retrain job %s ended %s: %s", job.ID, job.State, job.Reason)
	}

	r.step(fmt.Sprintf("%s runs in shadow at plant-2 while %s answers; it beats the champion and is promoted", job.Candidate, job.Parent))
	var ro *api.Rollout
	if err := waitFor(ctx, 2*time.Minute, nil, func() bool {
		if _, err := r.labelled(ctx, drifted, cardTesting, 40); err != nil {
			return false
		}
		if ro, err = r.cp.Rollout(ctx, job.Rollout, false); err != nil {
			return false
		}
		return ro.State.Terminal()
	}); err != nil {
		return fmt.Errorf("demo: rollout %s did not end: %w", job.Rollout, err)
	}
	if err := r.cli(ctx, "rollout", "get", job.Rollout); err != nil {
		return err
	}
	if ro.State != api.RolloutCompleted {
		return fmt.Errorf("demo: rollout %s ended %s: %s", ro.ID, ro.State, ro.Reason)
	}
	after, err := r.labelled(ctx, drifted, cardTesting, 500)
	if err != nil {
		return err
	}
	r.say("   plant-2 accuracy on new traffic: %s %.3f → %s %.3f", before.version, before.accuracy(), after.version, after.accuracy())
	if after.version != job.Candidate || after.accuracy() <= before.accuracy() {
		return fmt.Errorf("demo: plant-2 did not recover: %s %.3f, then %s %.3f", before.version, before.accuracy(), after.version, after.accuracy())
	}

	r.step("Why " + job.Candidate + " exists")
	return r.cli(ctx, "model", "lineage", "fraud")
}

// tally counts a version's correct answers on labelled traffic.
type tally struct {
	version       string
	rows, correct int
}

func (t tally) accuracy() float64 {
	if t.rows == 0 {
		return 0
	}
	return float64(t.correct) / float64(t.rows)
}

// labelled sends n transactions of g to each device in batches of 20,
// gives the agents their true labels (feedback), and counts how often
// the served answer was right.
func (r *run) labelled(ctx context.Context, devs []device, g *fraud.Generator, n int) (tally, error) {
	var t tally
	for _, d := range devs {
		c := &oip.Client{BaseURL: d.inference}
		for sent := 0; sent < n; sent += 20 {
			flat := make([]float32, 0, 20*fraud.NumFeatures)
			truth := make([]int64, 20)
			for i := range truth {
				row, isFraud := g.Next()
				flat = append(flat, row[:]...)
				if isFraud {
					truth[i] = 1
				}
			}
			in, err := oip.NewFP32Input(fraud.InputName, []int64{20, fraud.NumFeatures}, flat)
			if err != nil {
				return t, fmt.Errorf("demo: %w", err)
			}
			resp, err := c.Infer(ctx, "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{in}})
			if err != nil {
				return t, fmt.Errorf("demo: inference on %s: %w", d.id, err)
			}
			probs, err := resp.Outputs[0].FP32()
			if err != nil || len(probs) != 20 {
				return t, fmt.Errorf("demo: inference on %s: %d outputs (%v)", d.id, len(probs), err)
			}
			fb := &oip.FeedbackRequest{}
			for i, y := range truth {
				if (probs[i] >= 0.5) == (y == 1) {
					t.correct++
				}
				fb.Labels = append(fb.Labels, oip.Label{ID: resp.ID, Row: i, Label: &truth[i]})
			}
			t.rows += 20
			t.version = resp.ModelVersion
			if _, err := c.Feedback(ctx, "fraud", fb); err != nil {
				return t, fmt.Errorf("demo: feedback on %s: %w", d.id, err)
			}
		}
	}
	return t, nil
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return fmt.Errorf("demo: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}
