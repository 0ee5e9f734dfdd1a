package runner

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// DEVPILOT_AGENT_REBOOT picks how the agent reboots; a bad value is
// refused naming the valid ones.
func TestRebootFromEnv(t *testing.T) {
	t.Setenv(EnvReboot, "none")
	if fn, err := RebootFromEnv(zap.NewNop()); fn != nil || err != nil {
		t.Errorf("none: %v, %v; want no reboot offered", fn != nil, err)
	}
	t.Setenv(EnvReboot, "exit")
	fn, err := RebootFromEnv(zap.NewNop())
	if fn == nil || err != nil || fn(context.Background()) != nil {
		t.Errorf("exit: %v, %v; want a reboot that only lets the agent exit", fn != nil, err)
	}
	t.Setenv(EnvReboot, "kexec")
	if _, err := RebootFromEnv(zap.NewNop()); err == nil || !strings.Contains(err.Error(), "systemd exit none") {
		t.Errorf("kexec: %v; want a refusal naming systemd, exit and none", err)
	}
}
