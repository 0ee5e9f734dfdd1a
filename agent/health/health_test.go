package health_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/devpilot/devpilot/agent/health"
	"github.com/devpilot/devpilot/shared/protocol"
)

func writeProc(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

const mounts = `/dev/vda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
sysfs /sys sysfs rw 0 0
tmpfs /run tmpfs rw,nosuid,nodev 0 0
/dev/vda15 /boot/efi vfat rw 0 0
/dev/loop0 /snap/core/1 squashfs ro 0 0
/dev/vda1 /var/lib/docker ext4 rw,relatime 0 0
overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0
/dev/vdb /mnt/my\040data xfs rw 0 0
tank/home /home zfs rw 0 0
`

func TestCollectFromFakeProc(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeProc(t, dir, map[string]string{
		"uptime":               "12345.67 23456.78\n",
		"loadavg":              "0.52 0.34 0.10 1/234 5678\n",
		"stat":                 "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 100 0 100 700 100 0 0 0 0 0\nintr 1\n",
		"meminfo":              "MemTotal:        2048000 kB\nMemFree:          100000 kB\nMemAvailable:     1024000 kB\nBuffers: 1 kB\n",
		"mounts":               mounts,
		"sys/kernel/osrelease": "6.1.0-test\n",
	})
	const gib = 1 << 30
	sizes := map[string]health.FSStat{
		"/":            {Total: 20 * gib, Free: 15 * gib},
		"/boot/efi":    {Total: 512 << 20, Free: 500 << 20},
		"/mnt/my data": {Total: 100 * gib, Free: 100 * gib},
		"/home":        {Total: 10 * gib, Free: 1 * gib},
	}
	var statted []string
	c := &health.Collector{ProcRoot: dir, Version: "1.2.3", Statfs: func(p string) (health.FSStat, error) {
		statted = append(statted, p)
		s, ok := sizes[p]
		if !ok {
			return s, errors.New("unexpected statfs " + p)
		}
		return s, nil
	}}

	h, err := c.Collect()
	if err != nil {
		t.Fatal(err)
	}
	want := protocol.Health{
		UptimeS: 12345, Load1: 0.52, Load5: 0.34, Load15: 0.10,
		CPUPercent: 20, // since boot: busy 200 of 1000 (iowait counts as idle)
		MemTotalMB: 2000, MemUsedMB: 1000,
		Disks: []protocol.Disk{
			{Mount: "/", TotalMB: 20 * 1024, UsedMB: 5 * 1024},
			{Mount: "/boot/efi", TotalMB: 512, UsedMB: 12},
			{Mount: "/home", TotalMB: 10 * 1024, UsedMB: 9 * 1024},
			{Mount: "/mnt/my data", TotalMB: 100 * 1024, UsedMB: 0},
		},
		AgentVersion: "1.2.3",
	}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("health\n got %+v\nwant %+v", h, want)
	}
	if len(statted) != 4 {
		t.Errorf("statfs called for %v: pseudo file systems, loop devices and bind mounts should be skipped", statted)
	}

	// The next sample reports CPU use between the two: 300 busy of 400.
	writeProc(t, dir, map[string]string{"stat": "cpu  300 0 200 750 150 0 0 0 0 0\n"})
	h, err = c.Collect()
	if err != nil {
		t.Fatal(err)
	}
	if h.CPUPercent != 75 {
		t.Errorf("cpu percent = %v, want 75", h.CPUPercent)
	}

	f := c.Facts()
	if f.Kernel != "6.1.0-test" || f.MemoryMB != 2000 || f.CPUs < 1 || f.OS == "" {
		t.Errorf("facts = %+v", f)
	}
}

func TestCollectPartialFailure(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeProc(t, dir, map[string]string{
		"uptime":  "42.0 1.0\n",
		"meminfo": "MemTotal: 1024000 kB\nMemFree: 512000 kB\nBuffers: 0 kB\nCached: 0 kB\n",
	})
	c := &health.Collector{ProcRoot: dir}
	h, err := c.Collect()
	if err == nil {
		t.Error("missing loadavg/stat/mounts gave no error")
	}
	// What could be read is still reported, so the heartbeat goes out.
	if h.UptimeS != 42 || h.MemTotalMB != 1000 || h.MemUsedMB != 500 || h.AgentVersion == "" {
		t.Errorf("partial health = %+v", h)
	}
}

func TestCollectRealProc(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/proc/stat"); err != nil {
		t.Skip("no /proc")
	}
	h, err := (&health.Collector{}).Collect()
	if err != nil {
		t.Logf("partial: %v", err)
	}
	if h.UptimeS <= 0 || h.MemTotalMB <= 0 {
		t.Errorf("real /proc health = %+v", h)
	}
}
