package cli

import (
	"strings"

	"github.com/spf13/cobra"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// agentsCmd is `devpilot agents`: the fleet's agent versions and their
// rollouts (issue 13).
func agentsCmd(env Env) *cobra.Command {
	return group("agents", "roll agent versions out over the fleet: rollout, status, pause, resume, abort",
		"  devpilot agents rollout --version 1.4.0 --canary 2 --max-parallel 3 --health-window 60s --wait\n"+
			"  devpilot agents rollouts list\n  devpilot agents status rol_…",
		agentRolloutVerbs(env)...)
}

// agentCol is a server's agent release for the AGENT column, marked when
// it is outside the workspace's rollout target: "1.3.0 (target 1.4.0)".
func agentCol(s *apitypes.Server) string {
	v, _, _ := strings.Cut(s.Agent.Version, " ")
	if v == "" {
		return "-"
	}
	if s.Agent.OutsideTarget {
		return v + " (target " + s.Agent.TargetVersion + ")"
	}
	return v
}
