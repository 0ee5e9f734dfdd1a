package digitalocean

import (
	"context"
	"fmt"
	"slices"
	"strconv"

	"github.com/digitalocean/godo"

	"github.com/devpilot/devpilot/controlplane/cloud"
)

var _ cloud.Lifecycle = (*Provider)(nil)

func (p *Provider) dropletID(op, id string) (int, error) {
	n, err := strconv.Atoi(id)
	if err != nil || n <= 0 {
		return 0, &cloud.Error{Code: cloud.CodeNotFound, Provider: cloud.DigitalOcean, Op: op,
			Message: fmt.Sprintf("%q is not a droplet id", id)}
	}
	return n, nil
}

func ref(typ, id string, a *godo.Action) cloud.ActionRef {
	r := cloud.ActionRef{Provider: cloud.DigitalOcean, Type: typ, Instance: id, ID: strconv.Itoa(a.ID)}
	if a.StartedAt != nil {
		r.Started = a.StartedAt.Time
	}
	return r
}

// Power implements cloud.Lifecycle with POST /v2/droplets/{id}/actions.
func (p *Provider) Power(ctx context.Context, id, action string) (cloud.ActionRef, error) {
	op := "droplet " + action
	n, err := p.dropletID(op, id)
	if err != nil {
		return cloud.ActionRef{}, err
	}
	var a *godo.Action
	switch action {
	case cloud.PowerReboot:
		a, _, err = p.client.DropletActions.Reboot(ctx, n)
	case cloud.PowerCycle:
		a, _, err = p.client.DropletActions.PowerCycle(ctx, n)
	case cloud.PowerShutdown:
		a, _, err = p.client.DropletActions.Shutdown(ctx, n)
	case cloud.PowerOff:
		a, _, err = p.client.DropletActions.PowerOff(ctx, n)
	case cloud.PowerOn:
		a, _, err = p.client.DropletActions.PowerOn(ctx, n)
	default:
		return cloud.ActionRef{}, &cloud.Error{Code: cloud.CodeValidation, Provider: cloud.DigitalOcean, Op: op,
			Message: fmt.Sprintf("unknown power action %q", action), Hint: "Use one of: " + fmt.Sprint(cloud.PowerActions)}
	}
	if err != nil {
		return cloud.ActionRef{}, p.apiError(op, err)
	}
	return ref(action, id, a), nil
}

// Resize implements cloud.Lifecycle: a permanent resize (disk included);
// the droplet must be off.
func (p *Provider) Resize(ctx context.Context, id, size string) (cloud.ActionRef, error) {
	const op = "resize droplet"
	n, err := p.dropletID(op, id)
	if err != nil {
		return cloud.ActionRef{}, err
	}
	a, _, err := p.client.DropletActions.Resize(ctx, n, size, true)
	if err != nil {
		return cloud.ActionRef{}, p.apiError(op, err)
	}
	return ref("resize", id, a), nil
}

// Rename implements cloud.Lifecycle.
func (p *Provider) Rename(ctx context.Context, id, name string) (cloud.ActionRef, error) {
	const op = "rename droplet"
	n, err := p.dropletID(op, id)
	if err != nil {
		return cloud.ActionRef{}, err
	}
	if len(name) > 255 || !dropletNameRe.MatchString(name) {
		return cloud.ActionRef{}, &cloud.Error{Code: cloud.CodeValidation, Provider: cloud.DigitalOcean, Op: op,
			Message: fmt.Sprintf("droplet name %q must be a hostname: letters, digits, dots and dashes", name)}
	}
	a, _, err := p.client.DropletActions.Rename(ctx, n, name)
	if err != nil {
		return cloud.ActionRef{}, p.apiError(op, err)
	}
	return ref("rename", id, a), nil
}

// Action implements cloud.Lifecycle with GET /v2/actions/{id}.
func (p *Provider) Action(ctx context.Context, r cloud.ActionRef) (cloud.ActionStatus, error) {
	const op = "get action"
	n, err := strconv.Atoi(r.ID)
	if err != nil {
		return cloud.ActionStatus{}, &cloud.Error{Code: cloud.CodeNotFound, Provider: cloud.DigitalOcean, Op: op,
			Message: fmt.Sprintf("%q is not an action id", r.ID)}
	}
	a, _, err := p.client.Actions.Get(ctx, n)
	if err != nil {
		return cloud.ActionStatus{}, p.apiError(op, err)
	}
	switch a.Status {
	case godo.ActionCompleted:
		return cloud.ActionStatus{State: cloud.ActionCompleted}, nil
	case "errored":
		return cloud.ActionStatus{State: cloud.ActionErrored}, nil
	default:
		return cloud.ActionStatus{State: cloud.ActionInProgress}, nil
	}
}

