package fleet

import (
	"context"
	"fmt"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// CapturePolicies gives the capture policy desired states carry for a
// model (field data capture; nil: capture off). controlplane/data
// implements it.
type CapturePolicies interface {
	CapturePolicy(model string) *efpb.CapturePolicy
}

// withCapture sets every assignment's capture policy to the model's
// current one (Options.Capture; none when it is nil). Every issue goes
// through it, so deployments, rollouts and renewals all carry the policy
// in force when they are signed.
func (f *Fleet) withCapture(models []*efpb.ModelAssignment) {
	for _, m := range models {
		m.Capture = nil
		if f.opts.Capture != nil {
			m.Capture = f.opts.Capture.CapturePolicy(m.Name)
		}
	}
}

// RefreshCapture re-issues, with the same assignments and the next
// generation, the desired state of every device assigned model, so a new
// capture policy reaches them signed. It returns how many were issued.
func (f *Fleet) RefreshCapture(ctx context.Context, model string) (int, error) {
	f.issueMu.Lock()
	defer f.issueMu.Unlock()
	var ids []string
	for _, d := range f.reg.List(nil) {
		if d.Desired.Version(model) != "" {
			ids = append(ids, d.ID)
		}
	}
	if len(ids) == 0 {
		return 0, nil
	}
	issued, err := f.issue(ids, func(cur []*efpb.ModelAssignment) []*efpb.ModelAssignment { return cur })
	if err != nil {
		return 0, fmt.Errorf("refresh capture policy of %s: %w", model, err)
	}
	f.publish(ctx, issued)
	f.log.Info("capture policy sent", "model", model, "devices", len(issued))
	return len(issued), nil
}
