package install

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/agent/config"
	"github.com/devpilot/devpilot/agent/identity"
	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/agent/unitctl"
	"github.com/devpilot/devpilot/packaging"
)

// EnrollOptions for Enroll.
type EnrollOptions struct {
	Paths layout.Paths
	// TokenFile holds the bootstrap token `devpilot servers rekey` issued;
	// "-" reads it from Stdin.
	TokenFile  string
	Stdin      io.Reader
	Supervisor unitctl.Controller
	Log        *zap.Logger
}

// Enroll gives an installed agent a new identity after a rekey: a new
// ed25519 key replaces identity.key, the token goes into the 0600 config,
// the token file is deleted, and the agent restarts, enrolls with the
// token and drops it from the config. The key is written before the
// token, so even a crash in between never lets the new token enroll the
// old (copied) key. It returns the new key's fingerprint.
func Enroll(ctx context.Context, o EnrollOptions) (string, error) {
	log := o.Log
	if log == nil {
		log = zap.NewNop()
	}
	if o.Supervisor == nil {
		o.Supervisor = unitctl.None{}
	}
	token, err := readToken(o.TokenFile, o.Stdin)
	if err != nil {
		return "", fmt.Errorf("enroll: %w", err)
	}
	p := o.Paths
	cfg, err := config.Load(p.ConfigFile())
	if err != nil {
		return "", fmt.Errorf("enroll: %w — install the agent first (devpilot-agent install --bootstrap-file FILE)", err)
	}
	key, err := identity.Replace(p.IdentityKey())
	if err != nil {
		return "", fmt.Errorf("enroll: %w", err)
	}
	cfg.BootstrapToken = token
	if err := config.Save(p.ConfigFile(), cfg); err != nil {
		return "", fmt.Errorf("enroll: %w", err)
	}
	if o.TokenFile != "-" {
		if err := os.Remove(o.TokenFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("enroll: delete token file: %w", err)
		}
	}
	if err := o.Supervisor.EnableStart(ctx, packaging.UnitName, true); err != nil {
		return "", fmt.Errorf("enroll: %w", err)
	}
	fp := identity.Fingerprint(key.Public().(ed25519.PublicKey))
	log.Info("new identity; the agent enrolls with the token", zap.String("server_id", cfg.ServerID),
		zap.String("identity", fp), zap.String("supervisor", o.Supervisor.Name()))
	return fp, nil
}

func readToken(path string, stdin io.Reader) (string, error) {
	var b []byte
	var err error
	switch path {
	case "":
		return "", errors.New("--token-file is required (the file `devpilot servers rekey` printed the token for, or - for stdin)")
	case "-":
		if stdin == nil {
			stdin = os.Stdin
		}
		b, err = io.ReadAll(io.LimitReader(stdin, 4096))
	default:
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return "", fmt.Errorf("read token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" || strings.ContainsAny(token, " \t\r\n") {
		return "", errors.New("token file must hold exactly one bootstrap token")
	}
	return token, nil
}
