// Package cloud is the boundary between Devpilot and a cloud provider: a
// small Provider interface that the digitalocean (godo) and vultr (govultr)
// packages implement, the catalog and instance types they return, typed
// errors with hints (errors.go), and the HTTP transport both SDKs run on:
// one client-side rate limiter and one retry classifier (transport.go).
package cloud

import (
	"net/http"

	"go.uber.org/zap"

	"context"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"slices"
	"time"
)

// Provider names, as stored and as accepted by the API.
const (
	DigitalOcean = "digitalocean"
	Vultr        = "vultr"
)

// Providers lists the supported provider names.
var Providers = []string{DigitalOcean, Vultr}

// Provider is one cloud account reached with one credential. Implementations
// are safe for concurrent use.
type Provider interface {
	// Name is DigitalOcean or Vultr.
	Name() string

	// Validate checks the credential with read-only calls and reports what
	// it may do. It never creates or changes anything in the account.
	Validate(ctx context.Context) (*Account, error)

	// Catalog lists regions, sizes and images with availability per region.
	Catalog(ctx context.Context) (*Catalog, error)

	// EnsureSSHKey uploads an OpenSSH public key (authorized_keys format)
	// unless the account already holds it, and returns the provider's id
	// (or fingerprint) to reference it at instance creation.
	EnsureSSHKey(ctx context.Context, name, authorizedKey string) (string, error)

	// EnsureFirewall finds the firewall named spec.Name or creates it, and
	// makes its inbound rules exactly spec.Ports. DigitalOcean firewalls
	// target spec.Tag; Vultr firewall groups are attached per instance.
	EnsureFirewall(ctx context.Context, spec FirewallSpec) (string, error)

	// CreateInstance creates one droplet/instance. Callers look the
	// instance's unique tag up with ListInstances first so a retry never
	// makes a second one.
	CreateInstance(ctx context.Context, spec InstanceSpec) (*Instance, error)

	// GetInstance returns one instance; a missing one is an *Error with
	// CodeNotFound.
	GetInstance(ctx context.Context, id string) (*Instance, error)

	// ListInstances returns every instance carrying tag (all pages).
	ListInstances(ctx context.Context, tag string) ([]Instance, error)

	// DeleteInstance deletes an instance; deleting a missing one succeeds.
	DeleteInstance(ctx context.Context, id string) error

	// DeleteFirewall deletes a firewall (group); a missing one succeeds.
	DeleteFirewall(ctx context.Context, id string) error
}

// WriteAccess is what validation concluded about creating resources.
type WriteAccess string

// Values of WriteAccess.
const (
	WriteYes     WriteAccess = "yes"     // the write probe was accepted for validation
	WriteNo      WriteAccess = "no"      // the write probe was refused for lack of scope
	WriteUnknown WriteAccess = "unknown" // the probe's answer proved nothing either way
)

// Account is what validation learnt about the account behind a credential.
// It holds nothing secret.
type Account struct {
	Name          string      `json:"name,omitempty"`
	Email         string      `json:"email,omitempty"`
	Status        string      `json:"status,omitempty"`
	InstanceLimit int         `json:"instance_limit,omitempty"` // 0 when the provider does not say
	Write         WriteAccess `json:"write_access"`
	Permissions   []string    `json:"permissions,omitempty"` // Vultr ACLs
}

// Catalog is what a provider offers, with availability per region.
type Catalog struct {
	Provider  string    `json:"provider"`
	Regions   []Region  `json:"regions"`
	Sizes     []Size    `json:"sizes"`
	Images    []Image   `json:"images"`
	FetchedAt time.Time `json:"fetched_at"`
}

// Region is a data centre.
type Region struct {
	ID        string `json:"id"` // DigitalOcean slug "nyc3", Vultr id "ewr"
	Name      string `json:"name"`
	Available bool   `json:"available"` // new instances can be created there
}

// Size is a droplet size or Vultr plan.
type Size struct {
	ID           string   `json:"id"` // "s-1vcpu-1gb", "vc2-1c-1gb"
	VCPUs        int      `json:"vcpus"`
	MemoryMB     int      `json:"memory_mb"`
	DiskGB       int      `json:"disk_gb"`
	PriceMonthly float64  `json:"price_monthly"`
	Regions      []string `json:"regions"`  // where it can be created now
	SoldOut      []string `json:"sold_out"` // where it is offered but out of stock
}

