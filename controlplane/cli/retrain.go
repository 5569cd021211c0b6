package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// Retraining and lineage (issue 13).

func (a *app) retrainCmd() *cobra.Command {
	var (
		reason string
		wait   time.Duration
	)
	c := &cobra.Command{
		Use:   "retrain NAME | retrain <command>",
		Short: "retrain a model on its field data; retrain policies and jobs",
		Long: `edgefleet retrain NAME queues a retrain job of model NAME with its policy: it builds a
dataset of the captured rows of the policy's window, refuses one that fails validation,
trains (the builtin fraud trainer or an external command the control plane was started
with), compares the candidate with the current version on held-out rows and, only if it is
better by the policy's margin, publishes it as the next version (signed, with its lineage)
and starts a rollout from the policy's template. Otherwise the job ends rejected and says
why. Alerts named in the policy's triggers, and its schedule, start jobs the same way.`,
		Example: `  edgefleet retrain policy fraud --trainer builtin:fraud --trigger low_accuracy --margin 0.02 \
      --rollout-file rollout.json
  edgefleet retrain fraud --wait 5m
  edgefleet retrain jobs
  edgefleet retrain show j-6753a1c0-0a1b2c3d
  edgefleet model lineage fraud`,
		Args: oneArg("model NAME (or a subcommand: policy, jobs, show, cancel)"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			j, err := c.Retrain(cmd.Context(), pos[0], api.RetrainRequest{Reason: reason})
			if err != nil {
				return fmt.Errorf("retrain %s: %w", pos[0], err)
			}
			fmt.Fprintf(a.stdout, "retrain job %s of %s queued (parent %s)\n", j.ID, j.Model, orNone(j.Parent))
			if wait <= 0 {
				return nil
			}
			deadline := time.Now().Add(wait)
			for !j.State.Terminal() {
				if time.Now().After(deadline) {
					return fmt.Errorf("retrain job %s is still %s after %v (edgefleet retrain show %s)", j.ID, j.State, wait, j.ID)
				}
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(500 * time.Millisecond):
				}
				if j, err = c.RetrainJob(cmd.Context(), j.ID); err != nil {
					return err
				}
			}
			printJob(a.stdout, j)
			if j.State == api.RetrainFailed {
				return fmt.Errorf("retrain job %s failed: %s", j.ID, j.Reason)
			}
			return nil
		}),
	}
	c.Flags().StringVar(&reason, "reason", "", "`TEXT` recorded with the job")
	c.Flags().DurationVar(&wait, "wait", 0, "wait up to `DURATION` for the job to end and print it")
	c.AddCommand(a.retrainPolicyCmd(), a.retrainJobsCmd(), a.retrainShowCmd(), a.retrainCancelCmd())
	return c
}

