package sshdiag_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/crypto/ssh"

	"github.com/devpilot/devpilot/bootstrap/sshdiag"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// server is a tiny SSH server: it accepts one user key as root and answers
// exec requests from a table (exit status 127 for anything else).
type server struct {
	addr    string
	ln      net.Listener
	wg      sync.WaitGroup
	mu      sync.Mutex
	ran     []string
	stdin   []string // what each command read, in order
	outputs map[string]struct {
		out  string
		code uint32
	}
}

func startServer(t *testing.T, hostKey, userKey ssh.Signer, outputs map[string]string) *server {
	t.Helper()
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(c ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if c.User() == "root" && string(k.Marshal()) == string(userKey.PublicKey().Marshal()) {
			return nil, nil
		}
		return nil, errors.New("denied")
	}}
	cfg.AddHostKey(hostKey)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{addr: ln.Addr().String(), ln: ln, outputs: map[string]struct {
		out  string
		code uint32
	}{}}
	for cmd, out := range outputs {
		code := uint32(0)
		if rest, ok := strings.CutPrefix(out, "EXIT1:"); ok {
			out, code = rest, 1
		}
		s.outputs[cmd] = struct {
			out  string
			code uint32
		}{out, code}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(c, cfg)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *server) serve(c net.Conn, cfg *ssh.ServerConfig) {
	defer func() { _ = c.Close() }()
	_, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		for req := range creqs {
			if req.Type != "exec" {
				_ = req.Reply(false, nil)
				continue
			}
			var p struct{ Cmd string }
			_ = ssh.Unmarshal(req.Payload, &p)
			_ = req.Reply(true, nil)
			in, _ := io.ReadAll(ch) // until the client's EOF
			s.mu.Lock()
			s.ran = append(s.ran, p.Cmd)
			s.stdin = append(s.stdin, string(in))
			o, ok := s.outputs[p.Cmd]
			s.mu.Unlock()
			if !ok {
				o.out, o.code = "sh: not found\n", 127
			}
			_, _ = ch.Write([]byte(o.out))
			_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{o.code}))
			_ = ch.Close()
			break
		}
	}
}

var outputs = map[string]string{
	"cloud-init status --long":                       "EXIT1:status: error\ndetail: scripts-user failed\n",
	"tail -n 60 /var/log/cloud-init-output.log":      "devpilot-bootstrap: error: download failed\nbootstrap_token dpt_abc123_SECRETsecret\n",
	"journalctl -u devpilot-agent --no-pager -n 200": "-- No entries --\n",
}

func TestCollectRunsCommandsAndRecordsHostKey(t *testing.T) {
	t.Parallel()
	host, user := newSigner(t), newSigner(t)
	srv := startServer(t, host, user, outputs)
	known := filepath.Join(t.TempDir(), "known_hosts")
	c := sshdiag.New(sshdiag.Options{KnownHostsFile: known, RetryInterval: 10 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	text, err := c.Collect(ctx, sshdiag.Target{ServerID: "srv_1", Addr: srv.addr, Signer: user})
	if err != nil {
		t.Fatalf("collect: %v", err)
	}
	for _, want := range []string{
		"$ cloud-init status --long\nstatus: error\ndetail: scripts-user failed\n(exit status 1)",
		"devpilot-bootstrap: error: download failed",
		"$ journalctl -u devpilot-agent --no-pager -n 200\n-- No entries --",
		"dpt_[redacted]",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "SECRETsecret") {
		t.Errorf("a token leaked into the diagnostics:\n%s", text)
	}
	got, ok, err := c.KnownHostKey("srv_1")
	want := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(host.PublicKey())))
	if err != nil || !ok || got != want {
		t.Errorf("recorded host key %q %v %v, want %q", got, ok, err, want)
	}
	if fi, err := os.Stat(known); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("known hosts file: %v %v, want mode 0600", fi, err)
	}

	// Same key again: fine, and nothing new recorded.
	if _, err := c.Collect(ctx, sshdiag.Target{ServerID: "srv_1", Addr: srv.addr, Signer: user}); err != nil {
		t.Errorf("second collect: %v", err)
	}
	b, _ := os.ReadFile(known)
	if n := strings.Count(string(b), "\n"); n != 1 {
		t.Errorf("known hosts has %d lines, want 1:\n%s", n, b)
	}
}

