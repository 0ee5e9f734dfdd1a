// Package digitalocean implements cloud.Provider for DigitalOcean with godo,
// on the shared transport (cloud.NewHTTPClient: bearer auth, client-side
// limiter, the one retry policy). godo's own retries stay off.
package digitalocean

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/digitalocean/godo"
	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/secrets"
)

// Provider is a DigitalOcean account reached with one token.
type Provider struct {
	client  *godo.Client
	secret  secrets.Value
	log     *zap.Logger
	perPage int // page size for list calls; tests lower it to cross pages
}

var _ cloud.Provider = (*Provider)(nil)

// New builds a provider for cfg.Secret (a DigitalOcean API token).
func New(cfg cloud.Config) (*Provider, error) {
	if cfg.Secret.IsZero() {
		return nil, &cloud.Error{
			Code: cloud.CodeInvalidCredentials, Provider: cloud.DigitalOcean, Op: "configure",
			Message: "no API token given", Hint: hintNewToken,
		}
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("digitalocean")
	hc := cloud.NewHTTPClient(cloud.TransportConfig{
		Token:     cfg.Secret,
		UserAgent: "devpilot",
		Base:      cfg.Base,
		// 240/min steady plus a burst of 10 never exceeds the API's 250/min.
		RequestsPerSecond: cloud.DigitalOceanRPS,
		Burst:             10,
		MaxRetries:        cfg.MaxRetries,
		MinWait:           cfg.MinWait,
		MaxWait:           cfg.MaxWait,
		Logger:            log,
		Metrics:           cfg.Metrics,
		OnRefused:         cfg.OnRefused,
		Provider:          cloud.DigitalOcean,
	})
	var opts []godo.ClientOpt
	if cfg.BaseURL != "" {
		// godo resolves most paths relative to the base, so it needs the
		// trailing slash; firewall paths are absolute either way.
		opts = append(opts, godo.SetBaseURL(strings.TrimSuffix(cfg.BaseURL, "/")+"/"))
	}
	// No godo.WithRetryAndBackoffs: the transport is the only retry policy.
	client, err := godo.New(hc, opts...)
	if err != nil {
		return nil, fmt.Errorf("digitalocean: base url: %w", err)
	}
	return &Provider{client: client, secret: cfg.Secret, log: log, perPage: 200}, nil
}

// Name implements cloud.Provider.
func (p *Provider) Name() string { return cloud.DigitalOcean }

// Validate reads the account, then probes for write scope.
//
// The probe is POST /v2/droplets with {"name":"devpilot-write-probe",
// "size":"","image":0}: no size has an empty slug and no image has id 0,
// so the API cannot create anything from it whatever the token may do. A
// token without write scope gets 403 (WriteNo, and an insufficient_scope
// error is returned together with the account); a 400/422 validation
// refusal means the request got past the scope check (WriteYes). Anything
// else (429 or 5xx after retries, network failure) proves nothing:
// WriteUnknown, no error.
//
// Caveat: whether the real API checks scope before validating the body is
// unverified (API-NOTES §2). If it validated first, a read-only token would
// also get 422 and be reported WriteYes; the first real create would then
// fail with 403, which CreateInstance reports as insufficient_scope with
// the same hint. The probe can therefore over-report write access but
// never under-report it.
func (p *Provider) Validate(ctx context.Context) (*cloud.Account, error) {
	const op = "validate token"
	a, _, err := p.client.Account.Get(ctx)
	if err != nil {
		return nil, p.apiError(op, err)
	}
	acct := &cloud.Account{
		Name: a.Name, Email: a.Email, Status: a.Status, InstanceLimit: a.DropletLimit, Write: cloud.WriteUnknown,
	}
	if a.Team != nil && a.Team.Name != "" && acct.Name == "" {
		acct.Name = a.Team.Name
	}
	switch a.Status {
	case "locked":
		msg := "the DigitalOcean account is locked"
		if m := strings.TrimSpace(a.StatusMessage); m != "" {
			msg += ": " + p.clean(m)
		}
		return acct, &cloud.Error{
			Code: cloud.CodeInvalidCredentials, Provider: cloud.DigitalOcean, Op: op, Status: http.StatusOK, Message: msg,
			Hint: "Sign in at " + accountURL + " to see why the account is locked (often an unpaid balance or a " +
				"pending verification) and resolve it with DigitalOcean; nothing can be created until then.",
		}
	case "warning":
		p.log.Warn("digitalocean account is in warning state", zap.String("status_message", p.clean(a.StatusMessage)))
	}

	d, _, err := p.client.Droplets.Create(ctx, &godo.DropletCreateRequest{
		Name:    "devpilot-write-probe",
		Size:    "",
		Image:   godo.DropletCreateImage{ID: 0},
		SSHKeys: []godo.DropletCreateSSHKey{},
		Tags:    []string{},
	})
	if err == nil {
		// Cannot happen with a real or simulated API; if it ever does,
		// take the droplet away again at once.
		p.log.Error("write probe unexpectedly created a droplet; deleting it", zap.Int("droplet", d.ID))
		if _, derr := p.client.Droplets.Delete(ctx, d.ID); derr != nil {
			p.log.Error("could not delete the probe droplet", zap.Int("droplet", d.ID), zap.Error(p.apiError("delete droplet", derr)))
		}
		acct.Write = cloud.WriteYes
		return acct, nil
	}
	ce := p.apiError(op, err)
	switch ce.Status {
	case http.StatusForbidden:
		acct.Write = cloud.WriteNo
		ce.Message = "the token can read but not create droplets (" + ce.Message + ")"
		return acct, ce
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		acct.Write = cloud.WriteYes
	case http.StatusUnauthorized:
		return nil, ce
	default:
		p.log.Warn("write probe was inconclusive", zap.Int("status", ce.Status), zap.String("code", string(ce.Code)))
	}
	return acct, nil
}

// list fetches every page of a godo list call.
func list[T any](ctx context.Context, perPage int, call func(context.Context, *godo.ListOptions) ([]T, *godo.Response, error)) ([]T, error) {
	var all []T
	for page := 1; page <= 1000; page++ {
		items, resp, err := call(ctx, &godo.ListOptions{Page: page, PerPage: perPage})
		if err != nil {
			return nil, err
		}
		all = append(all, items...)
		if resp == nil || resp.Links == nil || resp.Links.IsLastPage() || len(items) == 0 {
			break
		}
	}
	return all, nil
}

// Catalog implements cloud.Provider: regions, sizes and distribution
// images. A size's Regions are where it can be created now (size
// available, region available, size in the region's current sizes);
// SoldOut are regions the size lists as offered but that cannot create it.
func (p *Provider) Catalog(ctx context.Context) (*cloud.Catalog, error) {
	const op = "list catalog"
	regions, err := list(ctx, p.perPage, p.client.Regions.List)
	if err != nil {
		return nil, p.apiError(op, err)
	}
	sizes, err := list(ctx, p.perPage, p.client.Sizes.List)
	if err != nil {
		return nil, p.apiError(op, err)
	}
	images, err := list(ctx, p.perPage, p.client.Images.ListDistribution)
	if err != nil {
		return nil, p.apiError(op, err)
	}
	c := &cloud.Catalog{Provider: cloud.DigitalOcean, Regions: []cloud.Region{}, Sizes: []cloud.Size{}, Images: []cloud.Image{}, FetchedAt: time.Now().UTC()}
	for _, r := range regions {
		c.Regions = append(c.Regions, cloud.Region{ID: r.Slug, Name: r.Name, Available: r.Available})
	}
	for _, s := range sizes {
		cs := cloud.Size{
			ID: s.Slug, VCPUs: s.Vcpus, MemoryMB: s.Memory, DiskGB: s.Disk, PriceMonthly: s.PriceMonthly,
			Regions: []string{}, SoldOut: []string{},
		}
		for _, r := range regions {
			if s.Available && r.Available && slices.Contains(r.Sizes, s.Slug) {
				cs.Regions = append(cs.Regions, r.Slug)
			}
		}
		for _, offered := range s.Regions {
			if !slices.Contains(cs.Regions, offered) {
				cs.SoldOut = append(cs.SoldOut, offered)
			}
		}
		slices.Sort(cs.Regions)
		slices.Sort(cs.SoldOut)
		c.Sizes = append(c.Sizes, cs)
	}
	for _, im := range images {
		id := im.Slug
		if id == "" {
			id = strconv.Itoa(im.ID)
		}
		name := strings.TrimSpace(im.Distribution + " " + im.Name)
		if strings.HasPrefix(im.Name, im.Distribution) {
			name = im.Name
		}
		c.Images = append(c.Images, cloud.Image{ID: id, Name: name, Distribution: im.Distribution, Neutral: cloud.NeutralName(cloud.DigitalOcean, id)})
	}
	return c, nil
}

// EnsureSSHKey implements cloud.Provider. Keys are found by their MD5
// fingerprint; the returned reference is the key's numeric id.
func (p *Provider) EnsureSSHKey(ctx context.Context, name, authorizedKey string) (string, error) {
	const op = "ensure ssh key"
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(authorizedKey))
	if err != nil {
		return "", &cloud.Error{Code: cloud.CodeValidation, Provider: cloud.DigitalOcean, Op: op,
			Message: "not an OpenSSH public key", Hint: "Pass one authorized_keys line such as \"ssh-ed25519 AAAA… comment\"."}
	}
	fp := ssh.FingerprintLegacyMD5(pub)
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
	for attempt := 0; attempt < 2; attempt++ {
		k, _, err := p.client.Keys.GetByFingerprint(ctx, fp)
		if err == nil {
			return strconv.Itoa(k.ID), nil
		}
		if ce := p.apiError(op, err); ce.Code != cloud.CodeNotFound {
			return "", ce
		}
		k, _, err = p.client.Keys.Create(ctx, &godo.KeyCreateRequest{Name: name, PublicKey: line})
		if err == nil {
			return strconv.Itoa(k.ID), nil
		}
		ce := p.apiError(op, err)
		if ce.Status != http.StatusUnprocessableEntity || !strings.Contains(strings.ToLower(ce.Message), "already in use") {
			return "", ce
		}
		// Someone uploaded it between our lookup and create: look again.
	}
	return "", &cloud.Error{Code: cloud.CodeProviderError, Provider: cloud.DigitalOcean, Op: op,
		Message: "the key is reported as already uploaded but cannot be found by its fingerprint " + fp,
		Hint:    "Check the SSH keys under Settings → Security in the DigitalOcean control panel."}
}

var firewallNameRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9.\-]+$`)

var everywhere = []string{"0.0.0.0/0", "::/0"}

// desiredFirewall is the full firewall EnsureFirewall wants.
func desiredFirewall(spec cloud.FirewallSpec, keep *godo.Firewall) *godo.FirewallRequest {
	ports := slices.Clone(spec.Ports)
	slices.Sort(ports)
	ports = slices.Compact(ports)
	req := &godo.FirewallRequest{
		Name:         spec.Name,
		InboundRules: []godo.InboundRule{},
		OutboundRules: []godo.OutboundRule{
			{Protocol: "tcp", PortRange: "0", Destinations: &godo.Destinations{Addresses: everywhere}},
			{Protocol: "udp", PortRange: "0", Destinations: &godo.Destinations{Addresses: everywhere}},
			{Protocol: "icmp", PortRange: "0", Destinations: &godo.Destinations{Addresses: everywhere}},
		},
		DropletIDs: []int{},
		Tags:       []string{spec.Tag},
	}
	for _, port := range ports {
		req.InboundRules = append(req.InboundRules, godo.InboundRule{
			Protocol: "tcp", PortRange: strconv.Itoa(port), Sources: &godo.Sources{Addresses: everywhere},
		})
	}
	if keep != nil {
		// Droplets and other tags someone attached by hand stay attached.
		req.DropletIDs = append(req.DropletIDs, keep.DropletIDs...)
		for _, t := range keep.Tags {
			if !slices.Contains(req.Tags, t) {
				req.Tags = append(req.Tags, t)
			}
		}
	}
	return req
}

// sameFirewall reports whether f already has exactly the rules and tags of want.
func sameFirewall(f *godo.Firewall, want *godo.FirewallRequest) bool {
	norm := func(addrs []string) string { a := slices.Clone(addrs); slices.Sort(a); return strings.Join(a, ",") }
	in := func(rs []godo.InboundRule) []string {
		var out []string
		for _, r := range rs {
			if r.Sources == nil {
				out = append(out, r.Protocol+"/"+r.PortRange+"/")
				continue
			}
			out = append(out, r.Protocol+"/"+r.PortRange+"/"+norm(r.Sources.Addresses)+"/"+norm(r.Sources.Tags)+
				"/"+fmt.Sprint(r.Sources.DropletIDs, r.Sources.LoadBalancerUIDs, r.Sources.KubernetesIDs))
		}
		slices.Sort(out)
		return out
	}
	out := func(rs []godo.OutboundRule) []string {
		var o []string
		for _, r := range rs {
			if r.Destinations == nil {
				o = append(o, r.Protocol+"/"+r.PortRange+"/")
				continue
			}
			o = append(o, r.Protocol+"/"+r.PortRange+"/"+norm(r.Destinations.Addresses)+"/"+norm(r.Destinations.Tags)+
				"/"+fmt.Sprint(r.Destinations.DropletIDs, r.Destinations.LoadBalancerUIDs, r.Destinations.KubernetesIDs))
		}
		slices.Sort(o)
		return o
	}
	return slices.Equal(in(f.InboundRules), in(want.InboundRules)) &&
		slices.Equal(out(f.OutboundRules), out(want.OutboundRules)) &&
		slices.Contains(f.Tags, want.Tags[0])
}

// EnsureFirewall implements cloud.Provider: the firewall named spec.Name
// targets the tag spec.Tag (created if missing), lets TCP spec.Ports in
// from anywhere (IPv4 and IPv6) and everything out.
func (p *Provider) EnsureFirewall(ctx context.Context, spec cloud.FirewallSpec) (string, error) {
	id, _, err := p.RepairFirewall(ctx, spec)
	return id, err
}

// RepairFirewall implements cloud.FirewallRepairer: EnsureFirewall that
// also reports whether it had to change (or create) the firewall.
func (p *Provider) RepairFirewall(ctx context.Context, spec cloud.FirewallSpec) (string, bool, error) {
	const op = "ensure firewall"
	invalid := func(msg string) error {
		return &cloud.Error{Code: cloud.CodeValidation, Provider: cloud.DigitalOcean, Op: op, Message: msg}
	}
	if !firewallNameRe.MatchString(spec.Name) || len(spec.Name) > 255 {
		return "", false, invalid(fmt.Sprintf("firewall name %q must be letters, digits, dots and dashes", spec.Name))
	}
	if !validTag(spec.Tag) {
		return "", false, invalid(fmt.Sprintf("tag %q must be letters, digits, colons, dashes and underscores", spec.Tag))
	}
	for _, port := range spec.Ports {
		if port < 1 || port > 65535 {
			return "", false, invalid(fmt.Sprintf("port %d is out of range", port))
		}
	}
	if err := p.ensureTag(ctx, op, spec.Tag); err != nil {
		return "", false, err
	}
	for attempt := 0; attempt < 2; attempt++ {
		fws, err := list(ctx, p.perPage, p.client.Firewalls.List)
		if err != nil {
			return "", false, p.apiError(op, err)
		}
		i := slices.IndexFunc(fws, func(f godo.Firewall) bool { return f.Name == spec.Name })
		if i >= 0 {
			f := &fws[i]
			want := desiredFirewall(spec, f)
			if sameFirewall(f, want) {
				return f.ID, false, nil
			}
			if _, _, err := p.client.Firewalls.Update(ctx, f.ID, want); err != nil {
				return "", false, p.apiError(op, err)
			}
			return f.ID, true, nil
		}
		f, _, err := p.client.Firewalls.Create(ctx, desiredFirewall(spec, nil))
		if err == nil {
			return f.ID, true, nil
		}
		if ce := p.apiError(op, err); ce.Status != http.StatusConflict {
			return "", false, ce
		}
		// 409 "duplicate name": created concurrently; find it and update it.
	}
	return "", false, &cloud.Error{Code: cloud.CodeProviderError, Provider: cloud.DigitalOcean, Op: op,
		Message: fmt.Sprintf("firewall %q is reported to exist but is not listed", spec.Name)}
}

var dropletNameRe = regexp.MustCompile(`^[a-zA-Z0-9]?[a-z0-9A-Z.\-]*[a-z0-9A-Z]$`)

var tagRe = regexp.MustCompile(`^[a-zA-Z0-9_\-:]+$`)

func validTag(t string) bool { return len(t) <= 255 && tagRe.MatchString(t) }

func (p *Provider) ensureTag(ctx context.Context, op, tag string) error {
	_, _, err := p.client.Tags.Get(ctx, tag)
	if err == nil {
		return nil
	}
	if ce := p.apiError(op, err); ce.Code != cloud.CodeNotFound {
		return ce
	}
	if _, _, err := p.client.Tags.Create(ctx, &godo.TagCreateRequest{Name: tag}); err != nil {
		return p.apiError(op, err)
	}
	return nil
}

// CreateInstance implements cloud.Provider.
func (p *Provider) CreateInstance(ctx context.Context, spec cloud.InstanceSpec) (*cloud.Instance, error) {
	const op = "create droplet"
	if len(spec.Name) > 255 || !dropletNameRe.MatchString(spec.Name) {
		return nil, &cloud.Error{Code: cloud.CodeValidation, Provider: cloud.DigitalOcean, Op: op,
			Message: fmt.Sprintf("droplet name %q must be a hostname: letters, digits, dots and dashes", spec.Name)}
	}
	for _, t := range spec.Tags {
		if !validTag(t) {
			return nil, &cloud.Error{Code: cloud.CodeValidation, Provider: cloud.DigitalOcean, Op: op,
				Message: fmt.Sprintf("tag %q must be letters, digits, colons, dashes and underscores", t)}
		}
	}
	if len(spec.UserData) > 64<<10 {
		return nil, &cloud.Error{Code: cloud.CodeValidation, Provider: cloud.DigitalOcean, Op: op,
			Message: fmt.Sprintf("user data is %d bytes; DigitalOcean accepts at most 64 KiB", len(spec.UserData))}
	}
	req := &godo.DropletCreateRequest{
		Name: spec.Name, Region: spec.Region, Size: spec.Size, UserData: spec.UserData,
		SSHKeys: []godo.DropletCreateSSHKey{}, Tags: slices.Clone(spec.Tags),
	}
	if req.Tags == nil {
		req.Tags = []string{}
	}
	if id, err := strconv.Atoi(spec.Image); err == nil {
		req.Image.ID = id
	} else {
		req.Image.Slug = spec.Image
	}
	for _, k := range spec.SSHKeyIDs {
		if id, err := strconv.Atoi(k); err == nil {
			req.SSHKeys = append(req.SSHKeys, godo.DropletCreateSSHKey{ID: id})
		} else {
			req.SSHKeys = append(req.SSHKeys, godo.DropletCreateSSHKey{Fingerprint: k})
		}
	}
	d, _, err := p.client.Droplets.Create(ctx, req)
	if err != nil {
		ce := p.apiError(op, err)
		if ce.Code == cloud.CodeUnavailable {
			ce.Hint = p.availabilityHint(ctx, spec.Size, spec.Region)
		}
		return nil, ce
	}
	return instance(d), nil
}

// availabilityHint names where size can be created now, from the catalog.
func (p *Provider) availabilityHint(ctx context.Context, size, region string) string {
	c, err := p.Catalog(ctx)
	if err != nil {
		return fmt.Sprintf("Size %s is not available in %s right now; choose another region or size.", size, region)
	}
	s, ok := c.Size(size)
	if !ok {
		return fmt.Sprintf("Size %s is not offered by DigitalOcean; choose a size from the catalog.", size)
	}
	if len(s.Regions) == 0 {
		return fmt.Sprintf("Size %s is not available in any region right now; choose another size.", size)
	}
	return fmt.Sprintf("Size %s is not available in %s right now; it is available in %s.", size, region, strings.Join(s.Regions, ", "))
}

// GetInstance implements cloud.Provider.
func (p *Provider) GetInstance(ctx context.Context, id string) (*cloud.Instance, error) {
	const op = "get droplet"
	n, err := strconv.Atoi(id)
	if err != nil {
		return nil, &cloud.Error{Code: cloud.CodeNotFound, Provider: cloud.DigitalOcean, Op: op,
			Message: fmt.Sprintf("%q is not a droplet id", id)}
	}
	d, _, err := p.client.Droplets.Get(ctx, n)
	if err != nil {
		return nil, p.apiError(op, err)
	}
	return instance(d), nil
}

// ListInstances implements cloud.Provider.
func (p *Provider) ListInstances(ctx context.Context, tag string) ([]cloud.Instance, error) {
	const op = "list droplets"
	ds, err := list(ctx, p.perPage, func(ctx context.Context, o *godo.ListOptions) ([]godo.Droplet, *godo.Response, error) {
		return p.client.Droplets.ListByTag(ctx, tag, o)
	})
	if err != nil {
		return nil, p.apiError(op, err)
	}
	out := make([]cloud.Instance, 0, len(ds))
	for i := range ds {
		out = append(out, *instance(&ds[i]))
	}
	return out, nil
}

// DeleteInstance implements cloud.Provider; a missing droplet is no error.
func (p *Provider) DeleteInstance(ctx context.Context, id string) error {
	n, err := strconv.Atoi(id)
	if err != nil {
		return nil // no droplet can have this id
	}
	if _, err := p.client.Droplets.Delete(ctx, n); err != nil {
		ce := p.apiError("delete droplet", err)
		if ce.Code == cloud.CodeNotFound {
			return nil
		}
		return ce
	}
	return nil
}

// DeleteFirewall implements cloud.Provider; a missing firewall is no error.
func (p *Provider) DeleteFirewall(ctx context.Context, id string) error {
	if _, err := p.client.Firewalls.Delete(ctx, id); err != nil {
		ce := p.apiError("delete firewall", err)
		if ce.Code == cloud.CodeNotFound {
			return nil
		}
		return ce
	}
	return nil
}

func instance(d *godo.Droplet) *cloud.Instance {
	in := &cloud.Instance{ID: strconv.Itoa(d.ID), Name: d.Name, Size: d.SizeSlug, Tags: slices.Clone(d.Tags)}
	if in.Tags == nil {
		in.Tags = []string{}
	}
	switch d.Status {
	case "new":
		in.State = cloud.StateNew
	case "active":
		in.State = cloud.StateActive
	case "off":
		in.State = cloud.StateOff
	default:
		in.State = cloud.StateOther
	}
	if ip, err := d.PublicIPv4(); err == nil {
		in.PublicIPv4 = ip
	}
	if d.Region != nil {
		in.Region = d.Region.Slug
	}
	if t, err := time.Parse(time.RFC3339, d.Created); err == nil {
		in.CreatedAt = t
	}
	return in
}