func (a *app) retrainPolicyCmd() *cobra.Command {
	var (
		trainer, metric, rolloutFile, scope   string
		cronSpec, baseDataset                 string
		triggers, params                      stringList
		window, schedule, timeLimit, cooldown time.Duration
		holdout, margin                       optFloat
		minLabelled                           int
	)
	c := &cobra.Command{
		Use:   "policy NAME [flags]",
		Short: "show or set a model's retrain policy",
		Long: `Without flags, shows model NAME's retrain policy. With flags, sets it (the flags given
replace the whole policy; --trainer is required).

--trainer is builtin:fraud (logistic regression on the fraud model's features) or
command:NAME, an external trainer the control plane was started with
(edgefleet serve --trainer NAME=PROGRAM). An external trainer is run as
PROGRAM --data DIR --out DIR: DIR holds train.jsonl (the training rows as edgefleet data
export writes them; the held-out rows it is judged on are not given), schema.json,
manifest.json (the current version's) and params.json; it writes OUT/model.onnx and optionally OUT/metadata.json (a manifest JSON
document with the fields edgefleet model push --meta takes). Its exit status, stdout and
stderr are kept in the job; past --time-limit its process group is killed.

--rollout-file is a JSON rollout spec without model and version (the body of
POST /api/v1/rollouts), the template of the published candidate's rollout; shadow stages
work as in edgefleet rollout create.`,
		Example: `  edgefleet retrain policy fraud
  edgefleet retrain policy fraud --trainer builtin:fraud --trigger low_accuracy --trigger accuracy_drop \
      --window 24h --holdout 0.25 --margin 0.02 --site-scope alert --rollout-file rollout.json
  edgefleet retrain policy fraud --trainer command:xgb --param rounds=200 --time-limit 20m
  edgefleet retrain policy fraud --trainer builtin:fraud --cron @daily`,
		Args: oneArg("model NAME"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			set := cmd.Flags().NFlag() > 0 && trainer != ""
			if !set && cmd.Flags().NFlag() > 0 {
				for _, f := range []string{"trigger", "param", "window", "schedule", "cron", "base-dataset", "time-limit", "cooldown", "holdout", "margin", "min-labelled", "metric", "rollout-file", "site-scope"} {
					if cmd.Flags().Changed(f) {
						return usagef("setting a retrain policy needs --trainer (builtin:fraud or command:NAME)")
					}
				}
			}
			var st api.RetrainStatus
			if set {
				p := api.RetrainPolicy{Trainer: trainer, Triggers: triggers, Window: api.Duration(window), Schedule: api.Duration(schedule), Cron: cronSpec, BaseDataset: baseDataset,
					TimeLimit: api.Duration(timeLimit), Cooldown: api.Duration(cooldown), MinLabelled: minLabelled, Metric: metric, Margin: margin.v,
					SiteScope: scope}
				if holdout.v != nil {
					p.HoldoutFraction = *holdout.v
				}
				for _, kv := range params {
					k, v, ok := strings.Cut(kv, "=")
					if !ok || k == "" {
						return usagef("--param %q: want KEY=VALUE", kv)
					}
					if p.Params == nil {
						p.Params = map[string]string{}
					}
					p.Params[k] = v
				}
				if rolloutFile != "" {
					b, err := os.ReadFile(rolloutFile)
					if err != nil {
						return usagef("--rollout-file: %v", err)
					}
					dec := json.NewDecoder(bytes.NewReader(b))
					dec.DisallowUnknownFields()
					p.Rollout = &api.RolloutSpec{}
					if err := dec.Decode(p.Rollout); err != nil {
						return usagef("--rollout-file %s: not a rollout spec: %v", rolloutFile, err)
					}
				}
				if err := p.Check(pos[0]); err != nil {
					return usagef("%v", err)
				}
				st, err = c.SetRetrainPolicy(cmd.Context(), pos[0], p)
			} else {
				st, err = c.RetrainPolicy(cmd.Context(), pos[0])
			}
			if err != nil {
				return fmt.Errorf("retrain policy %s: %w", pos[0], err)
			}
			printRetrainPolicy(a.stdout, st)
			return nil
		}),
	}
	f := c.Flags()
	f.StringVar(&trainer, "trainer", "", "`TRAINER`: builtin:fraud or command:NAME")
	f.Var(&triggers, "trigger", "alert `RULE` that starts a job: feature_drift, low_accuracy or accuracy_drop (repeatable)")
	f.Var(&params, "param", "trainer parameter `KEY=VALUE` (repeatable)")
	f.DurationVar(&window, "window", 0, "train on the captured rows of the last `DURATION` (default 168h)")
	f.StringVar(&baseDataset, "base-dataset", "", "join the uploaded base dataset `ID` (edgefleet data upload) to the training rows; held-out rows stay field rows")
	f.DurationVar(&schedule, "schedule", 0, "also start a job every `DURATION` (at least 1h)")
	f.StringVar(&cronSpec, "cron", "", "also start a job at the times of a 5-field cron `EXPRESSION` in UTC (or @hourly, @daily, @weekly, @monthly, @yearly); one minute of the hour at most")
	f.DurationVar(&timeLimit, "time-limit", 0, "kill training after `DURATION` (default 10m)")
	f.DurationVar(&cooldown, "cooldown", 0, "least `DURATION` between automatic jobs (default 1h)")
	f.Var(&holdout, "holdout", "`FRACTION` of labelled rows held out for evaluation (default 0.25)")
	f.Var(&margin, "margin", "how much better (`DELTA` of the metric) the candidate must be (default 0.01)")
	f.IntVar(&minLabelled, "min-labelled", 0, "labelled rows a job needs (`N`, default 100)")
	f.StringVar(&metric, "metric", "", "`METRIC` compared: accuracy (default) or f1")
	f.StringVar(&scope, "site-scope", "", "`SCOPE`: all (default) or alert: a job an alert of one site starts trains and evaluates on that site's rows and rolls out there")
	f.StringVar(&rolloutFile, "rollout-file", "", "JSON rollout spec (`FILE`) without model and version: the candidate's rollout")
	enumFlag(c, "metric", api.MetricAccuracy, api.MetricF1)
	enumFlag(c, "site-scope", api.SiteScopeAll, api.SiteScopeAlert)
	enumFlag(c, "trigger", api.AlertRules...)
	return c
}

