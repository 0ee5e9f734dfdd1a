// Package nspawn is a simrun.Runtime that boots every simulated instance as
// a real Debian system: a systemd-nspawn container (systemd as PID 1) on an
// overlay of a debootstrapped bookworm root file system (e2e/rootfs.sh),
// whose cloud-init finds the instance's user-data, hostname, instance id and
// SSH keys in a NoCloud seed, as it would from a metadata service.
//
// Containers share the host's network (the agent reaches the control plane
// on 127.0.0.1); each one's sshd listens on its own loopback port, which
// SSHAddr maps from the instance's public IPv4. Needs root, systemd-nspawn
// and nsenter; it works without systemd as the host's init (no machined:
// containers are not registered, commands enter them with nsenter).
package nspawn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
)

// Options configure a Runtime.
type Options struct {
	RootFS string // the base root file system (read-only lower layer)
	Dir    string // per-machine directories (upper layer, seed copy, console log)
	Logger *zap.Logger
	// Mutate, when set, may change what a machine receives before it boots
	// (tests break one server's user-data on purpose).
	Mutate func(m *simrun.Machine)
}

// Machine is one booted container.
type Machine struct {
	simrun.Machine
	Name    string    // container (machine) name
	Dir     string    // DIR/NAME: upper, work, root, console.log
	Root    string    // the container's root file system as the host sees it
	SSHPort int       // its sshd, on 127.0.0.1
	Started time.Time // when systemd-nspawn was first started

	console  *os.File
	cgroups  []string // its own cgroup in each hierarchy systemd uses
	mu       sync.Mutex
	cmd      *exec.Cmd // the current systemd-nspawn (a reboot starts a new one)
	boots    int
	stopping bool
	off      bool          // powered off (power.go); the file system is kept
	done     chan struct{} // closed when the container is off for good (or until PowerOn)
	err      error         // the last systemd-nspawn's exit status, after done
}

// Runtime boots and destroys containers.
type Runtime struct {
	o   Options
	log *zap.Logger

	mu       sync.Mutex
	machines map[string]*Machine // by instance id
	failures []error             // boots that failed
	closed   bool
}

// New checks that containers can be booted here and returns a Runtime.
func New(o Options) (*Runtime, error) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if err := Check(o.RootFS); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("nspawn: %w", err)
	}
	sweepCgroups()
	return &Runtime{o: o, log: o.Logger, machines: map[string]*Machine{}}, nil
}

// Check reports what is missing to boot containers from rootfs.
func Check(rootfs string) error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (run as root)")
	}
	for _, bin := range []string{"systemd-nspawn", "nsenter", "mount", "umount"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin+" (apt-get install systemd-container util-linux mount)")
		}
	}
	if _, err := os.Stat(filepath.Join(rootfs, "usr/lib/systemd/systemd")); err != nil {
		missing = append(missing, fmt.Sprintf("a root file system with systemd at %s (make e2e-rootfs)", rootfs))
	}
	if _, err := os.Stat(filepath.Join(rootfs, "usr/bin/cloud-init")); err != nil {
		missing = append(missing, fmt.Sprintf("cloud-init in %s (make e2e-rootfs)", rootfs))
	}
	if len(missing) > 0 {
		return fmt.Errorf("nspawn: cannot boot containers, missing: %s", strings.Join(missing, "; "))
	}
	return nil
}

var nameRE = regexp.MustCompile(`[^a-z0-9-]+`)

// seq makes container names unique on this host (two simulators may hand
// out the same instance id; systemd-nspawn keeps per-name state in /run).
var seq atomic.Int64

// machineName is a valid, unique container name for m.
func machineName(m simrun.Machine) string {
	p := "do"
	if m.Provider == "vultr" {
		p = "vultr"
	}
	id := nameRE.ReplaceAllString(strings.ToLower(m.ID), "")
	if len(id) > 40 {
		id = id[:40]
	}
	return fmt.Sprintf("%s-%s-%d", p, id, seq.Add(1))
}

