// Package vultr implements cloud.Provider for Vultr with govultr v3 over
// Devpilot's shared transport (cloud.NewHTTPClient): one client-side
// limiter, one retry policy (govultr's own retries are off), and exact error
// mapping from the captured status and body of the API's last answer.
package vultr

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vultr/govultr/v3"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/secrets"
)

// perPage is the page size of every list call (Vultr allows up to 500).
const perPage = 100

// Provider is a Vultr account reached with one API key.
type Provider struct {
	client *govultr.Client
	secret secrets.Value
	log    *zap.Logger

	pageSize int // per_page of list calls; tests shrink it to walk pages
}

var _ cloud.Provider = (*Provider)(nil)

// New builds a provider. cfg.BaseURL "" means https://api.vultr.com.
func New(cfg cloud.Config) (*Provider, error) {
	if cfg.Secret.IsZero() {
		return nil, &cloud.Error{Code: cloud.CodeInvalidCredentials, Provider: cloud.Vultr, Op: "configure",
			Message: "no API key given", Hint: keyHint}
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("vultr")
	hc := cloud.NewHTTPClient(cloud.TransportConfig{
		Token:             cfg.Secret,
		UserAgent:         "devpilot",
		Base:              cfg.Base,
		RequestsPerSecond: cloud.VultrRPS,
		Burst:             5,
		MaxRetries:        cfg.MaxRetries,
		MinWait:           cfg.MinWait,
		MaxWait:           cfg.MaxWait,
		Logger:            log,
		Metrics:           cfg.Metrics,
		OnRefused:         cfg.OnRefused,
		Provider:          cloud.Vultr,
	})
	c := govultr.NewClient(hc)
	c.SetRetryLimit(0) // the transport is the only retry policy
	if cfg.BaseURL != "" {
		if err := c.SetBaseURL(strings.TrimRight(cfg.BaseURL, "/")); err != nil {
			return nil, fmt.Errorf("vultr: base url: %w", err)
		}
	}
	return &Provider{client: c, secret: cfg.Secret, log: log, pageSize: perPage}, nil
}

// Name returns cloud.Vultr.
func (p *Provider) Name() string { return cloud.Vultr }

// ACLs a key needs for everything Devpilot does: deploy instances
// ("provisioning"), delete and change them ("subscriptions") and manage
// firewall groups ("firewall"). Listing and reading needs
// "subscriptions_view" too.
var writeACLs = []string{"provisioning", "subscriptions", "firewall"}

// Validate reads GET /v2/account. Account.Permissions are the user's ACLs.
// Write access is decided from them: every ACL in writeACLs present → yes;
// a non-empty list missing any of them → no; an empty or absent list →
// unknown (Vultr does not say whether an account owner's key always lists
// its ACLs).
func (p *Provider) Validate(ctx context.Context) (*cloud.Account, error) {
	ctx, capt := cloud.WithCapture(ctx)
	acct, _, err := p.client.Account.Get(ctx)
	if err != nil {
		return nil, p.fail(ctx, "validate API key", capt, err)
	}
	if acct == nil {
		return nil, &cloud.Error{Code: cloud.CodeProviderError, Provider: cloud.Vultr, Op: "validate API key",
			Message: "the API answered without an account"}
	}
	a := &cloud.Account{Name: acct.Name, Email: acct.Email, Permissions: slices.Clone(acct.ACL), Write: cloud.WriteUnknown}
	if len(acct.ACL) > 0 {
		a.Write = cloud.WriteYes
		if len(missingACLs(acct.ACL)) > 0 {
			a.Write = cloud.WriteNo
		}
	}
	return a, nil
}

func missingACLs(have []string) []string {
	var missing []string
	for _, a := range writeACLs {
		if !slices.Contains(have, a) {
			missing = append(missing, a)
		}
	}
	return missing
}

// Catalog lists regions, plans (every type, every page), each region's
// availability and the operating systems. A plan's Regions are the
// locations where it can be deployed now; SoldOut the locations it is
// offered in but that the region's availability omits.
func (p *Provider) Catalog(ctx context.Context) (*cloud.Catalog, error) {
	const op = "list catalog"
	regions, err := listAll(ctx, p, op, func(ctx context.Context, lo *govultr.ListOptions) ([]govultr.Region, *govultr.Meta, error) {
		r, m, _, err := p.client.Region.List(ctx, lo)
		return r, m, err
	})
	if err != nil {
		return nil, err
	}
	plans, err := listAll(ctx, p, op, func(ctx context.Context, lo *govultr.ListOptions) ([]govultr.Plan, *govultr.Meta, error) {
		r, m, _, err := p.client.Plan.List(ctx, "", lo)
		return r, m, err
	})
	if err != nil {
		return nil, err
	}
	oses, err := listAll(ctx, p, op, func(ctx context.Context, lo *govultr.ListOptions) ([]govultr.OS, *govultr.Meta, error) {
		r, m, _, err := p.client.OS.List(ctx, lo)
		return r, m, err
	})
	if err != nil {
		return nil, err
	}
	avail, err := p.availability(ctx, op, regionIDs(regions))
	if err != nil {
		return nil, err
	}

	cat := &cloud.Catalog{Provider: cloud.Vultr, FetchedAt: time.Now().UTC(),
		Regions: []cloud.Region{}, Sizes: []cloud.Size{}, Images: []cloud.Image{}}
	for _, r := range regions {
		name := r.City
		if r.Country != "" {
			name += " (" + r.Country + ")"
		}
		cat.Regions = append(cat.Regions, cloud.Region{ID: r.ID, Name: name, Available: len(avail[r.ID]) > 0})
	}
	for _, pl := range plans {
		s := cloud.Size{ID: pl.ID, VCPUs: pl.VCPUCount, MemoryMB: pl.RAM, DiskGB: pl.Disk,
			PriceMonthly: float64(pl.MonthlyCost), Regions: []string{}, SoldOut: []string{}}
		for _, loc := range pl.Locations {
			if avail[loc][pl.ID] {
				s.Regions = append(s.Regions, loc)
			} else {
				s.SoldOut = append(s.SoldOut, loc)
			}
		}
		cat.Sizes = append(cat.Sizes, s)
	}
	for _, o := range oses {
		switch o.Family { // pseudo entries that need iso/snapshot/backup/app ids instead
		case "iso", "snapshot", "backup", "application":
			continue
		}
		id := strconv.Itoa(o.ID)
		cat.Images = append(cat.Images, cloud.Image{ID: id, Name: o.Name, Distribution: o.Family,
			Neutral: cloud.NeutralName(cloud.Vultr, id)})
	}
	return cat, nil
}

func regionIDs(rs []govultr.Region) []string {
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.ID
	}
	return ids
}