// Image is an operating system image.
type Image struct {
	ID           string `json:"id"` // DigitalOcean slug, Vultr os id as a string
	Name         string `json:"name"`
	Distribution string `json:"distribution,omitempty"`
	Neutral      string `json:"neutral,omitempty"` // "debian-12", "ubuntu-24.04" when it is one of those
}

// Region returns the region with id, if the catalog has it.
func (c *Catalog) Region(id string) (Region, bool) {
	i := slices.IndexFunc(c.Regions, func(r Region) bool { return r.ID == id })
	if i < 0 {
		return Region{}, false
	}
	return c.Regions[i], true
}

// Size returns the size with id, if the catalog has it.
func (c *Catalog) Size(id string) (Size, bool) {
	i := slices.IndexFunc(c.Sizes, func(s Size) bool { return s.ID == id })
	if i < 0 {
		return Size{}, false
	}
	return c.Sizes[i], true
}

// Image resolves a provider image id or a neutral name ("debian-12").
func (c *Catalog) Image(idOrNeutral string) (Image, bool) {
	i := slices.IndexFunc(c.Images, func(im Image) bool {
		return im.ID == idOrNeutral || (im.Neutral != "" && im.Neutral == idOrNeutral)
	})
	if i < 0 {
		return Image{}, false
	}
	return c.Images[i], true
}

// NeutralImages maps the provider-neutral image names the API accepts to
// each provider's identifier.
var NeutralImages = map[string]map[string]string{
	"debian-12":    {DigitalOcean: "debian-12-x64", Vultr: "2136"},
	"ubuntu-24.04": {DigitalOcean: "ubuntu-24-04-x64", Vultr: "2284"},
}

// NeutralName returns the neutral name of a provider image id, or "".
func NeutralName(provider, imageID string) string {
	for neutral, ids := range NeutralImages {
		if ids[provider] == imageID {
			return neutral
		}
	}
	return ""
}

// FirewallSpec is an inbound-only firewall: TCP Ports open to the world
// (IPv4 and IPv6); everything else inbound is dropped. Outbound stays open.
type FirewallSpec struct {
	Name  string // unique per workspace; how EnsureFirewall finds it again
	Tag   string // DigitalOcean: the tag the firewall targets
	Ports []int
}

// InstanceSpec describes one instance to create.
type InstanceSpec struct {
	Name       string
	Region     string
	Size       string
	Image      string // provider image id (neutral names resolved by the caller)
	UserData   string // plain text; the Vultr provider base64-encodes it
	Tags       []string
	SSHKeyIDs  []string
	FirewallID string // Vultr: firewall group attached at creation
}

// Instance states, normalised across providers.
const (
	StateNew    = "new"    // being created or booted
	StateActive = "active" // running
	StateOff    = "off"
	StateOther  = "other"
)

// Instance is a droplet or Vultr instance.
type Instance struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	State      string    `json:"state"`
	PublicIPv4 string    `json:"public_ipv4,omitempty"`
	Region     string    `json:"region"`
	Size       string    `json:"size"`
	Tags       []string  `json:"tags"`
	FirewallID string    `json:"firewall_id,omitempty"` // Vultr firewall group
	CreatedAt  time.Time `json:"created_at"`
}

// Config is what a provider constructor (digitalocean.New, vultr.New) needs.
type Config struct {
	Secret  secrets.Value // the token / API key
	BaseURL string        // "" means the real API; tests and `devpilot dev` point it at a simulator
	Logger  *zap.Logger   // nil: no logs

	// Transport overrides; zero values take TransportConfig's defaults.
	Base       http.RoundTripper
	MaxRetries int
	MinWait    time.Duration
	MaxWait    time.Duration
	Metrics    *Metrics // nil: none
	// OnRefused is called when the provider refuses the credential (a
	// final 401/403 answer); nil: nothing. See TransportConfig.OnRefused.
	OnRefused func(status int)
}
