package apitypes

import "time"

// Catalog is GET /v1/workspaces/{ws}/integrations/{id}/catalog: what the
// provider offers, with availability per region.
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
