package sandbox

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/bootstrap/cloudinit"
	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/shared/protocol"
)

// fakeAgent stands in for devpilot-agent: install keeps a copy of the
// bootstrap file; run sleeps like a daemon.
const fakeAgent = `#!/bin/sh
set -eu
case $1 in
install)
	cp "$3" "$DEVPILOT_AGENT_ROOT_DIR/installed.json"
	echo "installed with supervisor=$DEVPILOT_AGENT_SUPERVISOR"
	;;
run)
	echo "running $*"
	exec sleep 1000
	;;
esac
`

// TestBootsRenderedUserData is what `devpilot dev` does: the control plane
// serves the agent over TLS, the simulated cloud boots the rendered
// user-data in the sandbox, and the installed agent ends up running.
func TestBootsRenderedUserData(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	builds := t.TempDir()
	for _, arch := range []string{cloudinit.ArchAMD64, cloudinit.ArchARM64} {
		if err := os.WriteFile(filepath.Join(builds, cloudinit.AgentFileName("linux", arch)), []byte(fakeAgent), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	h, sums, err := cloudinit.AgentHandler(builds)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(h) // its certificate is self-signed and a CA
	t.Cleanup(srv.Close)
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	ud, err := cloudinit.Render(cloudinit.Params{
		ControlPlaneURL: srv.URL,
		CACertPEM:       caPEM,
		AgentSHA256:     sums,
		ServerID:        "srv_42",
		BootstrapToken:  secrets.New("dpb_secret_token"),
		Hostname:        "web-1",
	})
	if err != nil {
		t.Fatal(err)
	}

	r := newRuntime(t, Options{AgentEnv: []string{"DEVPILOT_BOOTSTRAP_RETRIES=0"}})
	if err := r.Boot(context.Background(), simrun.Machine{Provider: "digitalocean", ID: "42", Hostname: "web-1", UserData: ud}); err != nil {
		t.Fatal(err)
	}
	info := waitFor(t, r, "42", "ran the agent", func(i Info) bool {
		return i.State == StateAgentRunning || i.State == StateUserDataFailed
	})
	out := readFile(t, filepath.Join(info.Root, OutputLogPath))
	if info.State != StateAgentRunning {
		t.Fatalf("user-data failed: %+v\n%s", info, out)
	}
	for _, ph := range []string{cloudinit.PhaseStart, cloudinit.PhaseDownloaded, cloudinit.PhaseVerified, cloudinit.PhaseInstalled} {
		if _, ok := cloudinit.ParsePhases([]byte(out))[ph]; !ok {
			t.Errorf("no %s phase in cloud-init-output.log:\n%s", ph, out)
		}
	}
	if !strings.Contains(out, "installed with supervisor=none") {
		t.Errorf("install did not run with DEVPILOT_AGENT_SUPERVISOR=none:\n%s", out)
	}
	var b protocol.Bootstrap
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(info.Root, "installed.json"))), &b); err != nil {
		t.Fatal(err)
	}
	if b.ServerID != "srv_42" || b.BootstrapToken != "dpb_secret_token" || b.URL != srv.URL || b.CACertPEM != caPEM {
		t.Errorf("bootstrap = %+v", b)
	}
	log := waitFileCount(t, filepath.Join(info.Root, AgentLogPath), "running run --root-dir "+info.Root, 1)
	if strings.Contains(out+log, "dpb_secret_token") {
		t.Error("the bootstrap token reached a log")
	}
}
