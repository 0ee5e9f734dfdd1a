package nspawn

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
)

func TestSeedIsWhatAMetadataServiceWouldServe(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	m := &Machine{Machine: simrun.Machine{Provider: "vultr", ID: "9e2bfc4e-befc-4f49-9689-b243dfbdb204", Hostname: "web 1",
		SSHAuthorizedKeys: []string{"ssh-ed25519 AAAAC3Nza devpilot-ws-default\n"}, UserData: []byte("#!/bin/sh\necho hi\n")},
		Root: root, SSHPort: 40022}
	if err := writeSeed(m); err != nil {
		t.Fatal(err)
	}
	read := func(rel string) (string, os.FileMode) {
		p := filepath.Join(root, rel)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(p)
		return string(b), fi.Mode().Perm()
	}
	md, _ := read("var/lib/cloud/seed/nocloud/meta-data")
	want := "instance-id: vultr-9e2bfc4e-befc-4f49-9689-b243dfbdb204\nlocal-hostname: \"web 1\"\npublic-keys:\n  - \"ssh-ed25519 AAAAC3Nza devpilot-ws-default\"\n"
	if md != want {
		t.Errorf("meta-data:\n%s\nwant:\n%s", md, want)
	}
	if ud, mode := read("var/lib/cloud/seed/nocloud/user-data"); ud != "#!/bin/sh\necho hi\n" || mode != 0o600 {
		t.Errorf("user-data %q mode %o: want it verbatim and 0600 (it holds a token)", ud, mode)
	}
	if conf, _ := read("etc/ssh/sshd_config.d/50-devpilot-e2e.conf"); !strings.Contains(conf, "Port 40022\nListenAddress 127.0.0.1\n") {
		t.Errorf("sshd drop-in: %q", conf)
	}
}

func TestMachineNamesAreValidAndUnique(t *testing.T) {
	t.Parallel()
	a := machineName(simrun.Machine{Provider: "digitalocean", ID: "502387411"})
	b := machineName(simrun.Machine{Provider: "digitalocean", ID: "502387411"})
	v := machineName(simrun.Machine{Provider: "vultr", ID: "9E2BFC4E-befc-4f49-9689-b243dfbdb204-and-then-some-more"})
	for _, n := range []string{a, b, v} {
		if len(n) > 64 || strings.Trim(n, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			t.Errorf("name %q is not a valid machine name", n)
		}
	}
	if a == b || !strings.HasPrefix(a, "do-502387411-") || !strings.HasPrefix(v, "vultr-9e2bfc4e") {
		t.Errorf("names %q %q %q", a, b, v)
	}
}
