package cli

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/labels"
)

func (a *app) rolloutCmd() *cobra.Command {
	subs := []*cobra.Command{a.rolloutCreateCmd(), a.rolloutGetCmd(), a.rolloutListCmd()}
	for _, action := range api.RolloutActions() {
		subs = append(subs, a.rolloutActionCmd(action))
	}
	return group(&cobra.Command{
		Use:   "rollout <command>",
		Short: "staged rollouts with health gates",
		Long: `A rollout moves a model version through ordered stages of the devices matching a selector,
and pauses or rolls back by itself when a stage's gates are breached: install failures,
devices offline, accuracy drop against the replaced version, drift. Rollouts survive a
control plane restart; every operator action and automatic decision is in the audit log.`,
		Example: `  edgefleet rollout create fraud@2.0.0 --selector fleet=demo --stage canary:1 --stage percent:100
  edgefleet rollout list
  edgefleet rollout get r-3f9c01a2b4c5
  edgefleet rollout promote r-3f9c01a2b4c5`,
	}, subs...)
}

// parseStage reads --stage: canary:N, percent:P, devices:a,b or group:k=v,
// optionally followed by /bake=DUR and /min=N.
func parseStage(s string) (api.RolloutStage, error) {
	parts := strings.Split(s, "/")
	kind, val, ok := strings.Cut(parts[0], ":")
	if !ok || val == "" {
		return api.RolloutStage{}, fmt.Errorf("--stage %q: want canary:N, percent:P, devices:ID,ID or group:k=v", s)
	}
	var st api.RolloutStage
	switch kind {
	case "canary":
		n, err := strconv.Atoi(val)
		if err != nil || n < 1 {
			return st, fmt.Errorf("--stage %q: canary wants a device count >= 1", s)
		}
		st.Canary = n
	case "percent":
		p, err := strconv.ParseFloat(strings.TrimSuffix(val, "%"), 64)
		if err != nil || p <= 0 || p > 100 {
			return st, fmt.Errorf("--stage %q: percent wants a number in (0, 100]", s)
		}
		st.Percent = p
	case "devices":
		st.Devices = strings.Split(val, ",")
	case "group":
		if _, err := labels.Parse(val); err != nil {
			return st, fmt.Errorf("--stage %q: %v", s, err)
		}
		st.Selector = val
	default:
		return st, fmt.Errorf("--stage %q: unknown kind %q (want canary, percent, devices or group)", s, kind)
	}
	for _, opt := range parts[1:] {
		k, v, _ := strings.Cut(opt, "=")
		switch k {
		case "bake":
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				return st, fmt.Errorf("--stage %q: bake=%q: want a duration such as 30s", s, v)
			}
			st.Bake = api.Duration(d)
		case "shadow":
			st.Shadow = true
		case "min":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return st, fmt.Errorf("--stage %q: min=%q: want a device count", s, v)
			}
			st.MinDevices = n
		default:
			return st, fmt.Errorf("--stage %q: unknown option %q (want bake=DUR, min=N or shadow)", s, k)
		}
	}
	return st, nil
}

// optFloat is a float flag that records whether it was set.
type optFloat struct{ v *float64 }

func (f *optFloat) String() string {
	if f.v == nil {
		return ""
	}
	return strconv.FormatFloat(*f.v, 'g', -1, 64)
}

func (f *optFloat) Set(s string) error {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("want a number")
	}
	f.v = &v
	return nil
}

func (f *optFloat) Type() string { return "float" }

