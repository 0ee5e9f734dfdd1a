package vultr

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vultr/govultr/v3"

	"github.com/devpilot/devpilot/controlplane/cloud"
)

// EnsureSSHKey returns the id of the account's key whose content (type and
// base64 blob; the comment is ignored) equals authorizedKey, creating it
// under name when there is none.
func (p *Provider) EnsureSSHKey(ctx context.Context, name, authorizedKey string) (string, error) {
	const op = "ensure SSH key"
	want, ok := keyContent(authorizedKey)
	if !ok {
		return "", local(op, cloud.CodeValidation, "not an OpenSSH public key (authorized_keys format)",
			"Give the public key as one line: \"ssh-ed25519 AAAA… comment\".")
	}
	keys, err := listAll(ctx, p, op, func(ctx context.Context, lo *govultr.ListOptions) ([]govultr.SSHKey, *govultr.Meta, error) {
		r, m, _, err := p.client.SSHKey.List(ctx, lo)
		return r, m, err
	})
	if err != nil {
		return "", err
	}
	for _, k := range keys {
		if have, ok := keyContent(k.SSHKey); ok && have == want {
			return k.ID, nil
		}
	}
	cctx, capt := cloud.WithCapture(ctx)
	k, _, err := p.client.SSHKey.Create(cctx, &govultr.SSHKeyReq{Name: name, SSHKey: strings.TrimSpace(authorizedKey)})
	if err != nil {
		return "", p.fail(cctx, op, capt, err)
	}
	if k == nil || k.ID == "" {
		return "", local(op, cloud.CodeProviderError, "the API created the key but returned no id", serverHint)
	}
	return k.ID, nil
}

// keyContent returns "type blob" of an authorized_keys line.
func keyContent(line string) (string, bool) {
	f := strings.Fields(line)
	if len(f) < 2 {
		return "", false
	}
	if _, err := base64.StdEncoding.DecodeString(f[1]); err != nil {
		return "", false
	}
	return f[0] + " " + f[1], true
}

// firewallRuleKey identifies a rule by what it lets in.
type firewallRuleKey struct {
	ipType, protocol, port, subnet string
	size                           int
	source                         string
}

// EnsureFirewall finds the firewall group whose description is spec.Name
// (the oldest, should there be several) or creates it, then makes its rules
// exactly: TCP spec.Ports from 0.0.0.0/0 (v4) and ::/0 (v6). Other rules are
// deleted. Vultr groups accept only what a rule allows; everything else
// inbound is dropped and outbound is open.
func (p *Provider) EnsureFirewall(ctx context.Context, spec cloud.FirewallSpec) (string, error) {
	id, _, err := p.RepairFirewall(ctx, spec)
	return id, err
}

