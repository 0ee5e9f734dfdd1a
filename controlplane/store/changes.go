package store

import (
	"context"
	"database/sql"
	"strings"
)

// Change topics: what the console's pages show, by the tables behind it.
const (
	TopicServers     = "servers"     // servers, their steps, health and lifecycle actions
	TopicTasks       = "tasks"       // tasks' state (not their output: that has its own stream)
	TopicDeployments = "deployments" // deployments and their targets
	TopicEvents      = "events"      // the event log (AppendEvent)
	TopicRollouts    = "rollouts"    // agent rollouts and their targets (issue 13)
)

// changeTopic is the topic a write statement changes, or "" for tables no
// page follows live (sessions, tokens, audit, task output…).
func changeTopic(query string) string {
	q := strings.TrimSpace(query)
	var table string
	for _, verb := range []string{"UPDATE ", "INSERT INTO ", "DELETE FROM "} {
		if len(q) > len(verb) && strings.EqualFold(q[:len(verb)], verb) {
			table, _, _ = strings.Cut(strings.TrimSpace(q[len(verb):]), " ")
			break
		}
	}
	switch strings.ToLower(strings.Trim(table, `"(`)) {
	case "servers", "server_steps", "server_health", "server_health_latest", "server_actions", "server_action_steps":
		// server_actions: issue 11's lifecycle actions (its migration
		// 00011); a later table of actions must be named here too.
		return TopicServers
	case "tasks":
		return TopicTasks
	case "deployments", "deployment_targets":
		return TopicDeployments
	case "events":
		return TopicEvents
	case "agent_rollouts", "agent_rollout_targets":
		return TopicRollouts
	case "alert_states":
		// The servers page counts firing alerts; the alerts page lists them.
		return TopicServers
	}
	return ""
}

// notifier publishes the topic of each successful write it runs.
type notifier struct {
	x       execer
	publish func(...string)
}

func (n notifier) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	res, err := n.x.ExecContext(ctx, query, args...)
	if err == nil {
		if t := changeTopic(query); t != "" {
			n.publish(t)
		}
	}
	return res, err
}

func (n notifier) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	rows, err := n.x.QueryContext(ctx, query, args...)
	if err == nil {
		if t := changeTopic(query); t != "" { // UPDATE … RETURNING
			n.publish(t)
		}
	}
	return rows, err
}

func (n notifier) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	row := n.x.QueryRowContext(ctx, query, args...)
	if t := changeTopic(query); t != "" && row.Err() == nil {
		n.publish(t)
	}
	return row
}
