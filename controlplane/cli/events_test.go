package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/devenv"
)

// lockedBuffer is a stdout a test reads while the CLI writes it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// cutter is a TCP proxy to the control plane whose open connections the
// test can cut, as a flaky network would.
type cutter struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func newCutter(t *testing.T, target string) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				_ = in.Close()
				continue
			}
			c.mu.Lock()
			c.conns = append(c.conns, in, out)
			c.mu.Unlock()
			c.wg.Add(2)
			go func() { defer c.wg.Done(); _, _ = io.Copy(out, in); _ = out.Close() }()
			go func() { defer c.wg.Done(); _, _ = io.Copy(in, out); _ = in.Close() }()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); c.cut(); c.wg.Wait() })
	return c
}

func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.conns {
		_ = n.Close()
	}
	c.conns = nil
}

// waitFor polls s until it holds want (a generous deadline: CI is busy).
func waitFor(t *testing.T, what string, s func() string, want string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(s(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q within 2 minutes in:\n%s", what, want, s())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// devpilot events lists what happened, and -f shows events live through a
// dropped connection, each once, until Ctrl-C (exit 130).
func TestEventsFollowLive(t *testing.T) {
	e, err := devenv.Start(context.Background(), devenv.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Out: &bytes.Buffer{},
		BootDelay: 10 * time.Millisecond, AgentDir: t.TempDir(), PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	v := map[string]string{}
	for k, x := range e.Values {
		v[k] = x
	}
	if r := cli(t, v, v["DO_SIM_TOKEN"]+"\n", "integrations", "connect", "--provider", "digitalocean", "--access-key", "my-do"); r.code != 0 {
		t.Fatalf("connect: %+v", r)
	}

	// Follow through a proxy the test can cut.
	u, _ := url.Parse(v["DEVPILOT_URL"])
	proxy := newCutter(t, u.Host)
	viaProxy := map[string]string{}
	for k, x := range v {
		viaProxy[k] = x
	}
	u.Host = proxy.ln.Addr().String()
	viaProxy["DEVPILOT_URL"] = u.String()
	ctx, interrupt := context.WithCancel(context.Background())
	defer interrupt()
	var out, errOut lockedBuffer
	done := make(chan int, 1)
	go func() {
		env := Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return viaProxy[k] }}
		done <- Main(ctx, []string{"events", "-f", "-o", "json", "--type", "server.*"}, env)
	}()

	create := func(name string) {
		t.Helper()
		r := cli(t, v, "", "servers", "create", "--integration", "my-do", "--name", name, "--region", "nyc3", "--size", "s-1vcpu-1gb", "--image", "debian-12")
		if r.code != 0 {
			t.Fatalf("servers create: %+v", r)
		}
	}
	create("web-1")
	waitFor(t, "the first event live", out.String, `"name":"web-1"`)
	proxy.cut()
	waitFor(t, "the cut noticed", errOut.String, "resuming")
	create("web-2")
	waitFor(t, "an event after the cut", out.String, `"name":"web-2"`)

	interrupt()
	select {
	case code := <-done:
		if code != ExitInterrupted {
			t.Errorf("exit %d after Ctrl-C, want %d (stderr %s)", code, ExitInterrupted, errOut.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("events -f did not stop on Ctrl-C")
	}
	var created []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var ev apitypes.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("a line that is not one JSON event: %q", line)
		}
		if ev.Type == "server.created" {
			created = append(created, ev.Subject)
		}
	}
	if len(created) != 2 || created[0] == created[1] {
		t.Errorf("server.created events %v, want each server's once", created)
	}

	r := cli(t, v, "", "events")
	if r.code != 0 || !strings.Contains(r.stdout, "SUMMARY") || !strings.Contains(r.stdout, "server.created") || !strings.Contains(r.stdout, "web-2") {
		t.Errorf("events table: %+v", r)
	}
	if r := cli(t, v, "", "events", "--type", "task.*", "-o", "json"); r.code != 0 || !strings.Contains(r.stdout, `"events": []`) {
		t.Errorf("no task events: %+v", r)
	}
	if r := cli(t, v, "", "events", "--type", "servers"); r.code != 1 || !strings.Contains(r.stderr, "validation_failed") || !strings.Contains(r.stderr, "server.*") {
		t.Errorf("a bad pattern: %+v", r)
	}
}