// RepairFirewall implements cloud.FirewallRepairer: EnsureFirewall that
// also reports whether it changed (or created) the group's rules.
func (p *Provider) RepairFirewall(ctx context.Context, spec cloud.FirewallSpec) (string, bool, error) {
	const op = "ensure firewall group"
	if spec.Name == "" {
		return "", false, local(op, cloud.CodeValidation, "firewall name is empty", "")
	}
	want := map[firewallRuleKey]bool{}
	for _, port := range spec.Ports {
		if port < 1 || port > 65535 {
			return "", false, local(op, cloud.CodeValidation, fmt.Sprintf("port %d is out of range", port), "Ports are 1 to 65535.")
		}
		ps := strconv.Itoa(port)
		want[firewallRuleKey{"v4", "tcp", ps, "0.0.0.0", 0, ""}] = true
		want[firewallRuleKey{"v6", "tcp", ps, "::", 0, ""}] = true
	}
	if len(want)/2 > 25 {
		return "", false, local(op, cloud.CodeValidation, "too many ports", "A Vultr firewall group holds at most 50 rules: 25 ports for IPv4 and IPv6.")
	}

	groups, err := listAll(ctx, p, op, func(ctx context.Context, lo *govultr.ListOptions) ([]govultr.FirewallGroup, *govultr.Meta, error) {
		r, m, _, err := p.client.FirewallGroup.List(ctx, lo)
		return r, m, err
	})
	if err != nil {
		return "", false, err
	}
	var id string
	changed := false
	if i := slices.IndexFunc(groups, func(g govultr.FirewallGroup) bool { return g.Description == spec.Name }); i >= 0 {
		id = groups[i].ID
	} else {
		cctx, capt := cloud.WithCapture(ctx)
		g, _, err := p.client.FirewallGroup.Create(cctx, &govultr.FirewallGroupReq{Description: spec.Name})
		if err != nil {
			return "", false, p.fail(cctx, op, capt, err)
		}
		if g == nil || g.ID == "" {
			return "", false, local(op, cloud.CodeProviderError, "the API created the firewall group but returned no id", serverHint)
		}
		id = g.ID
		changed = true
	}

	rules, err := listAll(ctx, p, op, func(ctx context.Context, lo *govultr.ListOptions) ([]govultr.FirewallRule, *govultr.Meta, error) {
		r, m, _, err := p.client.FirewallRule.List(ctx, id, lo)
		return r, m, err
	})
	if err != nil {
		return "", false, err
	}
	have := map[firewallRuleKey]bool{}
	for _, r := range rules {
		k := firewallRuleKey{r.IPType, strings.ToLower(r.Protocol), r.Port, r.Subnet, r.SubnetSize, r.Source}
		if want[k] && !have[k] {
			have[k] = true
			continue
		}
		changed = true
		cctx, capt := cloud.WithCapture(ctx)
		if err := p.client.FirewallRule.Delete(cctx, id, r.ID); err != nil {
			if e := p.fail(cctx, op, capt, err); !isNotFound(e) {
				return "", false, e
			}
		}
	}
	for _, k := range sortedRuleKeys(want) {
		if have[k] {
			continue
		}
		changed = true
		cctx, capt := cloud.WithCapture(ctx)
		_, _, err := p.client.FirewallRule.Create(cctx, id, &govultr.FirewallRuleReq{
			IPType: k.ipType, Protocol: k.protocol, Subnet: k.subnet, SubnetSize: k.size, Port: k.port,
			Notes: "devpilot",
		})
		if err != nil {
			return "", false, p.fail(cctx, op, capt, err)
		}
	}
	return id, changed, nil
}

func sortedRuleKeys(m map[firewallRuleKey]bool) []firewallRuleKey {
	keys := make([]firewallRuleKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b firewallRuleKey) int {
		pa, _ := strconv.Atoi(a.port)
		pb, _ := strconv.Atoi(b.port)
		if pa != pb {
			return pa - pb
		}
		return strings.Compare(a.ipType, b.ipType)
	})
	return keys
}

// CreateInstance deploys one instance: os_id from spec.Image, user data
// base64-encoded, the firewall group attached at creation.
func (p *Provider) CreateInstance(ctx context.Context, spec cloud.InstanceSpec) (*cloud.Instance, error) {
	const op = "create instance"
	osID, err := strconv.Atoi(spec.Image)
	if err != nil || osID <= 0 {
		return nil, local(op, cloud.CodeValidation, fmt.Sprintf("image %q is not a Vultr os id", spec.Image),
			"Vultr images are numeric os ids such as 2136 (Debian 12), or the neutral names debian-12 and ubuntu-24.04.")
	}
	req := &govultr.InstanceCreateReq{
		Region:          spec.Region,
		Plan:            spec.Size,
		Label:           spec.Name,
		Hostname:        spec.Name,
		OsID:            osID,
		Tags:            spec.Tags,
		SSHKeys:         spec.SSHKeyIDs,
		FirewallGroupID: spec.FirewallID,
	}
	if spec.UserData != "" {
		req.UserData = base64.StdEncoding.EncodeToString([]byte(spec.UserData))
	}
	cctx, capt := cloud.WithCapture(ctx)
	in, _, err := p.client.Instance.Create(cctx, req)
	if err != nil {
		e := p.fail(cctx, op, capt, err)
		var ce *cloud.Error
		if errors.As(e, &ce) && ce.Code == cloud.CodeUnavailable {
			ce.Hint = p.soldOutHint(ctx, spec.Size, spec.Region)
		}
		return nil, e
	}
	if in == nil {
		return nil, local(op, cloud.CodeProviderError, "the API created the instance but returned none", serverHint)
	}
	out := toInstance(*in)
	return &out, nil
}