func (a *app) rolloutCreateCmd() *cobra.Command {
	var (
		selector, onBreach, startAt, sites, siteLabel string
		stages, windows                               stringList
		bake                                          time.Duration
		failRate, offline, accDrop, drift, margin     optFloat
		minLabelled, perMinute                        int
		auto                                          bool
	)
	c := &cobra.Command{
		Use:   "create NAME@VERSION --selector SELECTOR --stage STAGE...",
		Short: "start a staged rollout",
		Long: `Starts a rollout of NAME@VERSION to the devices matching SELECTOR, through the stages in the
order given. A stage is canary:N (N devices), percent:P (P% of the devices), devices:ID,ID
or group:k=v (a label group); cohorts are cumulative and drawn in a stable random order.
Append /bake=DURATION or /min=N to a stage for its own bake time and minimum of reporting
devices, and /shadow to run the version in shadow there: the stage's devices keep serving
their version and score every request with this one too; the stage passes only when, over
--min-labelled labelled rows scored by both, the challenger's accuracy is at least the
champion's plus --shadow-margin. Shadow stages come first; a later stage serves the version.

After its bake time, once enough devices reported, a stage's gates are judged. A passed
stage promotes (--auto-promote) or waits for "rollout promote"; a breach pauses the rollout
or rolls its devices back (--on-breach). --start-at, --window and --max-per-minute schedule
and pace the waves: devices are assigned and stages pass only inside a window (breaches are
acted on at any time).`,
		Example: `  edgefleet rollout create fraud@2.0.0 --selector fleet=demo \
      --stage canary:1 --stage percent:50 --stage percent:100 \
      --bake 30s --max-failure-rate 0.2 --on-breach rollback --auto-promote

  # Champion/challenger: two canaries score 2.0.0 in shadow; it serves only if it is
  # at least one point more accurate than what they serve, over 500 labelled rows.
  edgefleet rollout create fraud@2.0.0 --selector fleet=demo --stage canary:2/shadow \
      --stage percent:100 --min-labelled 500 --shadow-margin 0.01 --auto-promote

  # Nightly waves, site by site, at most 20 devices a minute.
  edgefleet rollout create fraud@2.0.0 --selector hw=arm64 --stage group:site=north/bake=1h \
      --stage percent:100 --window 22:00-04:00 --sites one-at-a-time --max-per-minute 20`,
		Args: oneArg("NAME@VERSION"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			name, version, ok := strings.Cut(pos[0], "@")
			if !ok || name == "" || version == "" {
				return usagef("rollout create %q: want NAME@VERSION, e.g. fraud@2.0.0", pos[0])
			}
			spec := api.RolloutSpec{
				Model: name, Version: version, Selector: selector,
				Bake:     api.Duration(bake),
				OnBreach: onBreach,
				Gates: api.Gates{MaxFailureRate: failRate.v, MaxOfflineFraction: offline.v,
					MaxAccuracyDrop: accDrop.v, MaxDriftScore: drift.v, MinLabelled: minLabelled, ShadowMargin: margin.v},
				AutoPromote:  auto,
				Windows:      windows,
				MaxPerMinute: perMinute,
				Sites:        sites,
				SiteLabel:    siteLabel,
			}
			if startAt != "" {
				t, err := time.Parse(time.RFC3339, startAt)
				if err != nil {
					return usagef("--start-at %q: want an RFC 3339 time such as 2026-11-26T02:00:00Z", startAt)
				}
				spec.StartAt = t
			}
			if len(stages) == 0 {
				return usagef("rollout create needs at least one --stage (e.g. --stage canary:1 --stage percent:100)")
			}
			for _, s := range stages {
				st, err := parseStage(s)
				if err != nil {
					return usagef("%v", err)
				}
				spec.Stages = append(spec.Stages, st)
			}
			if err := spec.Validate(); err != nil {
				return usagef("%v", err)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			st, err := c.CreateRollout(cmd.Context(), spec)
			if err != nil {
				return fmt.Errorf("rollout create %s@%s: %w", name, version, err)
			}
			fmt.Fprintf(a.stdout, "rollout %s created: %s@%s to %s, %d stage(s), state %s\n", st.ID, name, version, spec.Selector, len(spec.Stages), st.State)
			return nil
		}),
	}
	f := c.Flags()
	f.StringVar(&selector, "selector", "", "target devices by label `SELECTOR` (required)")
	f.Var(&stages, "stage", "a `STAGE`, in order (repeatable): canary:N, percent:P, devices:ID,ID or group:k=v; add /bake=DUR, /min=N or /shadow")
	f.DurationVar(&bake, "bake", 0, "bake time (`DURATION`) of each stage before its gates are judged (default 5m)")
	f.Var(&failRate, "max-failure-rate", "gate: highest `FRACTION` of reporting devices that failed to install (0..1)")
	f.Var(&offline, "max-offline", "gate: highest `FRACTION` of the cohort offline (0..1)")
	f.Var(&accDrop, "max-accuracy-drop", "gate: how much lower than the replaced version's the accuracy may be (`DROP`, 0..1)")
	f.Var(&drift, "max-drift", "gate: highest drift `SCORE`")
	f.IntVar(&minLabelled, "min-labelled", 0, "`N` labelled predictions the quality gates need (default 100)")
	f.Var(&margin, "shadow-margin", "shadow gate: how much higher than the champion's the challenger's accuracy must be (`MARGIN`, default 0)")
	f.StringVar(&onBreach, "on-breach", api.OnBreachPause, "`ACTION` on a breached gate: pause or rollback")
	f.BoolVar(&auto, "auto-promote", false, "promote to the next stage when one passes (default: wait for rollout promote)")
	f.StringVar(&startAt, "start-at", "", "start `TIME` (RFC 3339, e.g. 2026-11-26T02:00:00Z); default now")
	f.Var(&windows, "window", "daily maintenance `WINDOW` in UTC, HH:MM-HH:MM (repeatable); waves advance only inside one")
	f.IntVar(&perMinute, "max-per-minute", 0, "assign at most `N` devices per minute (0: no limit)")
	f.StringVar(&sites, "sites", "", "site-aware waves (`ORDER`): spread (every wave across the sites) or one-at-a-time (site by site)")
	f.StringVar(&siteLabel, "site-label", "", "the device `LABEL` naming the site (default site)")
	enumFlag(c, "on-breach", api.OnBreachPause, api.OnBreachRollback)
	enumFlag(c, "sites", api.SitesSpread, api.SitesOneAtATime)
	return c
}