// Boot prepares the container's file system and NoCloud seed and starts
// systemd-nspawn; it returns once the container's init runs.
func (r *Runtime) Boot(ctx context.Context, sm simrun.Machine) error {
	if r.o.Mutate != nil {
		r.o.Mutate(&sm)
	}
	m := &Machine{Machine: sm, Name: machineName(sm), done: make(chan struct{})}
	m.Dir = filepath.Join(r.o.Dir, m.Name)
	m.Root = filepath.Join(m.Dir, "root")
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return errors.New("nspawn: runtime closed")
	}
	if _, dup := r.machines[sm.ID]; dup {
		r.mu.Unlock()
		return fmt.Errorf("nspawn: machine %s already booted", sm.ID)
	}
	r.machines[sm.ID] = m
	r.mu.Unlock()

	if err := r.boot(ctx, m); err != nil {
		_ = r.cleanup(m)
		r.mu.Lock()
		delete(r.machines, sm.ID)
		r.failures = append(r.failures, fmt.Errorf("boot %s: %w", m.Name, err))
		r.mu.Unlock()
		r.log.Error("container failed to boot", zap.String("machine", m.Name), zap.Error(err))
		return err
	}
	return nil
}

// Failures returns the errors of every boot that failed (the simulators
// only mark such an instance failed; tests want to stop at once).
func (r *Runtime) Failures() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.failures...)
}

func (r *Runtime) boot(ctx context.Context, m *Machine) error {
	_ = os.RemoveAll(m.Dir)
	if err := os.MkdirAll(m.Dir, 0o700); err != nil {
		return fmt.Errorf("nspawn: %w", err)
	}
	// The upper directory becomes the container's "/": 0755, or only root
	// could use the system (dbus, sshd's privilege separation, …).
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.Mkdir(filepath.Join(m.Dir, d), 0o755); err != nil {
			return fmt.Errorf("nspawn: %w", err)
		}
		if err := os.Chmod(filepath.Join(m.Dir, d), 0o755); err != nil {
			return fmt.Errorf("nspawn: %w", err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", r.o.RootFS, filepath.Join(m.Dir, "upper"), filepath.Join(m.Dir, "work"))
	if out, err := exec.CommandContext(ctx, "mount", "-t", "overlay", "overlay", "-o", opts, m.Root).CombinedOutput(); err != nil {
		// No overlayfs here: a full copy (slower, same result).
		r.log.Warn("overlay mount failed, copying the root file system", zap.String("output", string(out)), zap.Error(err))
		if out, err := exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", r.o.RootFS+"/.", m.Root).CombinedOutput(); err != nil {
			return fmt.Errorf("nspawn: copy root file system: %w: %s", err, out)
		}
	}
	port, err := freePort()
	if err != nil {
		return fmt.Errorf("nspawn: ssh port: %w", err)
	}
	m.SSHPort = port
	if err := writeSeed(m); err != nil {
		return fmt.Errorf("nspawn: seed: %w", err)
	}
	console, err := os.OpenFile(filepath.Join(m.Dir, "console.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("nspawn: %w", err)
	}
	m.console = console
	if m.cgroups, err = makeCgroups(m.Name); err != nil {
		_ = console.Close()
		return fmt.Errorf("nspawn: cgroups: %w", err)
	}
	m.Started = time.Now()
	cmd, err := m.start()
	if err != nil {
		_ = console.Close()
		return fmt.Errorf("nspawn: start systemd-nspawn: %w", err)
	}
	go r.supervise(m, cmd)
	r.log.Info("container starting", zap.String("machine", m.Name), zap.String("instance_id", m.ID), zap.Int("ssh_port", m.SSHPort))
	// Wait for systemd to be PID 1 inside.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if pid, err := m.Leader(); err == nil {
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "systemd" {
				return nil
			}
		}
		select {
		case <-m.done:
			log, _ := os.ReadFile(filepath.Join(m.Dir, "console.log"))
			why := m.err
			if why == nil {
				why = errors.New("exit status 0")
			}
			return fmt.Errorf("nspawn: container %s exited during boot (%w): %s", m.Name, why, tail(log, 2000))
		case <-ctx.Done():
			r.stop(m)
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.stop(m)
			return fmt.Errorf("nspawn: container %s: no systemd after 30s", m.Name)
		}
	}
}

// rebootStatus is how systemd-nspawn exits when the container's systemd
// asked for a reboot (systemd-nspawn@.service restarts on it).
const rebootStatus = 133

// start runs systemd-nspawn once, in the machine's own cgroups.
func (m *Machine) start() (*exec.Cmd, error) {
	// --register=no --keep-unit: no machined or systemd bus needed on the
	// host; systemd-nspawn then runs the container in its own cgroup, which
	// must therefore be one per container (a shell moves itself there and
	// execs systemd-nspawn). No --private-network: the host's network.
	script := `for d in $DEVPILOT_E2E_CGROUPS; do echo $$ >"$d/cgroup.procs" || exit 1; done; exec "$@"`
	cmd := exec.Command("/bin/sh", "-c", script, "sh", "systemd-nspawn", "--quiet", "--boot", "--directory", m.Root,
		"--machine", m.Name, "--register=no", "--keep-unit", "--console=pipe", "--link-journal=no",
		"--resolv-conf=bind-host", "--timezone=off")
	cmd.Env = append(os.Environ(), "DEVPILOT_E2E_CGROUPS="+strings.Join(m.cgroups, " "))
	cmd.Stdout = m.console
	cmd.Stderr = m.console
	// If the test process dies, the container powers off.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.cmd = cmd
	m.boots++
	m.mu.Unlock()
	return cmd, nil
}

