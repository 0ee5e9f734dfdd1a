// Package health reads a snapshot of the host from /proc (uptime, load,
// CPU use, memory, disks) for heartbeats, and the host facts sent in hello.
// The proc root and statfs are injectable so tests use a fake tree.
package health

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/version"
)

// FSStat is the size of one file system in bytes.
type FSStat struct {
	Total, Free uint64
}

// Collector samples the host. CPU percent is computed between consecutive
// calls to Collect (the first call reports the average since boot).
type Collector struct {
	ProcRoot string // default "/proc"
	// BootIDFile is read for Facts.BootID; default ProcRoot's
	// sys/kernel/random/boot_id. The dev sandbox points it at the
	// simulated machine's own (DEVPILOT_AGENT_BOOT_ID_FILE).
	BootIDFile string
	// Statfs sizes the file system mounted at path; default unix.Statfs.
	Statfs func(path string) (FSStat, error)
	// Version is reported as agent_version; default version.String().
	Version string

	mu                sync.Mutex
	prevBusy, prevAll uint64
}

func (c *Collector) proc(name string) string {
	root := c.ProcRoot
	if root == "" {
		root = "/proc"
	}
	return filepath.Join(root, name)
}

// Collect returns the current health. Parts that cannot be read are left
// zero and reported in the error (joined), so a heartbeat still goes out.
func (c *Collector) Collect() (protocol.Health, error) {
	h := protocol.Health{AgentVersion: c.Version}
	if h.AgentVersion == "" {
		h.AgentVersion = version.String()
	}
	var errs []error
	if up, err := c.uptime(); err != nil {
		errs = append(errs, err)
	} else {
		h.UptimeS = up
	}
	if l1, l5, l15, err := c.loadavg(); err != nil {
		errs = append(errs, err)
	} else {
		h.Load1, h.Load5, h.Load15 = l1, l5, l15
	}
	if pct, err := c.cpuPercent(); err != nil {
		errs = append(errs, err)
	} else {
		h.CPUPercent = pct
	}
	if total, used, err := c.memory(); err != nil {
		errs = append(errs, err)
	} else {
		h.MemTotalMB, h.MemUsedMB = total, used
	}
	disks, err := c.disks()
	if err != nil {
		errs = append(errs, err)
	}
	h.Disks = disks
	return h, errors.Join(errs...)
}

func (c *Collector) read(name string) ([]byte, error) {
	b, err := os.ReadFile(c.proc(name))
	if err != nil {
		return nil, fmt.Errorf("health: %w", err)
	}
	return b, nil
}

func (c *Collector) uptime() (int64, error) {
	b, err := c.read("uptime")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 0, errors.New("health: uptime: empty")
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0, fmt.Errorf("health: uptime: %w", err)
	}
	return int64(v), nil
}

func (c *Collector) loadavg() (l1, l5, l15 float64, err error) {
	b, err := c.read("loadavg")
	if err != nil {
		return 0, 0, 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return 0, 0, 0, errors.New("health: loadavg: want 3 fields")
	}
	var v [3]float64
	for i := range v {
		if v[i], err = strconv.ParseFloat(f[i], 64); err != nil {
			return 0, 0, 0, fmt.Errorf("health: loadavg: %w", err)
		}
	}
	return v[0], v[1], v[2], nil
}

// cpuPercent uses the aggregate "cpu" line of /proc/stat: user nice system
// idle iowait irq softirq steal (guest time is already inside user/nice).
func (c *Collector) cpuPercent() (float64, error) {
	b, err := c.read("stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return 0, errors.New("health: stat: no aggregate cpu line")
	}
	var v [8]uint64
	for i := 0; i < 8 && i+1 < len(f); i++ {
		if v[i], err = strconv.ParseUint(f[i+1], 10, 64); err != nil {
			return 0, fmt.Errorf("health: stat: %w", err)
		}
	}
	var all uint64
	for _, x := range v {
		all += x
	}
	idle := v[3] + v[4]
	busy := all - idle
	c.mu.Lock()
	dAll, dBusy := all-c.prevAll, busy-c.prevBusy
	if all < c.prevAll || busy < c.prevBusy { // counters went back (can't on a real host)
		dAll, dBusy = all, busy
	}
	c.prevAll, c.prevBusy = all, busy
	c.mu.Unlock()
	if dAll == 0 {
		return 0, nil
	}
	return round1(100 * float64(dBusy) / float64(dAll)), nil
}