// Tag implements cloud.Lifecycle (POST /v2/tags/{tag}/resources, creating
// the tag first when it was deleted).
func (p *Provider) Tag(ctx context.Context, id, tag string) error {
	const op = "tag droplet"
	if _, err := p.dropletID(op, id); err != nil {
		return err
	}
	if !validTag(tag) {
		return &cloud.Error{Code: cloud.CodeValidation, Provider: cloud.DigitalOcean, Op: op,
			Message: fmt.Sprintf("tag %q must be letters, digits, colons, dashes and underscores", tag)}
	}
	if err := p.ensureTag(ctx, op, tag); err != nil {
		return err
	}
	_, err := p.client.Tags.TagResources(ctx, tag, &godo.TagResourcesRequest{
		Resources: []godo.Resource{{ID: id, Type: godo.DropletResourceType}},
	})
	if err != nil {
		return p.apiError(op, err)
	}
	return nil
}

// Tags lists the account's tags (GET /v2/tags, all pages).
func (p *Provider) Tags(ctx context.Context) ([]string, error) {
	ts, err := list(ctx, p.perPage, p.client.Tags.List)
	if err != nil {
		return nil, p.apiError("list tags", err)
	}
	out := make([]string, 0, len(ts))
	for _, t := range ts {
		out = append(out, t.Name)
	}
	slices.Sort(out)
	return out, nil
}

// DeleteTag deletes a tag (DELETE /v2/tags/{tag}); a missing one is no error.
func (p *Provider) DeleteTag(ctx context.Context, tag string) error {
	if _, err := p.client.Tags.Delete(ctx, tag); err != nil {
		ce := p.apiError("delete tag", err)
		if ce.Code == cloud.CodeNotFound {
			return nil
		}
		return ce
	}
	return nil
}

// DeleteInstancesByTag deletes every droplet carrying tag
// (DELETE /v2/droplets?tag_name=).
func (p *Provider) DeleteInstancesByTag(ctx context.Context, tag string) error {
	if _, err := p.client.Droplets.DeleteByTag(ctx, tag); err != nil {
		return p.apiError("delete droplets by tag", err)
	}
	return nil
}

// AssignFirewall adds droplets to a firewall (POST /v2/firewalls/{id}/droplets).
func (p *Provider) AssignFirewall(ctx context.Context, firewallID string, dropletIDs ...int) error {
	if _, err := p.client.Firewalls.AddDroplets(ctx, firewallID, dropletIDs...); err != nil {
		return p.apiError("assign firewall", err)
	}
	return nil
}

// UnassignFirewall removes droplets from a firewall (DELETE /v2/firewalls/{id}/droplets).
func (p *Provider) UnassignFirewall(ctx context.Context, firewallID string, dropletIDs ...int) error {
	if _, err := p.client.Firewalls.RemoveDroplets(ctx, firewallID, dropletIDs...); err != nil {
		return p.apiError("unassign firewall", err)
	}
	return nil
}

// ListActions lists a droplet's actions (GET /v2/droplets/{id}/actions, all
// pages), oldest first.
func (p *Provider) ListActions(ctx context.Context, id string) ([]cloud.ActionRef, error) {
	const op = "list droplet actions"
	n, err := p.dropletID(op, id)
	if err != nil {
		return nil, err
	}
	as, err := list(ctx, p.perPage, func(ctx context.Context, o *godo.ListOptions) ([]godo.Action, *godo.Response, error) {
		return p.client.Droplets.Actions(ctx, n, o)
	})
	if err != nil {
		return nil, p.apiError(op, err)
	}
	out := make([]cloud.ActionRef, 0, len(as))
	for i := range as {
		out = append(out, ref(as[i].Type, id, &as[i]))
	}
	return out, nil
}

// Snapshot takes a snapshot of a droplet (a droplet action).
func (p *Provider) Snapshot(ctx context.Context, id, name string) (cloud.ActionRef, error) {
	const op = "snapshot droplet"
	n, err := p.dropletID(op, id)
	if err != nil {
		return cloud.ActionRef{}, err
	}
	a, _, err := p.client.DropletActions.Snapshot(ctx, n, name)
	if err != nil {
		return cloud.ActionRef{}, p.apiError(op, err)
	}
	return ref("snapshot", id, a), nil
}