// supervise waits for systemd-nspawn and starts it again when the
// container rebooted, as systemd-nspawn@.service would.
func (r *Runtime) supervise(m *Machine, cmd *exec.Cmd) {
	console := m.console // PowerOn opens a new one for the next supervisor
	defer func() { _ = console.Close() }()
	for {
		err := cmd.Wait()
		var ee *exec.ExitError
		m.mu.Lock()
		again := errors.As(err, &ee) && ee.ExitCode() == rebootStatus && !m.stopping
		m.mu.Unlock()
		if again {
			r.log.Info("container rebooted", zap.String("machine", m.Name))
			next, serr := m.start()
			if serr == nil {
				cmd = next
				continue
			}
			err = serr
		}
		m.mu.Lock()
		m.err = err
		m.mu.Unlock()
		close(m.done)
		return
	}
}

// Boots is how many times the container booted (1 + reboots).
func (m *Machine) Boots() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.boots
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// writeSeed writes the NoCloud seed (what a metadata service would serve)
// and the sshd drop-in for the container's port.
func writeSeed(m *Machine) error {
	seed := filepath.Join(m.Root, "var/lib/cloud/seed/nocloud")
	if err := os.MkdirAll(seed, 0o700); err != nil {
		return err
	}
	var md strings.Builder
	fmt.Fprintf(&md, "instance-id: %s-%s\n", m.Provider, yamlScalar(m.ID))
	fmt.Fprintf(&md, "local-hostname: %s\n", yamlScalar(m.Hostname))
	if len(m.SSHAuthorizedKeys) > 0 {
		md.WriteString("public-keys:\n")
		for _, k := range m.SSHAuthorizedKeys {
			fmt.Fprintf(&md, "  - %s\n", strconv.Quote(strings.TrimSpace(k)))
		}
	}
	if err := os.WriteFile(filepath.Join(seed, "meta-data"), []byte(md.String()), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(seed, "user-data"), m.UserData, 0o600); err != nil {
		return err
	}
	dropin := filepath.Join(m.Root, "etc/ssh/sshd_config.d")
	if err := os.MkdirAll(dropin, 0o755); err != nil {
		return err
	}
	conf := fmt.Sprintf("# devpilot e2e: the container shares the host network; one port each.\nPort %d\nListenAddress 127.0.0.1\n", m.SSHPort)
	return os.WriteFile(filepath.Join(dropin, "50-devpilot-e2e.conf"), []byte(conf), 0o644)
}

var plainRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// yamlScalar quotes s for YAML when it is not a plain token.
func yamlScalar(s string) string {
	if plainRE.MatchString(s) {
		return s
	}
	return strconv.Quote(s)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Leader is the host PID of the container's init (it changes when the
// container reboots).
func (m *Machine) Leader() (int, error) {
	m.mu.Lock()
	cmd := m.cmd
	m.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return 0, errors.New("not started")
	}
	select {
	case <-m.done:
		return 0, fmt.Errorf("container %s is not running", m.Name)
	default:
	}
	pid := cmd.Process.Pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("container %s has no init yet", m.Name)
	}
	return strconv.Atoi(f[0])
}

// Running reports whether systemd-nspawn is still running.
func (m *Machine) Running() bool {
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// Exec runs a command inside the container (all its namespaces, its root)
// and returns stdout and stderr combined.
func (m *Machine) Exec(ctx context.Context, args ...string) ([]byte, error) {
	pid, err := m.Leader()
	if err != nil {
		return nil, err
	}
	full := append([]string{"--target", strconv.Itoa(pid), "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup",
		"--root", "--wd", "--", "/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"}, args...)
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	err = cmd.Run()
	return out.Bytes(), err
}

// Machine returns the container booted for an instance id.
func (r *Runtime) Machine(id string) (*Machine, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, ok := r.machines[id]
	return m, ok
}

// Machines returns every container booted and not destroyed.
func (r *Runtime) Machines() []*Machine {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Machine, 0, len(r.machines))
	for _, m := range r.machines {
		out = append(out, m)
	}
	return out
}