// Run hands stdin to the command (a secret stays out of its arguments)
// and reports a failing command with its exit status.
func TestRunPassesStdin(t *testing.T) {
	t.Parallel()
	host, user := newSigner(t), newSigner(t)
	srv := startServer(t, host, user, map[string]string{
		"devpilot-agent enroll --token-file -": "new identity SHA256:abc\n",
		"false":                                "EXIT1:nope\n",
	})
	c := sshdiag.New(sshdiag.Options{KnownHostsFile: filepath.Join(t.TempDir(), "known_hosts"), RetryInterval: 10 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tgt := sshdiag.Target{ServerID: "srv_1", Addr: srv.addr, Signer: user}
	out, err := c.Run(ctx, tgt, "devpilot-agent enroll --token-file -", strings.NewReader("dpt_x_secret\n"))
	if err != nil || out != "new identity SHA256:abc" {
		t.Fatalf("run: %q %v", out, err)
	}
	srv.mu.Lock()
	got := append([]string(nil), srv.stdin...)
	srv.mu.Unlock()
	if len(got) != 1 || got[0] != "dpt_x_secret\n" {
		t.Errorf("command read %q, want the token", got)
	}
	if _, err := c.Run(ctx, tgt, "false", nil); err == nil || !strings.Contains(err.Error(), "exit status 1") {
		t.Errorf("failing command: %v", err)
	}
}

func TestChangedHostKeyIsRefused(t *testing.T) {
	t.Parallel()
	user := newSigner(t)
	first := startServer(t, newSigner(t), user, outputs)
	impostor := startServer(t, newSigner(t), user, outputs)
	c := sshdiag.New(sshdiag.Options{KnownHostsFile: filepath.Join(t.TempDir(), "kh"), RetryInterval: 10 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Collect(ctx, sshdiag.Target{ServerID: "srv_1", Addr: first.addr, Signer: user}); err != nil {
		t.Fatalf("first contact: %v", err)
	}
	start := time.Now()
	text, err := c.Collect(ctx, sshdiag.Target{ServerID: "srv_1", Addr: impostor.addr, Signer: user})
	if !errors.Is(err, sshdiag.ErrHostKeyChanged) || !strings.Contains(err.Error(), "SHA256:") || text != "" {
		t.Fatalf("impostor: %q, %v; want ErrHostKeyChanged with fingerprints and no output", text, err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("a changed host key must not be retried")
	}
	impostor.mu.Lock()
	ran := impostor.ran
	impostor.mu.Unlock()
	if len(ran) != 0 {
		t.Errorf("commands ran on the impostor: %v", ran)
	}
	// Another server id has its own first contact.
	if _, err := c.Collect(ctx, sshdiag.Target{ServerID: "srv_2", Addr: impostor.addr, Signer: user}); err != nil {
		t.Errorf("other server: %v", err)
	}
}

func TestRetriesUntilSSHDIsUpAndGivesUpWithContext(t *testing.T) {
	t.Parallel()
	user := newSigner(t)
	// Nothing listens yet: reserve a port, close it, start the server later.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	c := sshdiag.New(sshdiag.Options{KnownHostsFile: filepath.Join(t.TempDir(), "kh"), RetryInterval: 20 * time.Millisecond})

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = c.Collect(ctx, sshdiag.Target{ServerID: "srv_1", Addr: addr, Signer: user})
	if err == nil || !strings.Contains(err.Error(), "could not log in") {
		t.Fatalf("nothing listening: %v", err)
	}

	// A wrong user key is not let in either.
	srv := startServer(t, newSigner(t), newSigner(t), outputs)
	// Generous: under -race on a loaded machine one handshake can take a
	// while; the error must name the rejected key either way.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if _, err := c.Collect(ctx2, sshdiag.Target{ServerID: "srv_3", Addr: srv.addr, Signer: user}); err == nil ||
		!strings.Contains(err.Error(), "unable to authenticate") {
		t.Errorf("wrong key: %v", err)
	}
}

func TestOutputIsBounded(t *testing.T) {
	t.Parallel()
	host, user := newSigner(t), newSigner(t)
	var big strings.Builder
	for i := 0; i < 5000; i++ {
		fmt.Fprintf(&big, "line %d of a very chatty cloud-init log\n", i)
	}
	srv := startServer(t, host, user, map[string]string{"cat big": big.String()})
	c := sshdiag.New(sshdiag.Options{KnownHostsFile: filepath.Join(t.TempDir(), "kh"), MaxSection: 4096,
		Commands: []sshdiag.Command{{Title: "cat big", Cmd: "cat big"}, {Title: "missing", Cmd: "missing"}}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	text, err := c.Collect(ctx, sshdiag.Target{ServerID: "srv_1", Addr: srv.addr, Signer: user})
	if err != nil {
		t.Fatal(err)
	}
	if len(text) > 4096+200 {
		t.Errorf("output is %d bytes, want about 4 KiB", len(text))
	}
	for _, want := range []string{"earlier bytes omitted]\nline ", "line 4999 of", "$ missing\nsh: not found\n(exit status 127)"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
}