func printRetrainPolicy(w io.Writer, st api.RetrainStatus) {
	if st.Error != "" {
		fmt.Fprintf(w, "retrain policy of %s: %s\n", st.Model, st.Error)
		return
	}
	if !st.Set {
		fmt.Fprintf(w, "retrain policy of %s: none (edgefleet retrain policy %s --trainer %s ...)\n", st.Model, st.Model, api.TrainerBuiltinFraud)
		return
	}
	p := st.Policy
	fmt.Fprintf(w, "retrain policy of %s: trainer %s, data of the last %v, %g held out, %s better by %+g\n",
		st.Model, p.Trainer, time.Duration(p.Window), p.HoldoutFraction, p.Metric, p.MarginOrDefault())
	trig := "edgefleet retrain " + st.Model
	if len(p.Triggers) > 0 {
		trig = "alerts " + strings.Join(p.Triggers, ", ") + "; " + trig
	}
	if p.Schedule > 0 {
		trig += fmt.Sprintf("; every %v (next %s)", time.Duration(p.Schedule), st.NextScheduled.Format(time.RFC3339))
	}
	if p.Cron != "" {
		trig += fmt.Sprintf("; cron %q UTC (next %s)", p.Cron, st.NextScheduled.Format(time.RFC3339))
	}
	fmt.Fprintf(w, "  triggers: %s (cooldown %v)\n", trig, time.Duration(p.Cooldown))
	if st.ScheduleWaiting != "" {
		fmt.Fprintf(w, "  scheduled job due, waiting: %s\n", st.ScheduleWaiting)
	}
	if p.SiteScope == api.SiteScopeAlert {
		fmt.Fprintln(w, "  site scope: a job an alert of one site starts trains on that site's rows and rolls out there")
	}
	if p.BaseDataset != "" {
		fmt.Fprintf(w, "  base dataset %s joined to the training rows (held-out rows are field rows only)\n", p.BaseDataset)
	}
	fmt.Fprintf(w, "  needs %d labelled rows; a job limited to %v\n", p.MinLabelled, time.Duration(p.TimeLimit))
	if len(p.Params) > 0 {
		var kv []string
		for k, v := range p.Params {
			kv = append(kv, k+"="+v)
		}
		slices.Sort(kv)
		fmt.Fprintf(w, "  params: %s\n", strings.Join(kv, " "))
	}
	if p.Rollout == nil {
		fmt.Fprintln(w, "  rollout: none (a published candidate waits for an operator)")
	} else {
		var stages []string
		for _, s := range p.Rollout.Stages {
			d := s.Name
			if s.Shadow {
				d += " (shadow)"
			}
			stages = append(stages, d)
		}
		fmt.Fprintf(w, "  rollout: selector %q, stages %s\n", p.Rollout.Selector, strings.Join(stages, " → "))
	}
	if st.Running != "" {
		fmt.Fprintf(w, "  running: %s\n", st.Running)
	} else if st.LastJob != "" {
		fmt.Fprintf(w, "  last job: %s\n", st.LastJob)
	}
}

func (a *app) retrainJobsCmd() *cobra.Command {
	var model string
	c := &cobra.Command{
		Use:   "jobs [--model NAME]",
		Short: "list retrain jobs, newest first",
		Example: `  edgefleet retrain jobs
  edgefleet retrain jobs --model fraud`,
		Args: noArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.RetrainJobs(cmd.Context(), model)
			if err != nil {
				return fmt.Errorf("retrain jobs: %w", err)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tMODEL\tSTATE\tTRIGGER\tPARENT\tCANDIDATE\tROLLOUT\tCREATED")
			for _, j := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, j.Model, j.State, j.Trigger, orDash(j.Parent), orDash(j.Candidate),
					orDash(j.Rollout), j.Created.Format(time.RFC3339))
			}
			return tw.Flush()
		}),
	}
	c.Flags().StringVar(&model, "model", "", "only jobs of model `NAME`")
	return c
}

func (a *app) retrainShowCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "show ID",
		Short: "a retrain job: its state, evaluation and log",
		Example: `  edgefleet retrain show j-6753a1c0-0a1b2c3d
  edgefleet retrain show j-6753a1c0-0a1b2c3d --json`,
		Args: oneArg("job ID"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			j, err := c.RetrainJob(cmd.Context(), pos[0])
			if err != nil {
				return fmt.Errorf("retrain show: %w", err)
			}
			if asJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(j)
			}
			printJob(a.stdout, j)
			return nil
		}),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the job as JSON")
	return c
}

func (a *app) retrainCancelCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "cancel ID",
		Short:   "stop a retrain job (a running trainer is killed)",
		Example: `  edgefleet retrain cancel j-6753a1c0-0a1b2c3d`,
		Args:    oneArg("job ID"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			j, err := c.CancelRetrainJob(cmd.Context(), pos[0])
			if err != nil {
				return fmt.Errorf("retrain cancel: %w", err)
			}
			fmt.Fprintf(a.stdout, "retrain job %s: cancelling (was %s)\n", j.ID, j.State)
			return nil
		}),
	}
}

