// Package sshdiag collects what went wrong on a server whose agent never
// confirmed its install: it logs in over SSH with the workspace key (as
// root), trusting the host key seen on first contact and refusing a changed
// one afterwards (TOFU, kept in a file), and gathers cloud-init's status,
// the tail of its output log and the agent's journal. The text it returns
// is bounded and has Devpilot tokens redacted.
package sshdiag

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"
)

// Command is one thing run on the server; its output becomes a section.
type Command struct {
	Title string // shown above the output
	Cmd   string // run by the login shell
}

// DefaultCommands are what Collect runs unless Options.Commands says otherwise.
var DefaultCommands = []Command{
	{"cloud-init status --long", "cloud-init status --long"},
	{"tail -n 60 /var/log/cloud-init-output.log", "tail -n 60 /var/log/cloud-init-output.log"},
	{"journalctl -u devpilot-agent --no-pager -n 200", "journalctl -u devpilot-agent --no-pager -n 200"},
}

// Options configure a Collector.
type Options struct {
	// KnownHostsFile keeps the host key of every server seen (TOFU).
	// Required.
	KnownHostsFile string
	User           string        // default root
	Port           int           // default 22
	DialTimeout    time.Duration // one connection attempt, handshake included; default 15 s
	RetryInterval  time.Duration // between connection attempts until ctx ends; default 5 s
	MaxSection     int           // bytes kept of each command's output (its end); default 16 KiB
	Commands       []Command     // default DefaultCommands
	Logger         *zap.Logger
}

// Target is one server to diagnose.
type Target struct {
	ServerID string // the key of its remembered host key
	Addr     string // host or host:port (Options.Port when no port)
	Signer   ssh.Signer
}

// Collector logs in to servers and collects diagnostics. Safe for
// concurrent use.
type Collector struct {
	o  Options
	mu sync.Mutex // guards the known hosts file
}

// New returns a Collector.
func New(o Options) *Collector {
	if o.User == "" {
		o.User = "root"
	}
	if o.Port == 0 {
		o.Port = 22
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = 15 * time.Second
	}
	if o.RetryInterval == 0 {
		o.RetryInterval = 5 * time.Second
	}
	if o.MaxSection == 0 {
		o.MaxSection = 16 << 10
	}
	if o.Commands == nil {
		o.Commands = DefaultCommands
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return &Collector{o: o}
}

// ErrHostKeyChanged is returned (wrapped) when a server presents a host key
// other than the one recorded on first contact.
var ErrHostKeyChanged = errors.New("host key changed")

// Collect logs in to t and returns the output of the commands, one section
// each. Connection attempts repeat until ctx ends (a server may still be
// booting). A command that fails still gives its output and exit status;
// the error is for not getting in at all (or ctx ending midway), and what
// was collected until then is returned with it.
func (c *Collector) Collect(ctx context.Context, t Target) (string, error) {
	client, closeClient, err := c.login(ctx, t)
	if err != nil {
		return "", err
	}
	defer closeClient()

	var b strings.Builder
	for _, cmd := range c.o.Commands {
		out, status := c.run(client, cmd.Cmd)
		fmt.Fprintf(&b, "$ %s\n", cmd.Title)
		b.WriteString(out)
		if out != "" && !strings.HasSuffix(out, "\n") {
			b.WriteByte('\n')
		}
		if status != "" {
			fmt.Fprintf(&b, "(%s)\n", status)
		}
		b.WriteByte('\n')
		if ctx.Err() != nil {
			return strings.TrimSpace(b.String()), fmt.Errorf("sshdiag: %w", ctx.Err())
		}
	}
	return strings.TrimSpace(b.String()), nil
}

// login connects to t (retrying until ctx ends) and returns the client
// and a func that closes it; ctx ending closes it too, so nothing waits on
// a server that stopped answering.
func (c *Collector) login(ctx context.Context, t Target) (*ssh.Client, func(), error) {
	if t.Signer == nil {
		return nil, nil, errors.New("sshdiag: no key to log in with")
	}
	addr := t.Addr
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, fmt.Sprint(c.o.Port))
	}
	client, err := c.dial(ctx, t.ServerID, addr, t.Signer)
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = client.Close() })
	return client, func() { stop(); _ = client.Close() }, nil
}

// Run logs in to t (retrying until ctx ends, like Collect) and runs cmd
// with stdin, so a secret reaches a command on the server without being in
// its arguments. It returns the bounded, redacted output; a failed command
// is an error naming its exit status.
func (c *Collector) Run(ctx context.Context, t Target, cmd string, stdin io.Reader) (string, error) {
	client, closeClient, err := c.login(ctx, t)
	if err != nil {
		return "", err
	}
	defer closeClient()
	sess, err := client.NewSession()
	if err != nil {
		return "", fmt.Errorf("sshdiag: open session: %w", err)
	}
	defer func() { _ = sess.Close() }()
	out := &tailBuffer{max: c.o.MaxSection}
	sess.Stdin, sess.Stdout, sess.Stderr = stdin, out, out
	err = sess.Run(cmd)
	text := strings.TrimSpace(Redact(out.String()))
	var exit *ssh.ExitError
	switch {
	case err == nil:
		return text, nil
	case errors.As(err, &exit):
		return text, fmt.Errorf("sshdiag: %s: exit status %d: %s", cmd, exit.ExitStatus(), text)
	}
	return text, fmt.Errorf("sshdiag: %s: %w", cmd, err)
}

