package vultr

import (
	"context"
	"fmt"
	"slices"

	"github.com/vultr/govultr/v3"

	"github.com/devpilot/devpilot/controlplane/cloud"
)

var _ cloud.Lifecycle = (*Provider)(nil)

// Vultr's power calls answer 204 with no action to poll: the ActionRef
// holds the state that means done, and Action reads the instance.

// Power implements cloud.Lifecycle: reboot and power_cycle are
// POST /v2/instances/{id}/reboot (Vultr has one, hard, reboot); shutdown
// and power_off are …/halt (no graceful variant); power_on is …/start.
func (p *Provider) Power(ctx context.Context, id, action string) (cloud.ActionRef, error) {
	op := "instance " + action
	r := cloud.ActionRef{Provider: cloud.Vultr, Type: action, Instance: id}
	var call func(context.Context, string) error
	switch action {
	case cloud.PowerReboot, cloud.PowerCycle:
		call, r.Want = p.client.Instance.Reboot, cloud.StateActive
	case cloud.PowerShutdown, cloud.PowerOff:
		call, r.Want = p.client.Instance.Halt, cloud.StateOff
	case cloud.PowerOn:
		call, r.Want = p.client.Instance.Start, cloud.StateActive
	default:
		return cloud.ActionRef{}, local(op, cloud.CodeValidation, fmt.Sprintf("unknown power action %q", action),
			fmt.Sprintf("Use one of: %v", cloud.PowerActions))
	}
	cctx, capt := cloud.WithCapture(ctx)
	if err := call(cctx, id); err != nil {
		return cloud.ActionRef{}, p.fail(cctx, op, capt, err)
	}
	return r, nil
}

// Upgrades lists the plans an instance can be changed to
// (GET /v2/instances/{id}/upgrades?type=plans).
func (p *Provider) Upgrades(ctx context.Context, id string) ([]string, error) {
	cctx, capt := cloud.WithCapture(ctx)
	up, _, err := p.client.Instance.GetUpgrades(cctx, id)
	if err != nil {
		return nil, p.fail(cctx, "list instance upgrades", capt, err)
	}
	if up == nil {
		return []string{}, nil
	}
	return slices.Clone(up.Plans), nil
}

// Resize implements cloud.Lifecycle: PATCH /v2/instances/{id} {"plan"}.
// Vultr changes the plan of a running instance and reboots it itself; it
// offers only the plans Upgrades lists (never a smaller disk).
func (p *Provider) Resize(ctx context.Context, id, size string) (cloud.ActionRef, error) {
	const op = "change instance plan"
	cctx, capt := cloud.WithCapture(ctx)
	if _, _, err := p.client.Instance.Update(cctx, id, &govultr.InstanceUpdateReq{Plan: size}); err != nil {
		return cloud.ActionRef{}, p.fail(cctx, op, capt, err)
	}
	return cloud.ActionRef{Provider: cloud.Vultr, Type: "resize", Instance: id, Want: cloud.StateActive, WantSize: size}, nil
}

// Rename implements cloud.Lifecycle: the instance's label.
func (p *Provider) Rename(ctx context.Context, id, name string) (cloud.ActionRef, error) {
	const op = "rename instance"
	if name == "" || len(name) > 255 {
		return cloud.ActionRef{}, local(op, cloud.CodeValidation, "a label must be 1 to 255 characters", "")
	}
	cctx, capt := cloud.WithCapture(ctx)
	if _, _, err := p.client.Instance.Update(cctx, id, &govultr.InstanceUpdateReq{Label: name}); err != nil {
		return cloud.ActionRef{}, p.fail(cctx, op, capt, err)
	}
	return cloud.ActionRef{Provider: cloud.Vultr, Type: "rename", Instance: id}, nil
}

