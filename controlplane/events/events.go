// Package events names what the control plane's durable event log records:
// the event types (strings on the wire, in the API and in webhook
// payloads), the subscription patterns that select them, and the Event
// itself. The store writes events in the same transaction as the change
// they describe (store.AppendEvent); the API, the CLI, the console and the
// webhook outbox read them back in id order.
package events

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/devpilot/devpilot/controlplane/problem"
)

// Event types.
const (
	ServerCreated      = "server.created"
	ServerOnline       = "server.online"
	ServerOffline      = "server.offline"       // agent gone, cause unknown
	ServerAgentOffline = "server.agent_offline" // lifecycle states (issue 11): the
	ServerStopped      = "server.stopped"       // reconciler's verdicts, each with
	ServerLost         = "server.lost"          // state_reason in the payload
	ServerUnknown      = "server.unknown"
	ServerFailed       = "server.failed"
	ServerDeleted      = "server.deleted"
	TaskSucceeded      = "task.succeeded"
	TaskFailed         = "task.failed"
	TaskTimedOut       = "task.timed_out"
	TaskCanceled       = "task.canceled"
	DeploymentFinished = "deployment.finished"
	DeploymentFailed   = "deployment.failed"
	IntegrationInvalid = "integration.invalid" // emitted by branch alerts
	IntegrationValid   = "integration.valid"   // emitted by branch alerts
	AlertFiring        = "alert.firing"        // emitted by branch alerts
	AlertResolved      = "alert.resolved"      // emitted by branch alerts
	AgentUpdated       = "agent.updated"       // emitted by branch rollouts
	AgentRolledBack    = "agent.rolled_back"   // emitted by branch rollouts
	RolloutFinished    = "rollout.finished"    // emitted by branch rollouts (succeeded|failed|aborted in payload)
	WebhookDisabled    = "webhook.disabled"    // emitted by branch webhooks
)

// Types lists every event type, in the order above (for validation and docs).
var Types = []string{
	ServerCreated, ServerOnline, ServerOffline, ServerAgentOffline, ServerStopped,
	ServerLost, ServerUnknown, ServerFailed, ServerDeleted,
	TaskSucceeded, TaskFailed, TaskTimedOut, TaskCanceled,
	DeploymentFinished, DeploymentFailed,
	IntegrationInvalid, IntegrationValid,
	AlertFiring, AlertResolved,
	AgentUpdated, AgentRolledBack, RolloutFinished,
	WebhookDisabled,
}

// Event is one entry of the log.
type Event struct {
	ID        int64           // increasing across the whole database, committed in order
	Workspace string          // workspace id, as the store keys it
	Type      string          // one of Types
	Subject   string          // id of the resource (server id, task id, integration id, rule id…)
	Time      time.Time       // when it was written (UTC)
	Data      json.RawMessage // small JSON object, never a secret
}

// Match reports whether an event type matches a subscription pattern:
// "*" (all), "server.*" (every type of that prefix up to its dot), or an
// exact type.
func Match(pattern, typ string) bool {
	if pattern == "*" {
		return true
	}
	if prefix, ok := strings.CutSuffix(pattern, ".*"); ok {
		return prefix != "" && !strings.Contains(prefix, "*") && strings.HasPrefix(typ, prefix+".")
	}
	return pattern == typ
}

// ValidPattern returns a validation error naming the valid choices when p
// matches no known type (a typo, a prefix without ".*", an unknown family).
func ValidPattern(p string) error {
	for _, t := range Types {
		if Match(p, t) {
			return nil
		}
	}
	return problem.Validation(`use "*", a family such as "server.*" (`+strings.Join(families(), ", ")+`) or one of: `+strings.Join(Types, ", "),
		"event pattern %q matches no event type", p)
}

// families lists the "prefix.*" patterns of the known types.
func families() []string {
	var out []string
	seen := map[string]bool{}
	for _, t := range Types {
		f, _, _ := strings.Cut(t, ".")
		if !seen[f] {
			seen[f] = true
			out = append(out, f+".*")
		}
	}
	return out
}