func round1(x float64) float64 { return float64(int64(x*10+0.5)) / 10 }

func (c *Collector) memory() (totalMB, usedMB int64, err error) {
	b, err := c.read("meminfo")
	if err != nil {
		return 0, 0, err
	}
	kb := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			kb[k] = n
		}
	}
	total, ok := kb["MemTotal"]
	if !ok {
		return 0, 0, errors.New("health: meminfo: no MemTotal")
	}
	avail, ok := kb["MemAvailable"]
	if !ok { // kernels before 3.14
		avail = kb["MemFree"] + kb["Buffers"] + kb["Cached"]
	}
	return total / 1024, (total - avail) / 1024, nil
}

// realFS are file system types that hold data a person cares about even
// when their source is not a /dev node.
var realFS = map[string]bool{"zfs": true, "btrfs": true, "xfs": true, "ext4": true, "ext3": true, "ext2": true, "f2fs": true, "vfat": true, "nfs": true, "nfs4": true, "cifs": true, "fuseblk": true}

// skipFS are read-only images and pseudo file systems that fill up by design.
var skipFS = map[string]bool{"squashfs": true, "iso9660": true, "tmpfs": true, "devtmpfs": true, "overlay": true}

func (c *Collector) disks() ([]protocol.Disk, error) {
	b, err := c.read("mounts")
	if err != nil {
		return nil, err
	}
	statfs := c.Statfs
	if statfs == nil {
		statfs = sysStatfs
	}
	seen := map[string]bool{} // device → counted (bind mounts, btrfs subvolumes)
	var out []protocol.Disk
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 {
			continue
		}
		dev, mnt, typ := unescape(f[0]), unescape(f[1]), f[2]
		if skipFS[typ] || !strings.HasPrefix(dev, "/dev/") && !realFS[typ] || strings.HasPrefix(dev, "/dev/loop") {
			continue
		}
		if seen[dev] {
			continue
		}
		st, err := statfs(mnt)
		if err != nil {
			errs = append(errs, fmt.Errorf("health: statfs %s: %w", mnt, err))
			continue
		}
		seen[dev] = true
		out = append(out, protocol.Disk{
			Mount:   mnt,
			TotalMB: int64(st.Total >> 20),
			UsedMB:  int64((st.Total - min(st.Free, st.Total)) >> 20),
		})
	}
	slices.SortFunc(out, func(a, b protocol.Disk) int { return strings.Compare(a.Mount, b.Mount) })
	return out, errors.Join(errs...)
}

// unescape decodes the octal escapes /proc/mounts uses for space, tab,
// newline and backslash (e.g. "\040").
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				sb.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		sb.WriteByte(s[i])
	}
	return sb.String()
}

func sysStatfs(path string) (FSStat, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return FSStat{}, err
	}
	bs := uint64(st.Bsize)
	return FSStat{Total: st.Blocks * bs, Free: st.Bfree * bs}, nil
}

// Facts describes the host for hello. Unreadable parts are left empty.
func (c *Collector) Facts() protocol.Facts {
	f := protocol.Facts{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU()}
	f.Hostname, _ = os.Hostname()
	if b, err := c.read("sys/kernel/osrelease"); err == nil {
		f.Kernel = strings.TrimSpace(string(b))
	}
	if total, _, err := c.memory(); err == nil {
		f.MemoryMB = int(total)
	}
	if c.BootIDFile != "" {
		if b, err := os.ReadFile(c.BootIDFile); err == nil {
			f.BootID = strings.TrimSpace(string(b))
		}
	} else if b, err := c.read("sys/kernel/random/boot_id"); err == nil {
		f.BootID = strings.TrimSpace(string(b))
	}
	f.Distro = prettyName("/etc/os-release")
	if f.Distro == "" {
		f.Distro = prettyName("/usr/lib/os-release")
	}
	_, err := os.Stat("/run/systemd/system")
	f.Systemd = err == nil && os.Getenv("INVOCATION_ID") != ""
	return f
}

func prettyName(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
			if u, err := strconv.Unquote(v); err == nil {
				return u
			}
			return strings.Trim(v, `"'`)
		}
	}
	return ""
}
