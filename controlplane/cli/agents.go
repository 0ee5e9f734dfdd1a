package cli

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/devpilot/devpilot/controlplane/agentrelease"
	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/shared/atomicfile"
	"github.com/devpilot/devpilot/shared/release"
)

// agentsCmd is the agents noun: release signing keys and signed releases
// (issue 13). Other verbs about the fleet's agents (rollouts) belong in
// the list at the end.
func agentsCmd(env Env) *cobra.Command {
	return group("agents", "agent releases: signing keys (offline), signed builds, the releases served",
		"  devpilot agents keygen --out release.key\n  devpilot agents sign --key release.key devpilot-agent --version v1.4.0\n  devpilot agents releases list",
		append([]*cobra.Command{agentsKeygenCmd(env), agentsSignCmd(env), agentReleasesCmd(env)}, agentRolloutVerbs(env)...)...)
}

func agentsKeygenCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "keygen --out FILE", Short: "offline: make an agent release signing key (FILE, 0600) and print its public key",
		Long: `keygen writes a new ed25519 release signing key to FILE (mode 0600; it refuses
to overwrite one) and its public key to FILE.pub, and prints the public key.
Keep FILE offline (an air-gapped machine or a hardware-backed vault): it is
what makes an agent trust a binary. The control plane only needs the public
key (devpilot serve --agent-release-key FILE.pub), and new servers' agents
pin it at install.`,
		Args: noArgs, Example: "  devpilot agents keygen --out /media/offline/devpilot-release.key"}, verbFlags{json: true, local: true}, func(v *verb) runFn {
		out := v.fs.String("out", "", "where to write the private key (0600); FILE.pub gets the public key")
		return func(ctx context.Context, _ []string) error {
			if *out == "" {
				return usagef("agents keygen: --out FILE is required")
			}
			if _, err := os.Stat(*out); err == nil {
				return usagef("agents keygen: %s exists; a signing key is never overwritten (move it away first)", *out)
			}
			k, err := release.GenerateKey()
			if err != nil {
				return err
			}
			pemb, err := release.MarshalPrivateKey(k)
			if err != nil {
				return err
			}
			pub := k.Public().(ed25519.PublicKey)
			if err := atomicfile.WriteFile(*out, pemb, 0o600); err != nil {
				return err
			}
			text := release.EncodePublicKey(pub)
			if err := atomicfile.WriteFile(*out+".pub", []byte("# devpilot agent release key "+release.KeyID(pub)+"\n"+text+"\n"), 0o644); err != nil {
				return err
			}
			return v.printValue(map[string]string{"key_id": release.KeyID(pub), "public_key": text, "private_key_file": *out, "public_key_file": *out + ".pub"}, func() {
				fmt.Fprintln(env.Stdout, text)
				fmt.Fprintf(env.Stderr, "Release key %s: private key in %s (0600, keep it offline), public key in %s.pub.\n"+
					"Give the control plane the public key: devpilot serve --agent-release-key %s.pub\n", release.KeyID(pub), *out, *out, *out)
			})
		}
	})
}

func agentsSignCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "sign --key FILE BINARY --version V [--os linux] [--arch amd64]", Short: "offline: sign an agent build (writes BINARY.sig)",
		Long: `sign hashes BINARY and signs the statement binding version, os, arch and
sha256 with the release key, writing BINARY.sig (JSON). The version must be
the one the build reports (devpilot-agent version), so the control plane can
tell the update arrived. Run it where the key lives; copy BINARY and
BINARY.sig to the control plane and add them (devpilot agents releases add).`,
		Args: one("agent binary"), Example: "  devpilot agents sign --key release.key dist/devpilot-agent-linux-amd64 --version v1.4.0 --arch amd64"},
		verbFlags{json: true, local: true}, func(v *verb) runFn {
			key := v.fs.String("key", "", "the release signing key (devpilot agents keygen)")
			ver := v.fs.String("version", "", "the build's version")
			goos := v.fs.String("os", "linux", "the build's operating system")
			arch := v.fs.String("arch", "amd64", "the build's architecture: amd64 or arm64")
			return func(ctx context.Context, args []string) error {
				if *key == "" || *ver == "" {
					return usagef("agents sign: --key and --version are required")
				}
				if *goos != "linux" || (*arch != "amd64" && *arch != "arm64") {
					return usagef("agents sign: --os linux with --arch amd64 or arm64 (the platforms agents run on)")
				}
				kb, err := os.ReadFile(*key)
				if err != nil {
					return err
				}
				k, err := release.ParsePrivateKey(kb)
				if err != nil {
					return err
				}
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				s, err := release.Sign(k, f, *ver, *goos, *arch)
				_ = f.Close()
				if err != nil {
					return err
				}
				b, _ := json.MarshalIndent(s, "", "  ")
				if err := atomicfile.WriteFile(args[0]+".sig", append(b, '\n'), 0o644); err != nil {
					return err
				}
				return v.printValue(s, func() {
					fmt.Fprintf(env.Stdout, "Signed %s as %s %s/%s (sha256 %s, key %s): %s.sig\n", args[0], s.Version, s.OS, s.Arch, s.SHA256, s.KeyID, args[0])
				})
			}
		})
}