func (a *app) rolloutGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "show a rollout's per-stage progress and gate figures",
		Long: `Prints a rollout's state and policy, its stages with their devices (pending, downloading,
active, failed, rolled back, offline) and result, and the figures of each stage's gates.`,
		Example: "  edgefleet rollout get r-3f9c01a2b4c5",
		Args:    oneArg("rollout id"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			st, err := c.Rollout(cmd.Context(), pos[0], false)
			if err != nil {
				return fmt.Errorf("rollout get %s: %w", pos[0], err)
			}
			a.printRollout(st)
			return nil
		}),
	}
}

func (a *app) printRollout(st *api.Rollout) {
	w := a.stdout
	fmt.Fprintf(w, "rollout %s  %s@%s  selector %s\n", st.ID, st.Spec.Model, st.Spec.Version, st.Spec.Selector)
	fmt.Fprintf(w, "state:   %s", st.State)
	if st.Reason != "" {
		fmt.Fprintf(w, " (%s)", st.Reason)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "policy:  on breach %s, auto-promote %v, bake %s\n", st.Spec.OnBreach, st.Spec.AutoPromote, time.Duration(st.Spec.Bake))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\tSTAGE\tKIND\tASSIGNED\tPENDING\tDOWNLOADING\tACTIVE\tFAILED\tROLLED-BACK\tOFFLINE\tRESULT")
	for _, s := range st.Stages {
		mark := ""
		if s.Current {
			mark = "*"
		}
		result := s.Result
		if result == "" && s.Current {
			result = "waiting: " + s.Waiting
			if s.Waiting == "" {
				result = "running"
			}
		}
		d := s.Devices
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", mark, stageLabel(s), s.Kind,
			d.Assigned, d.Pending, d.Downloading, d.Active, d.Failed, d.RolledBack, d.Offline, result)
	}
	_ = tw.Flush()
	for _, s := range st.Stages {
		if len(s.Gates) == 0 {
			continue
		}
		fmt.Fprintf(w, "gates of stage %s:\n", stageLabel(s))
		for _, g := range s.Gates {
			fmt.Fprintf(w, "  %-17s %-7s value %.4g  limit %.4g  %s\n", g.Gate, g.Status, g.Value, g.Limit, g.Detail)
		}
	}
	for _, s := range st.Stages {
		if f := s.Shadow; f != nil {
			fmt.Fprintf(w, "shadow of stage %s: %d devices scoring, %d refused; %d rows, agreement %.4f, mean score difference %.4f, %d skipped, %d errors\n",
				stageLabel(s), f.DevicesReady, f.DevicesFailed, f.Rows, f.Agreement, f.MeanScoreDiff, f.Skipped, f.Errors)
			fmt.Fprintf(w, "  labelled %d: champion accuracy %.4f, challenger accuracy %.4f\n", f.Labelled, f.ChampionAccuracy, f.ChallengerAccuracy)
			for _, why := range f.Failures {
				fmt.Fprintf(w, "  refused: %s\n", why)
			}
		}
	}
}

// stageLabel is "2", or "2 (name)" for a stage with its own name.
func stageLabel(s api.StageStatus) string {
	if s.Name == "" || s.Name == fmt.Sprintf("stage %d", s.Index) {
		return strconv.Itoa(s.Index)
	}
	return fmt.Sprintf("%d (%s)", s.Index, s.Name)
}

func (a *app) rolloutListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "list rollouts",
		Long:    "Lists every rollout, oldest first, with its state, current stage and device counts.",
		Example: "  edgefleet rollout list",
		Args:    noArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.Rollouts(cmd.Context())
			if err != nil {
				return fmt.Errorf("rollout list: %w", err)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tMODEL\tSELECTOR\tSTATE\tSTAGE\tACTIVE\tFAILED\tCREATED")
			for _, st := range list {
				active, failed := 0, 0
				for _, s := range st.Stages {
					active += s.Devices.Active
					failed += s.Devices.Failed
				}
				fmt.Fprintf(tw, "%s\t%s@%s\t%s\t%s\t%d/%d\t%d\t%d\t%s\n", st.ID, st.Spec.Model, st.Spec.Version, st.Spec.Selector,
					st.State, st.Stage+1, len(st.Stages), active, failed, st.Created.Format(time.RFC3339))
			}
			return tw.Flush()
		}),
	}
}