// SSHAddr maps an instance's public IPv4 to where its sshd listens
// (127.0.0.1:PORT); unknown addresses map to ip:22.
func (r *Runtime) SSHAddr(ip string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.machines {
		if m.PublicIPv4 == ip && ip != "" {
			return net.JoinHostPort("127.0.0.1", strconv.Itoa(m.SSHPort))
		}
	}
	return net.JoinHostPort(ip, "22")
}

// Destroy powers the container off (SIGKILL after 20 s) and removes it.
func (r *Runtime) Destroy(ctx context.Context, id string) error {
	r.mu.Lock()
	m, ok := r.machines[id]
	delete(r.machines, id)
	r.mu.Unlock()
	if !ok {
		return nil
	}
	r.stop(m)
	return r.cleanup(m)
}

// stop asks systemd-nspawn to power the container off (it forwards SIGTERM
// as a shutdown request to the container's systemd) and kills what is left.
func (r *Runtime) stop(m *Machine) {
	m.mu.Lock()
	m.stopping = true
	cmd := m.cmd
	m.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	leader, _ := m.Leader()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(20 * time.Second):
		r.log.Warn("container did not power off in 20s, killing it", zap.String("machine", m.Name))
		if leader > 0 {
			_ = syscall.Kill(leader, syscall.SIGKILL) // PID 1 of its namespace: takes everything with it
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-m.done
	}
	r.log.Info("container stopped", zap.String("machine", m.Name))
}

// cgroupRoots are the hierarchies a container's systemd manages: the
// cgroup2 mount and the named systemd v1 hierarchy (hybrid hosts), each
// with this process's own cgroup path in it.
func cgroupRoots() ([]string, error) {
	own := map[string]string{} // "" (v2) or "name=systemd" → path
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) == 3 {
			own[f[1]] = f[2]
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var roots []string
	for _, line := range strings.Split(string(mi), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		switch {
		case qf[0] == "cgroup2":
			roots = append(roots, filepath.Join(pf[4], own[""]))
		case qf[0] == "cgroup" && strings.Contains(","+qf[2]+",", ",name=systemd,"):
			roots = append(roots, filepath.Join(pf[4], own["name=systemd"]))
		}
	}
	if len(roots) == 0 {
		return nil, errors.New("no cgroup2 or name=systemd hierarchy mounted")
	}
	return roots, nil
}

// makeCgroups creates devpilot-e2e/NAME in each hierarchy.
func makeCgroups(name string) ([]string, error) {
	roots, err := cgroupRoots()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range roots {
		d := filepath.Join(r, "devpilot-e2e", name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// sweepCgroups removes the empty cgroups of containers that a killed test
// run left behind (a cgroup with processes cannot be removed, so live
// containers of a concurrent run keep theirs).
func sweepCgroups() {
	roots, err := cgroupRoots()
	if err != nil {
		return
	}
	for _, r := range roots {
		entries, _ := os.ReadDir(filepath.Join(r, "devpilot-e2e"))
		var dirs []string
		for _, e := range entries {
			if e.IsDir() {
				dirs = append(dirs, filepath.Join(r, "devpilot-e2e", e.Name()))
			}
		}
		removeCgroups(dirs)
	}
}

// removeCgroups removes what the container left of its cgroups (deepest
// first; cgroup directories go with rmdir only).
func removeCgroups(dirs []string) {
	for _, d := range dirs {
		var all []string
		_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				all = append(all, p)
			}
			return nil
		})
		for i := len(all) - 1; i >= 0; i-- {
			_ = syscall.Rmdir(all[i])
		}
	}
}

// cleanup unmounts and removes the machine's directory and cgroups.
func (r *Runtime) cleanup(m *Machine) error {
	removeCgroups(m.cgroups)
	var err error
	for i := 0; i < 50; i++ {
		out, uerr := exec.Command("umount", m.Root).CombinedOutput()
		if uerr == nil || !isMounted(m.Root) {
			err = nil
			break
		}
		err = fmt.Errorf("nspawn: umount %s: %w: %s", m.Root, uerr, out)
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	if rerr := os.RemoveAll(m.Dir); rerr != nil {
		return fmt.Errorf("nspawn: %w", rerr)
	}
	return nil
}

func isMounted(path string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// Close destroys every container.
func (r *Runtime) Close() error {
	r.mu.Lock()
	r.closed = true
	ids := make([]string, 0, len(r.machines))
	for id := range r.machines {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	var errs []error
	var wg sync.WaitGroup
	var emu sync.Mutex
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.Destroy(context.Background(), id); err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
