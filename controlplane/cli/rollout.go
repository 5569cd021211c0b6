package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/labels"
)

// rollout dispatches "rollout <sub>".
func (a *app) rollout(ctx context.Context, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usagef("rollout needs a subcommand: create, get, list, pause, resume, promote, abort or rollback")
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "create":
		return a.rolloutCreate(ctx, rest)
	case "get":
		return a.rolloutGet(ctx, rest)
	case "list":
		return a.rolloutList(ctx, rest)
	case "pause", "resume", "promote", "abort", "rollback":
		return a.rolloutAction(ctx, api.RolloutAction(sub), rest)
	}
	return usagef("unknown command \"rollout %s\" (want create, get, list, pause, resume, promote, abort or rollback)", sub)
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
		case "min":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return st, fmt.Errorf("--stage %q: min=%q: want a device count", s, v)
			}
			st.MinDevices = n
		default:
			return st, fmt.Errorf("--stage %q: unknown option %q (want bake=DUR or min=N)", s, k)
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

func (a *app) rolloutCreate(ctx context.Context, args []string) error {
	fs := a.flagSet("edgefleet rollout create")
	a.globalFlags(fs)
	selector := fs.String("selector", "", "target devices by label selector (required)")
	var stages stringList
	fs.Var(&stages, "stage", "a stage, in order (repeatable): canary:N, percent:P, devices:ID,ID or group:k=v; add /bake=DUR or /min=N")
	bake := fs.Duration("bake", 0, "bake time of each stage before its gates are judged (default 5m)")
	var failRate, offline, accDrop, drift optFloat
	fs.Var(&failRate, "max-failure-rate", "gate: highest fraction of reporting devices that failed to install (0..1)")
	fs.Var(&offline, "max-offline", "gate: highest fraction of the cohort offline (0..1)")
	fs.Var(&accDrop, "max-accuracy-drop", "gate: how much lower than the replaced version's the accuracy may be")
	fs.Var(&drift, "max-drift", "gate: highest drift score")
	minLabelled := fs.Int("min-labelled", 0, "labelled predictions the quality gates need (default 100)")
	onBreach := fs.String("on-breach", "pause", "what a breached gate does: pause or rollback")
	auto := fs.Bool("auto-promote", false, "promote to the next stage when one passes (default: wait for rollout promote)")
	startAt := fs.String("start-at", "", "start time (RFC 3339, e.g. 2026-11-26T02:00:00Z); default now")
	var windows stringList
	fs.Var(&windows, "window", "daily maintenance window in UTC, HH:MM-HH:MM (repeatable); waves advance only inside one")
	perMinute := fs.Int("max-per-minute", 0, "assign at most N devices per minute (0: no limit)")
	sites := fs.String("sites", "", "site-aware waves: spread (every wave across the sites) or one-at-a-time (site by site)")
	siteLabel := fs.String("site-label", "", "the device label naming the site (default site)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("rollout create takes one NAME@VERSION, got %d arguments", len(pos))
	}
	name, version, ok := strings.Cut(pos[0], "@")
	if !ok || name == "" || version == "" {
		return usagef("rollout create %q: want NAME@VERSION, e.g. fraud@2.0.0", pos[0])
	}
	spec := api.RolloutSpec{
		Model: name, Version: version, Selector: *selector,
		Bake:     api.Duration(*bake),
		OnBreach: *onBreach,
		Gates: api.Gates{MaxFailureRate: failRate.v, MaxOfflineFraction: offline.v,
			MaxAccuracyDrop: accDrop.v, MaxDriftScore: drift.v, MinLabelled: *minLabelled},
		AutoPromote:  *auto,
		Windows:      windows,
		MaxPerMinute: *perMinute,
		Sites:        *sites,
		SiteLabel:    *siteLabel,
	}
	if *startAt != "" {
		t, err := time.Parse(time.RFC3339, *startAt)
		if err != nil {
			return usagef("--start-at %q: want an RFC 3339 time such as 2026-11-26T02:00:00Z", *startAt)
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
	st, err := c.CreateRollout(ctx, spec)
	if err != nil {
		return fmt.Errorf("rollout create %s@%s: %w", name, version, err)
	}
	fmt.Fprintf(a.stdout, "rollout %s created: %s@%s to %s, %d stage(s), state %s\n", st.ID, name, version, spec.Selector, len(spec.Stages), st.State)
	return nil
}

func (a *app) rolloutGet(ctx context.Context, args []string) error {
	fs := a.flagSet("edgefleet rollout get")
	a.globalFlags(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("rollout get takes one rollout id")
	}
	c, err := a.client()
	if err != nil {
		return err
	}
	st, err := c.Rollout(ctx, pos[0], false)
	if err != nil {
		return fmt.Errorf("rollout get %s: %w", pos[0], err)
	}
	a.printRollout(st)
	return nil
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
}

// stageLabel is "2", or "2 (name)" for a stage with its own name.
func stageLabel(s api.StageStatus) string {
	if s.Name == "" || s.Name == fmt.Sprintf("stage %d", s.Index) {
		return strconv.Itoa(s.Index)
	}
	return fmt.Sprintf("%d (%s)", s.Index, s.Name)
}

func (a *app) rolloutList(ctx context.Context, args []string) error {
	fs := a.flagSet("edgefleet rollout list")
	a.globalFlags(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("rollout list takes no arguments")
	}
	c, err := a.client()
	if err != nil {
		return err
	}
	list, err := c.Rollouts(ctx)
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
}

func (a *app) rolloutAction(ctx context.Context, action api.RolloutAction, args []string) error {
	fs := a.flagSet("edgefleet rollout " + string(action))
	a.globalFlags(fs)
	var selector, device *string
	if action == api.ActionRollback {
		selector = fs.String("selector", "", "roll back only the rollout's devices matching this label selector")
		device = fs.String("device", "", "roll back only this device")
	}
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("rollout %s takes one rollout id", action)
	}
	var req api.RollbackRequest
	if action == api.ActionRollback {
		if *selector != "" && *device != "" {
			return usagef("give --selector or --device, not both")
		}
		if *selector != "" {
			if _, err := labels.Parse(*selector); err != nil {
				return usagef("--selector: %v", err)
			}
		}
		req = api.RollbackRequest{Selector: *selector, Device: *device}
	}
	c, err := a.client()
	if err != nil {
		return err
	}
	st, err := c.RolloutAction(ctx, pos[0], action, req)
	if err != nil {
		return fmt.Errorf("rollout %s %s: %w", action, pos[0], err)
	}
	fmt.Fprintf(a.stdout, "rollout %s: %s, stage %d of %d\n", st.ID, st.State, st.Stage+1, len(st.Stages))
	return nil
}

// auditCmd prints the audit log.
func (a *app) auditCmd(ctx context.Context, args []string) error {
	fs := a.flagSet("edgefleet audit")
	a.globalFlags(fs)
	action := fs.String("action", "", "only this action, or a prefix ending in \".\" (e.g. rollout.)")
	target := fs.String("target", "", "only entries about this target (e.g. a rollout id)")
	limit := fs.Int("limit", 100, "newest N entries")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("audit takes no arguments")
	}
	if *limit < 1 || *limit > 10000 {
		return usagef("--limit %d: want 1..10000", *limit)
	}
	c, err := a.client()
	if err != nil {
		return err
	}
	list, err := c.Audit(ctx, api.AuditQuery{Action: *action, Target: *target, Limit: *limit})
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tACTOR\tACTION\tTARGET\tRESULT")
	for _, e := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Time.Format(time.RFC3339), e.Actor, e.Action, e.Target, oneLine(e.Result))
	}
	return tw.Flush()
}
