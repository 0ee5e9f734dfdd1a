package dosim

// The simulator's catalog: real, commonly used DigitalOcean regions, sizes
// and distribution images, with the shapes GET /v2/regions, /v2/sizes and
// /v2/images return. Prices and image ids are realistic, not live.

type regionSpec struct {
	Slug      string
	Name      string
	Available bool
}

type sizeSpec struct {
	Slug         string
	Memory       int // MiB
	VCPUs        int
	Disk         int // GB
	Transfer     float64
	PriceMonthly float64
	PriceHourly  float64
	Description  string
	Regions      []string // where the size is offered
}

type imageSpec struct {
	ID           int
	Slug         string
	Name         string
	Distribution string
	MinDisk      int
	SizeGB       float64
	Description  string
	Created      string
}

var regionFeatures = []string{"backups", "ipv6", "metadata", "install_agent", "storage", "image_transfer"}

// Retired regions stay listed with available=false, as the real API does.
var catalogRegions = []regionSpec{
	{"nyc1", "New York 1", true},
	{"nyc2", "New York 2", false},
	{"nyc3", "New York 3", true},
	{"sfo3", "San Francisco 3", true},
	{"ams2", "Amsterdam 2", false},
	{"ams3", "Amsterdam 3", true},
	{"fra1", "Frankfurt 1", true},
	{"lon1", "London 1", true},
	{"sgp1", "Singapore 1", true},
	{"tor1", "Toronto 1", true},
	{"blr1", "Bangalore 1", true},
	{"syd1", "Sydney 1", true},
}

var (
	allLive     = []string{"ams3", "blr1", "fra1", "lon1", "nyc1", "nyc3", "sfo3", "sgp1", "syd1", "tor1"}
	premiumOnly = []string{"ams3", "blr1", "fra1", "lon1", "nyc1", "nyc3", "sfo3", "sgp1", "tor1"}
)

var catalogSizes = []sizeSpec{
	{"s-1vcpu-512mb-10gb", 512, 1, 10, 0.5, 4, 0.00595, "Basic", []string{"ams3", "fra1", "lon1", "nyc1", "sfo3", "sgp1", "syd1", "tor1"}},
	{"s-1vcpu-1gb", 1024, 1, 25, 1, 6, 0.00893, "Basic", allLive},
	{"s-1vcpu-2gb", 2048, 1, 50, 2, 12, 0.01786, "Basic", allLive},
	{"s-2vcpu-2gb", 2048, 2, 60, 3, 18, 0.02679, "Basic", allLive},
	{"s-2vcpu-4gb", 4096, 2, 80, 4, 24, 0.03571, "Basic", allLive},
	{"s-4vcpu-8gb", 8192, 4, 160, 5, 48, 0.07143, "Basic", allLive},
	{"s-8vcpu-16gb", 16384, 8, 320, 6, 96, 0.14286, "Basic", allLive},
	{"c-2", 4096, 2, 25, 4, 42, 0.0625, "CPU-Optimized", premiumOnly},
	{"c-4", 8192, 4, 50, 5, 84, 0.125, "CPU-Optimized", premiumOnly},
	{"g-2vcpu-8gb", 8192, 2, 25, 4, 63, 0.09375, "General Purpose", premiumOnly},
	{"m-2vcpu-16gb", 16384, 2, 50, 4, 84, 0.125, "Memory-Optimized", []string{"ams3", "fra1", "lon1", "nyc1", "nyc3", "sfo3", "sgp1", "tor1"}},
}

var catalogImages = []imageSpec{
	{155370712, "debian-12-x64", "12 x64", "Debian", 15, 0.84, "Debian 12 x64", "2024-05-09T15:12:55Z"},
	{155370564, "debian-11-x64", "11 x64", "Debian", 15, 0.65, "Debian 11 x64", "2024-05-09T15:10:17Z"},
	{163476223, "ubuntu-24-04-x64", "24.04 (LTS) x64", "Ubuntu", 15, 2.34, "Ubuntu 24.04 (LTS) x64", "2024-09-04T17:20:27Z"},
	{163478123, "ubuntu-22-04-x64", "22.04 (LTS) x64", "Ubuntu", 7, 2.04, "Ubuntu 22.04 (LTS) x64", "2024-09-04T17:40:01Z"},
	{157853287, "rockylinux-9-x64", "9 x64", "Rocky Linux", 10, 0.94, "Rocky Linux 9 x64", "2024-06-05T12:33:41Z"},
	{159651797, "fedora-40-x64", "40 x64", "Fedora", 15, 0.99, "Fedora 40 x64", "2024-07-10T19:02:14Z"},
	{157416458, "centos-stream-9-x64", "CentOS Stream 9 x64", "CentOS", 10, 1.17, "CentOS Stream 9 x64", "2024-05-30T14:35:09Z"},
}