func printJob(w io.Writer, j *api.RetrainJob) {
	fmt.Fprintf(w, "job %s of %s: %s\n", j.ID, j.Model, j.State)
	if j.Reason != "" {
		fmt.Fprintf(w, "  reason: %s\n", j.Reason)
	}
	fmt.Fprintf(w, "  trigger: %s; parent %s; trainer %s", j.Trigger, orNone(j.Parent), j.Policy.Trainer)
	if j.Site != "" {
		fmt.Fprintf(w, "; rows of site %s only", j.Site)
	}
	fmt.Fprintln(w)
	if ds := j.Dataset; ds != nil {
		fmt.Fprintf(w, "  dataset %d (%s): %d rows, %d labelled, validation %s; %d train / %d held out\n",
			ds.Version, ds.SHA256[:12], ds.Rows, ds.Labelled, passFail(ds.Validation.Passed), j.TrainRows, j.HoldoutRows)
	}
	if b := j.Base; b != nil {
		fmt.Fprintf(w, "  base dataset %s: %d rows joined to the training rows\n", b.ID[:12], b.Rows)
	}
	if j.CancelledBy != "" && !j.State.Terminal() {
		fmt.Fprintf(w, "  cancel requested by %s; the job stops at its next check\n", j.CancelledBy)
	}
	if r := j.Command; r != nil {
		fmt.Fprintf(w, "  trainer %s %s: exit %d after %v", r.Program, strings.Join(r.Args, " "), r.ExitCode, time.Duration(r.Duration).Round(time.Millisecond))
		if r.TimedOut {
			fmt.Fprint(w, " (time limit)")
		}
		fmt.Fprintln(w)
	}
	if e := j.Evaluation; e != nil {
		fmt.Fprintf(w, "  evaluation on %d held-out rows (%s, margin %+g): candidate %.4f, %s %.4f → %s\n", e.Rows, e.Metric, e.Margin,
			e.Candidate.Value(e.Metric), e.Parent.Version, e.Parent.Value(e.Metric), map[bool]string{true: "better", false: "not better"}[e.Better])
	}
	if j.Candidate != "" {
		fmt.Fprintf(w, "  candidate: %s", j.Candidate)
		if j.Rollout != "" {
			fmt.Fprintf(w, ", rollout %s", j.Rollout)
		}
		fmt.Fprintln(w)
	}
	for _, l := range j.Log {
		fmt.Fprintf(w, "  %s  %-16s %s\n", l.Time.Format("15:04:05"), l.State, l.Message)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (a *app) modelLineageCmd() *cobra.Command {
	var version string
	c := &cobra.Command{
		Use:   "lineage NAME [--version V]",
		Short: "why a model version exists: its chain of parents, datasets, trainers, evaluations and triggers",
		Example: `  edgefleet model lineage fraud
  edgefleet model lineage fraud --version v2`,
		Args: oneArg("model NAME"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			l, err := c.Lineage(cmd.Context(), pos[0], version)
			if err != nil {
				return fmt.Errorf("model lineage %s: %w", pos[0], err)
			}
			printLineage(a.stdout, l)
			return nil
		}),
	}
	c.Flags().StringVar(&version, "version", "", "start at `VERSION` (default the newest)")
	return c
}

func printLineage(w io.Writer, l api.Lineage) {
	for i, e := range l.Chain {
		if i > 0 {
			fmt.Fprintln(w, "  ↑")
		}
		fmt.Fprintf(w, "%s %s", l.Model, e.Version)
		if !e.Created.IsZero() && e.Created.Unix() > 0 {
			fmt.Fprintf(w, "  (created %s)", e.Created.Format(time.RFC3339))
		}
		fmt.Fprintln(w)
		if e.Parent == "" && e.Job == "" {
			fmt.Fprintf(w, "  uploaded without lineage")
			if e.Algorithm != "" {
				fmt.Fprintf(w, "; algorithm %s", e.Algorithm)
			}
			fmt.Fprintln(w)
			continue
		}
		fmt.Fprintf(w, "  trigger: %s (job %s)\n", e.Trigger, e.Job)
		fmt.Fprintf(w, "  parent: %s; trainer %s", e.Parent, e.Trainer)
		if len(e.Params) > 0 {
			var kv []string
			for k, v := range e.Params {
				kv = append(kv, k+"="+v)
			}
			slices.Sort(kv)
			fmt.Fprintf(w, " (%s)", strings.Join(kv, " "))
		}
		fmt.Fprintln(w)
		for _, d := range e.Datasets {
			fmt.Fprintf(w, "  dataset: %s %d, %d rows, sha256 %s\n", d.Model, d.Version, d.Rows, d.SHA256)
		}
		if ev := e.Eval; ev != nil {
			fmt.Fprintf(w, "  held-out evaluation (%g rows): accuracy %.4f vs parent %.4f; f1 %.4f vs %.4f\n", ev["holdout_rows"],
				ev["candidate_accuracy"], ev["parent_accuracy"], ev["candidate_f1"], ev["parent_f1"])
		}
	}
}
