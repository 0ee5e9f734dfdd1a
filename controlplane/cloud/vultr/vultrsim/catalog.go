package vultrsim

// The simulator's catalog: real Vultr region ids, plan ids and os ids as
// public listings showed them (plans and prices from a dump of GET /v2/plans
// dated 2025-12; os ids from several dumps of GET /v2/os). Locations are
// simplified: every vc2 and vhf plan is offered everywhere, the vhp plans in
// the larger regions. Availability starts full; SetSoldOut takes plans away.

type region struct {
	ID        string   `json:"id"`
	City      string   `json:"city"`
	Country   string   `json:"country"`
	Continent string   `json:"continent"`
	Options   []string `json:"options"`
}

type plan struct {
	ID          string   `json:"id"`
	VCPUCount   int      `json:"vcpu_count"`
	RAM         int      `json:"ram"`
	Disk        int      `json:"disk"`
	DiskCount   int      `json:"disk_count"`
	Bandwidth   int      `json:"bandwidth"`
	MonthlyCost int      `json:"monthly_cost"` // the spec says integer; fractional plans ($3.50) are left out
	Type        string   `json:"type"`
	Locations   []string `json:"locations"`
}

type osEntry struct {
	ID     int    `json:"id"`
	Name   string `json:"name"`
	Arch   string `json:"arch"`
	Family string `json:"family"`
}

var fullOptions = []string{"ddos_protection", "block_storage_storage_opt", "block_storage_high_perf", "load_balancers", "kubernetes"}
var baseOptions = []string{"ddos_protection", "block_storage_storage_opt", "load_balancers", "kubernetes"}

var regions = []region{
	{"ewr", "New Jersey", "US", "North America", fullOptions},
	{"ord", "Chicago", "US", "North America", fullOptions},
	{"dfw", "Dallas", "US", "North America", fullOptions},
	{"sea", "Seattle", "US", "North America", fullOptions},
	{"lax", "Los Angeles", "US", "North America", fullOptions},
	{"atl", "Atlanta", "US", "North America", fullOptions},
	{"mia", "Miami", "US", "North America", fullOptions},
	{"sjc", "Silicon Valley", "US", "North America", fullOptions},
	{"yto", "Toronto", "CA", "North America", baseOptions},
	{"mex", "Mexico City", "MX", "North America", baseOptions},
	{"sao", "São Paulo", "BR", "South America", baseOptions},
	{"ams", "Amsterdam", "NL", "Europe", fullOptions},
	{"lhr", "London", "GB", "Europe", fullOptions},
	{"fra", "Frankfurt", "DE", "Europe", fullOptions},
	{"cdg", "Paris", "FR", "Europe", fullOptions},
	{"waw", "Warsaw", "PL", "Europe", baseOptions},
	{"mad", "Madrid", "ES", "Europe", baseOptions},
	{"sto", "Stockholm", "SE", "Europe", baseOptions},
	{"nrt", "Tokyo", "JP", "Asia", fullOptions},
	{"icn", "Seoul", "KR", "Asia", baseOptions},
	{"sgp", "Singapore", "SG", "Asia", fullOptions},
	{"bom", "Mumbai", "IN", "Asia", baseOptions},
	{"blr", "Bangalore", "IN", "Asia", baseOptions},
	{"syd", "Sydney", "AU", "Australia", fullOptions},
	{"jnb", "Johannesburg", "ZA", "Africa", baseOptions},
}

var bigRegions = []string{"ewr", "ord", "dfw", "sea", "lax", "atl", "mia", "sjc", "ams", "lhr", "fra", "cdg", "nrt", "sgp", "syd"}

func allRegionIDs() []string {
	ids := make([]string, len(regions))
	for i, r := range regions {
		ids[i] = r.ID
	}
	return ids
}

func defaultPlans() []plan {
	all := allRegionIDs()
	p := func(id, typ string, cpu, ram, disk, bw, cost int, locs []string) plan {
		return plan{ID: id, VCPUCount: cpu, RAM: ram, Disk: disk, DiskCount: 1, Bandwidth: bw, MonthlyCost: cost, Type: typ, Locations: append([]string(nil), locs...)}
	}
	return []plan{
		p("vc2-1c-1gb", "vc2", 1, 1024, 25, 1024, 5, all),
		p("vc2-1c-2gb", "vc2", 1, 2048, 55, 2048, 10, all),
		p("vc2-2c-2gb", "vc2", 2, 2048, 65, 3072, 15, all),
		p("vc2-2c-4gb", "vc2", 2, 4096, 80, 3072, 20, all),
		p("vc2-4c-8gb", "vc2", 4, 8192, 160, 4096, 40, all),
		p("vc2-6c-16gb", "vc2", 6, 16384, 320, 5120, 80, all),
		p("vc2-8c-32gb", "vc2", 8, 32768, 640, 6144, 160, all),
		p("vhf-1c-1gb", "vhf", 1, 1024, 32, 1024, 6, all),
		p("vhf-1c-2gb", "vhf", 1, 2048, 64, 2048, 12, all),
		p("vhf-2c-2gb", "vhf", 2, 2048, 80, 3072, 18, all),
		p("vhf-2c-4gb", "vhf", 2, 4096, 128, 3072, 24, all),
		p("vhf-3c-8gb", "vhf", 3, 8192, 256, 4096, 48, all),
		p("vhf-4c-16gb", "vhf", 4, 16384, 384, 5120, 96, all),
		p("vhp-1c-1gb-amd", "vhp", 1, 1024, 25, 2048, 6, bigRegions),
		p("vhp-1c-2gb-amd", "vhp", 1, 2048, 50, 3072, 12, bigRegions),
		p("vhp-2c-4gb-amd", "vhp", 2, 4096, 100, 5120, 24, bigRegions),
		p("vhp-4c-8gb-amd", "vhp", 4, 8192, 180, 6144, 48, bigRegions),
	}
}

var osList = []osEntry{
	{159, "Custom", "x64", "iso"},
	{164, "Snapshot", "x64", "snapshot"},
	{180, "Backup", "x64", "backup"},
	{186, "Application", "x64", "application"},
	{477, "Debian 11 x64 (bullseye)", "x64", "debian"},
	{2136, "Debian 12 x64 (bookworm)", "x64", "debian"},
	{2625, "Debian 13 x64 (trixie)", "x64", "debian"},
	{387, "Ubuntu 20.04 LTS x64", "x64", "ubuntu"},
	{1743, "Ubuntu 22.04 LTS x64", "x64", "ubuntu"},
	{2284, "Ubuntu 24.04 LTS x64", "x64", "ubuntu"},
	{542, "CentOS 9 Stream x64", "x64", "centos"},
	{1868, "AlmaLinux 9 x64", "x64", "almalinux"},
	{1869, "Rocky Linux 9 x64", "x64", "rockylinux"},
	{2076, "Alpine Linux x64", "x64", "alpinelinux"},
	{535, "Arch Linux x64", "x64", "archlinux"},
	{2157, "openSUSE Leap 15 x64", "x64", "opensuse"},
	{2212, "FreeBSD 14 x64", "x64", "freebsd"},
}

// installable reports whether an os id can be used as os_id at creation
// (the iso/snapshot/backup/application pseudo entries need other fields).
func (o osEntry) installable() bool {
	switch o.Family {
	case "iso", "snapshot", "backup", "application":
		return false
	}
	return true
}

// allACLs is what the account owner's key reports (the spec's example list).
var allACLs = []string{"manage_users", "subscriptions_view", "subscriptions", "billing", "support", "provisioning", "dns", "abuse", "upgrade", "firewall", "alerts", "objstore", "loadbalancer"}
