package devenv_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/backup"
	"github.com/devpilot/devpilot/controlplane/devenv"
	"github.com/devpilot/devpilot/shared/protocol"
)

// startSQLite is start on SQLite whatever DEVPILOT_TEST_DATABASE says: a
// PostgreSQL backup holds no database (pg_dump's job, see package backup).
func startSQLite(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), logs: &syncBuffer{}, out: &syncBuffer{}}
	env, err := devenv.Start(context.Background(), devenv.Config{
		DataDir: h.dir, Listen: "127.0.0.1:0", Logger: zap.NewNop(), Out: h.out, BootDelay: 10 * time.Millisecond,
		AgentDir: agentDir, HeartbeatInterval: time.Second, PollInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("start dev environment: %v", err)
	}
	h.env = env
	t.Cleanup(func() {
		if err := env.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		h.client.CloseIdleConnections()
	})
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(env.App.CACertPEM) {
		t.Fatal("no CA certificate")
	}
	h.client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	h.token = env.Values["DEVPILOT_TOKEN"]
	return h
}

// TestBackupWhileATaskRunsRestoresEverything is issue 15's "done when":
// a backup taken while the control plane serves and a task runs on a real
// agent, restored into a new data dir, gives a control plane that lists
// the same integrations (which still pass their test against the
// simulator: the sealed token opens with the restored keyring), servers
// and tasks; the agent reconnects to it (it pins the restored CA) and the
// task that was running finishes there. The unencrypted archive holds no
// secret in plaintext.
func TestBackupWhileATaskRunsRestoresEverything(t *testing.T) {
	h := startSQLite(t)
	s := onlineServers(t, h, 1)[0]
	call := h.api
	done := runTask(t, call, s.ID, map[string]any{"kind": "exec", "argv": []string{"echo", "before"}})
	waitTask(t, call, done.ID, 30*time.Second, "final", final)
	running := runTask(t, call, s.ID, map[string]any{"kind": "exec", "argv": []string{"sh", "-c", "sleep 6; echo finished"}})
	waitTask(t, call, running.ID, 30*time.Second, "running", func(v e2eTask) bool { return v.State == protocol.TaskRunning })

	type lists struct {
		Integrations []struct{ ID, Status string } `json:"integrations"`
		Servers      []struct{ ID, State string }  `json:"servers"`
		Tasks        []struct{ ID string }         `json:"tasks"`
	}
	list := func() (l lists) {
		t.Helper()
		for _, p := range []string{base, servers, tasksPath} {
			if c := call("GET", p, nil, &l); c != 200 {
				t.Fatalf("GET %s: %d", p, c)
			}
		}
		return l
	}
	ids := func(l lists) (in, sv, tk []string) {
		for _, x := range l.Integrations {
			in = append(in, x.ID)
		}
		for _, x := range l.Servers {
			sv = append(sv, x.ID)
		}
		for _, x := range l.Tasks {
			tk = append(tk, x.ID)
		}
		slices.Sort(in)
		slices.Sort(sv)
		slices.Sort(tk)
		return
	}
	before := list()

	var archive bytes.Buffer
	m, err := backup.Create(context.Background(), &archive, backup.Options{DataDir: h.dir})
	if err != nil {
		t.Fatalf("backup while serving: %v", err)
	}
	if m.Database != "sqlite" || m.SchemaVersion == 0 {
		t.Fatalf("manifest: %+v", m)
	}
	// Canary: no cloud credential or API token in plaintext anywhere in it.
	plain := untar(t, archive.Bytes())
	for _, secret := range []string{h.env.Values["DO_SIM_TOKEN"], h.env.Values["VULTR_SIM_KEY"], h.token} {
		if bytes.Contains(plain, []byte(secret)) {
			t.Fatalf("the archive holds a secret (%.8s…) in plaintext", secret)
		}
	}

	restored := filepath.Join(t.TempDir(), "restored")
	if _, err := backup.Restore(context.Background(), bytes.NewReader(archive.Bytes()), backup.RestoreOptions{DataDir: restored}); err != nil {
		t.Fatal(err)
	}
	if err := h.env.RestartControlPlane(context.Background(), restored); err != nil {
		t.Fatalf("start the restored control plane: %v", err)
	}
	h.client.CloseIdleConnections()

	after := list()
	bi, bs, bt := ids(before)
	ai, as, at := ids(after)
	if !slices.Equal(bi, ai) || !slices.Equal(bs, as) || !slices.Equal(bt, at) || len(bi) != 1 || len(bs) != 1 || len(bt) != 2 {
		t.Fatalf("restored lists differ:\nbefore %v %v %v\nafter  %v %v %v", bi, bs, bt, ai, as, at)
	}
	var got integration
	if c := h.call("", "POST", base+"/"+bi[0]+"/test", nil, &got); c != 200 || got.Status != "valid" {
		t.Fatalf("integration test on the restored control plane: %d %+v", c, got)
	}
	if v := waitTask(t, call, done.ID, 10*time.Second, "final", final); v.State != protocol.TaskSucceeded || logText(t, call, v.ID) != "before\n" {
		t.Fatalf("the finished task on the restored control plane: %+v", v)
	}
	h.waitServer(s.ID, 120*time.Second, "online with its agent reconnected", func(s server) bool { return online(s) && s.Agent.Connected })
	v := waitTask(t, call, running.ID, 120*time.Second, "final", final)
	if v.State != protocol.TaskSucceeded || !strings.Contains(logText(t, call, v.ID), "finished") {
		t.Fatalf("the task running at backup time, on the restored control plane: %+v %q", v, logText(t, call, v.ID))
	}
	// And the restored control plane runs new work on the agent.
	nv := runTask(t, call, s.ID, map[string]any{"kind": "exec", "argv": []string{"echo", "after"}})
	if nv = waitTask(t, call, nv.ID, 60*time.Second, "final", final); nv.State != protocol.TaskSucceeded {
		t.Fatalf("a new task after restore: %+v", nv)
	}
}

// untar is every entry's bytes of an unencrypted backup, concatenated.
func untar(t *testing.T, archive []byte) []byte {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var all []byte
	for {
		_, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return all
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		all = append(all, b...)
	}
}