// availability asks each region which plans it can deploy now.
func (p *Provider) availability(ctx context.Context, op string, regions []string) (map[string]map[string]bool, error) {
	out := make(map[string]map[string]bool, len(regions))
	for _, id := range regions {
		cctx, capt := cloud.WithCapture(ctx)
		pa, _, err := p.client.Region.Availability(cctx, id, "")
		if err != nil {
			return nil, p.fail(cctx, op, capt, err)
		}
		set := map[string]bool{}
		if pa != nil {
			for _, pl := range pa.AvailablePlans {
				set[pl] = true
			}
		}
		out[id] = set
	}
	return out, nil
}

// listAll follows Vultr's cursors until meta.links.next is empty.
func listAll[T any](ctx context.Context, p *Provider, op string, list func(context.Context, *govultr.ListOptions) ([]T, *govultr.Meta, error)) ([]T, error) {
	return listAllWith(ctx, p, op, govultr.ListOptions{}, list)
}

func listAllWith[T any](ctx context.Context, p *Provider, op string, base govultr.ListOptions, list func(context.Context, *govultr.ListOptions) ([]T, *govultr.Meta, error)) ([]T, error) {
	var all []T
	lo := base
	lo.PerPage = p.pageSize
	seen := map[string]bool{}
	for {
		cctx, capt := cloud.WithCapture(ctx)
		items, meta, err := list(cctx, &lo)
		if err != nil {
			return nil, p.fail(cctx, op, capt, err)
		}
		all = append(all, items...)
		if meta == nil || meta.Links == nil || meta.Links.Next == "" || seen[meta.Links.Next] {
			return all, nil
		}
		seen[meta.Links.Next] = true
		lo.Cursor = meta.Links.Next
	}
}

// regionsWithPlan returns where plan can be deployed now, for the hint of a
// sold-out error; best effort, nil when it cannot tell.
func (p *Provider) regionsWithPlan(ctx context.Context, planID string) []string {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	plans, err := listAll(ctx, p, "list plans", func(ctx context.Context, lo *govultr.ListOptions) ([]govultr.Plan, *govultr.Meta, error) {
		r, m, _, err := p.client.Plan.List(ctx, "", lo)
		return r, m, err
	})
	if err != nil {
		return nil
	}
	i := slices.IndexFunc(plans, func(pl govultr.Plan) bool { return pl.ID == planID })
	if i < 0 {
		return nil
	}
	avail, err := p.availability(ctx, "list availability", plans[i].Locations)
	if err != nil {
		return nil
	}
	var out []string
	for _, loc := range plans[i].Locations {
		if avail[loc][planID] {
			out = append(out, loc)
		}
	}
	sort.Strings(out)
	return out
}