func (p *Provider) soldOutHint(ctx context.Context, plan, region string) string {
	where := p.regionsWithPlan(ctx, plan)
	where = slices.DeleteFunc(where, func(r string) bool { return r == region })
	if len(where) == 0 {
		return fmt.Sprintf("Plan %s cannot be deployed in %s right now and is not available elsewhere at the moment; pick another plan.", plan, region)
	}
	return fmt.Sprintf("Plan %s cannot be deployed in %s right now. It is available now in: %s.", plan, region, strings.Join(where, ", "))
}

// GetInstance returns one instance; a missing one is CodeNotFound.
func (p *Provider) GetInstance(ctx context.Context, id string) (*cloud.Instance, error) {
	cctx, capt := cloud.WithCapture(ctx)
	in, _, err := p.client.Instance.Get(cctx, id)
	if err != nil {
		return nil, p.fail(cctx, "get instance", capt, err)
	}
	if in == nil {
		return nil, local("get instance", cloud.CodeProviderError, "the API returned no instance", serverHint)
	}
	out := toInstance(*in)
	return &out, nil
}

// ListInstances returns every instance tagged tag, across all pages.
func (p *Provider) ListInstances(ctx context.Context, tag string) ([]cloud.Instance, error) {
	ins, err := listAllWith(ctx, p, "list instances", govultr.ListOptions{Tag: tag},
		func(ctx context.Context, lo *govultr.ListOptions) ([]govultr.Instance, *govultr.Meta, error) {
			r, m, _, err := p.client.Instance.List(ctx, lo)
			return r, m, err
		})
	if err != nil {
		return nil, err
	}
	out := []cloud.Instance{}
	for _, in := range ins {
		if tag == "" || slices.Contains(in.Tags, tag) {
			out = append(out, toInstance(in))
		}
	}
	return out, nil
}

// DeleteInstance deletes an instance; a missing one is not an error.
func (p *Provider) DeleteInstance(ctx context.Context, id string) error {
	cctx, capt := cloud.WithCapture(ctx)
	if err := p.client.Instance.Delete(cctx, id); err != nil {
		if e := p.fail(cctx, "delete instance", capt, err); !isNotFound(e) {
			return e
		}
	}
	return nil
}

// DeleteFirewall deletes a firewall group; a missing one is not an error.
func (p *Provider) DeleteFirewall(ctx context.Context, id string) error {
	cctx, capt := cloud.WithCapture(ctx)
	if err := p.client.FirewallGroup.Delete(cctx, id); err != nil {
		if e := p.fail(cctx, "delete firewall group", capt, err); !isNotFound(e) {
			return e
		}
	}
	return nil
}

// toInstance normalises a Vultr instance. It is active once status is
// "active", power "running" and server_status "ok"; "pending" or an active
// instance still booting is new; "stopped" is off.
func toInstance(in govultr.Instance) cloud.Instance {
	out := cloud.Instance{ID: in.ID, Name: in.Label, Region: in.Region, Size: in.Plan,
		Tags: slices.Clone(in.Tags), FirewallID: in.FirewallGroupID}
	if out.Tags == nil {
		out.Tags = []string{}
	}
	if in.MainIP != "" && in.MainIP != "0.0.0.0" {
		out.PublicIPv4 = in.MainIP
	}
	if t, err := time.Parse(time.RFC3339, in.DateCreated); err == nil {
		out.CreatedAt = t
	}
	switch {
	case in.Status == "pending":
		out.State = cloud.StateNew
	case in.Status == "active" && in.PowerStatus == "stopped":
		out.State = cloud.StateOff
	case in.Status == "active" && in.ServerStatus == "ok":
		out.State = cloud.StateActive
	case in.Status == "active":
		out.State = cloud.StateNew
	default:
		out.State = cloud.StateOther
	}
	return out
}
