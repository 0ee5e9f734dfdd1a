package store

import "testing"

func TestChangeTopic(t *testing.T) {
	for q, want := range map[string]string{
		"UPDATE servers SET state = ?":                  TopicServers,
		"\n\t\tINSERT INTO server_steps (a) VALUES (?)": TopicServers,
		"INSERT INTO server_health VALUES (?)":          TopicServers,
		"UPDATE server_actions SET state = ?":           TopicServers,
		"update tasks set state = ?":                    TopicTasks,
		"DELETE FROM deployment_targets WHERE id = ?":   TopicDeployments,
		"UPDATE console_sessions SET used_at = ?":       "", // every page view: must not wake pages
		"INSERT INTO task_logs VALUES (?)":              "",
		"SELECT * FROM servers":                         "",
		"UPDATE":                                        "",
	} {
		if got := changeTopic(q); got != want {
			t.Errorf("changeTopic(%q) = %q, want %q", q, got, want)
		}
	}
}