// dial connects until it gets in, ctx ends, or the host key is wrong.
func (c *Collector) dial(ctx context.Context, serverID, addr string, signer ssh.Signer) (*ssh.Client, error) {
	cfg := &ssh.ClientConfig{
		User:            c.o.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: c.hostKeyCallback(serverID),
		Timeout:         c.o.DialTimeout,
	}
	var last error
	for attempt := 1; ; attempt++ {
		client, err := c.dialOnce(ctx, addr, cfg)
		if err == nil {
			return client, nil
		}
		if errors.Is(err, ErrHostKeyChanged) {
			return nil, fmt.Errorf("sshdiag: %s: %w", addr, err)
		}
		// An attempt cut short by ctx ending says less than the one before
		// it (say, "unable to authenticate"): keep the earlier cause. The
		// connection's deadline is ctx's, and its timeout can fire before
		// ctx reports its end, so the clock decides.
		if last == nil || !endedWith(ctx) {
			last = err
		}
		c.o.Logger.Debug("ssh diagnostics: connect", zap.String("server_id", serverID), zap.String("addr", addr),
			zap.Int("attempt", attempt), zap.Error(err))
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("sshdiag: could not log in to %s as %s after %d attempts: %w", addr, c.o.User, attempt, last)
		case <-time.After(c.o.RetryInterval):
		}
	}
}

// endedWith reports whether ctx has ended or its deadline has passed.
func endedWith(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

func (c *Collector) dialOnce(ctx context.Context, addr string, cfg *ssh.ClientConfig) (*ssh.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, c.o.DialTimeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	deadline, _ := dctx.Deadline()
	_ = conn.SetDeadline(deadline)
	cc, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(cc, chans, reqs), nil
}

// run executes cmd and returns its bounded, redacted output and a status
// note ("" for success).
func (c *Collector) run(client *ssh.Client, cmd string) (string, string) {
	sess, err := client.NewSession()
	if err != nil {
		return "", "could not open a session: " + err.Error()
	}
	defer func() { _ = sess.Close() }()
	out := &tailBuffer{max: c.o.MaxSection}
	sess.Stdout = out
	sess.Stderr = out
	err = sess.Run(cmd)
	text := Redact(out.String())
	var exit *ssh.ExitError
	switch {
	case err == nil:
		return text, ""
	case errors.As(err, &exit):
		return text, fmt.Sprintf("exit status %d", exit.ExitStatus())
	default:
		return text, "failed: " + err.Error()
	}
}

// tailBuffer keeps the last max bytes written and notes what it dropped.
type tailBuffer struct {
	max     int
	buf     []byte
	dropped int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.dropped += over
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	if t.dropped == 0 {
		return string(t.buf)
	}
	// Start at a line boundary.
	b := t.buf
	if i := bytes.IndexByte(b, '\n'); i >= 0 && i < len(b)-1 {
		t.dropped += i + 1
		b = b[i+1:]
	}
	return fmt.Sprintf("[… %d earlier bytes omitted]\n%s", t.dropped, b)
}

var tokenRE = regexp.MustCompile(`dpt_[A-Za-z0-9_-]+`)

// Redact replaces Devpilot tokens (bootstrap tokens look like API tokens:
// dpt_ID_SECRET) in s.
func Redact(s string) string {
	return tokenRE.ReplaceAllString(s, "dpt_[redacted]")
}

// hostKeyCallback accepts and records the first host key a server shows,
// and after that only the same key.
func (c *Collector) hostKeyCallback(serverID string) ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		known, err := c.readKnown()
		if err != nil {
			return err
		}
		got := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
		if want, ok := known[serverID]; ok {
			if want == got {
				return nil
			}
			wk, _, _, _, perr := ssh.ParseAuthorizedKey([]byte(want))
			wantFP := "unparsable"
			if perr == nil {
				wantFP = ssh.FingerprintSHA256(wk)
			}
			return fmt.Errorf("%w for server %s: recorded %s, offered %s (if the server was rebuilt on purpose, remove its line from %s)",
				ErrHostKeyChanged, serverID, wantFP, ssh.FingerprintSHA256(key), c.o.KnownHostsFile)
		}
		if err := os.MkdirAll(filepath.Dir(c.o.KnownHostsFile), 0o700); err != nil {
			return fmt.Errorf("known hosts: %w", err)
		}
		f, err := os.OpenFile(c.o.KnownHostsFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("known hosts: %w", err)
		}
		_, werr := fmt.Fprintf(f, "%s %s\n", serverID, got)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return fmt.Errorf("known hosts: %w", werr)
		}
		c.o.Logger.Info("ssh diagnostics: recorded host key on first contact", zap.String("server_id", serverID),
			zap.String("fingerprint", ssh.FingerprintSHA256(key)))
		return nil
	}
}

// readKnown reads "SERVER_ID KEYTYPE BASE64" lines.
func (c *Collector) readKnown() (map[string]string, error) {
	out := map[string]string{}
	f, err := os.Open(c.o.KnownHostsFile)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("known hosts: %w", err)
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		id, key, ok := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		if ok && id != "" && !strings.HasPrefix(id, "#") {
			out[id] = strings.TrimSpace(key)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("known hosts: %w", err)
	}
	return out, nil
}

// KnownHostKey returns the host key recorded for a server (authorized_keys
// format), if any.
func (c *Collector) KnownHostKey(serverID string) (string, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	known, err := c.readKnown()
	if err != nil {
		return "", false, err
	}
	k, ok := known[serverID]
	return k, ok, nil
}
