package web_test

import (
	"testing"

	"github.com/devpilot/devpilot/controlplane/devenv"
)

func runTaskInBrowser(t *testing.T, b *tab, env *devenv.Env) {
	t.Log("tasks: not yet")
}