// Action implements cloud.Lifecycle by reading the instance: done once it
// is in the wanted state (and plan).
func (p *Provider) Action(ctx context.Context, r cloud.ActionRef) (cloud.ActionStatus, error) {
	if r.Want == "" {
		return cloud.ActionStatus{State: cloud.ActionCompleted}, nil
	}
	in, err := p.GetInstance(ctx, r.Instance)
	if err != nil {
		return cloud.ActionStatus{}, err
	}
	if in.State == r.Want && (r.WantSize == "" || in.Size == r.WantSize) {
		return cloud.ActionStatus{State: cloud.ActionCompleted}, nil
	}
	return cloud.ActionStatus{State: cloud.ActionInProgress}, nil
}

// Tag implements cloud.Lifecycle: the instance's tags plus tag
// (PATCH /v2/instances/{id} {"tags"} sets the whole list).
func (p *Provider) Tag(ctx context.Context, id, tag string) error {
	const op = "tag instance"
	in, err := p.GetInstance(ctx, id)
	if err != nil {
		return err
	}
	if slices.Contains(in.Tags, tag) {
		return nil
	}
	cctx, capt := cloud.WithCapture(ctx)
	if _, _, err := p.client.Instance.Update(cctx, id, &govultr.InstanceUpdateReq{Tags: append(in.Tags, tag)}); err != nil {
		return p.fail(cctx, op, capt, err)
	}
	return nil
}

// Snapshot takes a snapshot of an instance (POST /v2/snapshots) and
// returns its id.
func (p *Provider) Snapshot(ctx context.Context, id, description string) (string, error) {
	cctx, capt := cloud.WithCapture(ctx)
	sn, _, err := p.client.Snapshot.Create(cctx, &govultr.SnapshotReq{InstanceID: id, Description: description})
	if err != nil {
		return "", p.fail(cctx, "create snapshot", capt, err)
	}
	if sn == nil {
		return "", local("create snapshot", cloud.CodeProviderError, "the API created a snapshot but returned none", serverHint)
	}
	return sn.ID, nil
}

// Snapshots lists the account's snapshot ids (GET /v2/snapshots, all pages).
func (p *Provider) Snapshots(ctx context.Context) ([]string, error) {
	sns, err := listAllWith(ctx, p, "list snapshots", govultr.ListOptions{},
		func(ctx context.Context, lo *govultr.ListOptions) ([]govultr.Snapshot, *govultr.Meta, error) {
			r, m, _, err := p.client.Snapshot.List(ctx, lo)
			return r, m, err
		})
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(sns))
	for _, s := range sns {
		out = append(out, s.ID)
	}
	return out, nil
}

// Reinstall reinstalls an instance (POST /v2/instances/{id}/reinstall):
// its disk is wiped and the user-data runs again.
func (p *Provider) Reinstall(ctx context.Context, id string) (cloud.ActionRef, error) {
	cctx, capt := cloud.WithCapture(ctx)
	if _, _, err := p.client.Instance.Reinstall(cctx, id, &govultr.ReinstallReq{}); err != nil {
		return cloud.ActionRef{}, p.fail(cctx, "reinstall instance", capt, err)
	}
	return cloud.ActionRef{Provider: cloud.Vultr, Type: "reinstall", Instance: id, Want: cloud.StateActive}, nil
}

// SnapshotStatus returns a snapshot's status ("pending", "complete").
func (p *Provider) SnapshotStatus(ctx context.Context, id string) (string, error) {
	cctx, capt := cloud.WithCapture(ctx)
	sn, _, err := p.client.Snapshot.Get(cctx, id)
	if err != nil {
		return "", p.fail(cctx, "get snapshot", capt, err)
	}
	if sn == nil {
		return "", local("get snapshot", cloud.CodeProviderError, "the API returned no snapshot", serverHint)
	}
	return sn.Status, nil
}

// DeleteSnapshot deletes a snapshot; a missing one is not an error.
func (p *Provider) DeleteSnapshot(ctx context.Context, id string) error {
	cctx, capt := cloud.WithCapture(ctx)
	if err := p.client.Snapshot.Delete(cctx, id); err != nil {
		if e := p.fail(cctx, "delete snapshot", capt, err); !isNotFound(e) {
			return e
		}
	}
	return nil
}