func agentReleasesCmd(env Env) *cobra.Command {
	add := verbCmd(env, &cobra.Command{Use: "add FILE --version V [--data-dir D] --agent-release-key PUB", Short: "on the control plane's machine: add a signed agent build (FILE and FILE.sig)",
		Long: `add checks FILE against FILE.sig and the release public keys (the same
--agent-release-key files devpilot serve uses, DEVPILOT_AGENT_RELEASE_KEY)
and copies both into D/agent-releases/<version>/<os>-<arch>/. It refuses a
binary whose signature does not verify, whose sha256 or size differs from
its .sig, or whose .sig signs another version. The running control plane
serves it at once (GET /v1/agent-releases lists it).`,
		Args: one("agent binary"), Example: "  devpilot agents releases add devpilot-agent-linux-amd64 --version v1.4.0 --data-dir /var/lib/devpilot --agent-release-key /etc/devpilot/release.pub"},
		verbFlags{json: true, local: true}, func(v *verb) runFn {
			ver := v.fs.String("version", "", "the version the .sig signs")
			dataDir := v.fs.String("data-dir", "devpilot-data", "the data directory of devpilot serve")
			keys := v.fs.StringSlice("agent-release-key", nil, "release public key file(s), as given to devpilot serve")
			return func(ctx context.Context, args []string) error {
				if *ver == "" {
					return usagef("agents releases add: --version is required")
				}
				pubs, err := app.ReadReleaseKeys(*keys)
				if err != nil {
					return err
				}
				st := agentrelease.New(filepath.Join(*dataDir, agentrelease.DirName), pubs)
				r, err := st.Add(args[0], *ver)
				if err != nil {
					return err
				}
				return v.printValue(apitypes.AgentRelease{Version: r.Version, OS: r.OS, Arch: r.Arch, SHA256: r.SHA256, Signature: r.Signature,
					KeyID: r.KeyID, Size: r.Size, URL: agentrelease.DownloadPath(r.Version, r.OS, r.Arch)}, func() {
					fmt.Fprintf(env.Stdout, "Added agent release %s %s/%s (key %s) to %s.\n", r.Version, r.OS, r.Arch, r.KeyID, st.Dir())
				})
			}
		})
	list := verbCmd(env, &cobra.Command{Use: "list", Short: "list the signed agent releases the control plane serves", Args: noArgs,
		Example: "  devpilot agents releases list\n  devpilot agents releases list -o json"}, verbFlags{json: true}, func(v *verb) runFn {
		return func(ctx context.Context, _ []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var all []apitypes.AgentRelease
			raw, err := v.list(ctx, cl, "/v1/agent-releases", "agent_releases", &all)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				rows := [][]string{}
				for _, r := range all {
					rows = append(rows, []string{r.Version, r.OS + "/" + r.Arch, r.SHA256[:min(12, len(r.SHA256))], r.KeyID, strconv.FormatInt(r.Size, 10)})
				}
				v.out.table([]string{"VERSION", "PLATFORM", "SHA256", "KEY", "SIZE"}, rows)
			})
		}
	})
	return group("releases", "add signed agent builds to the control plane; list them",
		"  devpilot agents releases add devpilot-agent-linux-amd64 --version v1.4.0 --agent-release-key release.pub\n  devpilot agents releases list", add, list)
}