// rolloutActionDocs describes each rollout action for its help.
func rolloutActionDocs(action api.RolloutAction) (short, long, example string) {
	const id = "r-3f9c01a2b4c5"
	switch action {
	case api.ActionPause:
		return "pause a rollout", "Stops a rollout from assigning devices and advancing stages; devices keep what they were given.",
			"  edgefleet rollout pause " + id
	case api.ActionResume:
		return "resume a paused rollout", "Continues a paused rollout; the current stage's bake time starts again, so its gates are\njudged on fresh figures.",
			"  edgefleet rollout resume " + id
	case api.ActionPromote:
		return "move a rollout to its next stage now", "Moves a rollout to its next stage (or completes it after the last), whether or not the\ncurrent stage's gates passed; the audit log records the gate figures at that moment.",
			"  edgefleet rollout promote " + id
	case api.ActionAbort:
		return "stop a rollout for good", "Stops a rollout for good; devices keep what they were given (roll back to undo that).",
			"  edgefleet rollout abort " + id
	default:
		return "roll back a rollout, one label group or one device",
			`Sends the rollout's devices back to the version each had before (a new desired-state
generation; the agent reactivates it from disk). Rolling back the whole rollout ends it
(rolled-back); with --selector or --device only those devices leave it, and it goes on.`,
			"  edgefleet rollout rollback " + id + "\n  edgefleet rollout rollback " + id + " --selector site=b\n  edgefleet rollout rollback " + id + " --device dev-7"
	}
}

func (a *app) rolloutActionCmd(action api.RolloutAction) *cobra.Command {
	var selector, device string
	short, long, example := rolloutActionDocs(action)
	c := &cobra.Command{
		Use:     string(action) + " ID",
		Short:   short,
		Long:    long,
		Example: example,
		Args:    oneArg("rollout id"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			var req api.RollbackRequest
			if action == api.ActionRollback {
				if selector != "" && device != "" {
					return usagef("give --selector or --device, not both")
				}
				if selector != "" {
					if _, err := labels.Parse(selector); err != nil {
						return usagef("--selector: %v", err)
					}
				}
				req = api.RollbackRequest{Selector: selector, Device: device}
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			st, err := c.RolloutAction(cmd.Context(), pos[0], action, req)
			if err != nil {
				return fmt.Errorf("rollout %s %s: %w", action, pos[0], err)
			}
			fmt.Fprintf(a.stdout, "rollout %s: %s, stage %d of %d\n", st.ID, st.State, st.Stage+1, len(st.Stages))
			return nil
		}),
	}
	if action == api.ActionRollback {
		c.Use = "rollback ID [--selector SELECTOR | --device ID]"
		c.Flags().StringVar(&selector, "selector", "", "roll back only the rollout's devices matching this label `SELECTOR`")
		c.Flags().StringVar(&device, "device", "", "roll back only this device (`ID`)")
	}
	return c
}

func (a *app) auditCmd() *cobra.Command {
	var (
		action, target string
		limit          int
	)
	c := &cobra.Command{
		Use:   "audit",
		Short: "read the audit log",
		Long: `Prints the newest entries of the audit log: who did what to which target, and the
result. Operator actions and the control plane's own decisions (a rollout's automatic
promotion, pause or rollback) are both there.`,
		Example: `  edgefleet audit --action rollout.
  edgefleet audit --target r-3f9c01a2b4c5 --limit 20`,
		Args: noArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			if limit < 1 || limit > 10000 {
				return usagef("--limit %d: want 1..10000", limit)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.Audit(cmd.Context(), api.AuditQuery{Action: action, Target: target, Limit: limit})
			if err != nil {
				return fmt.Errorf("audit: %w", err)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tACTOR\tACTION\tTARGET\tRESULT")
			for _, e := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Time.Format(time.RFC3339), e.Actor, e.Action, e.Target, oneLine(e.Result))
			}
			return tw.Flush()
		}),
	}
	f := c.Flags()
	f.StringVar(&action, "action", "", "only this `ACTION`, or a prefix ending in \".\" (e.g. rollout.)")
	f.StringVar(&target, "target", "", "only entries about this `TARGET` (e.g. a rollout id)")
	f.IntVar(&limit, "limit", 100, "newest `N` entries")
	return c
}
