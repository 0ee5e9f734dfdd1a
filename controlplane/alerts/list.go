package alerts

import (
	"context"
	"fmt"
	"time"

	"github.com/devpilot/devpilot/controlplane/store"
)

// Alert is a rule's state on a server, with the names a human reads.
type Alert struct {
	store.AlertState
	RuleName   string
	Kind       string
	ServerName string
	Message    string
}

// Alerts lists a workspace's alerts in state ("" for any), the most recent
// change first.
func (s *Service) Alerts(ctx context.Context, workspaceID, state string) ([]Alert, error) {
	q := s.o.Store.Q()
	states, err := q.AlertStates(ctx, workspaceID, state, -1)
	if err != nil {
		return nil, err
	}
	if len(states) == 0 {
		return []Alert{}, nil
	}
	rules, err := q.AlertRulesPage(ctx, workspaceID, "", nil, -1)
	if err != nil {
		return nil, err
	}
	byID := map[string]store.AlertRule{}
	for _, r := range rules {
		byID[r.ID] = r
	}
	servers, err := q.ListServers(ctx, workspaceID)
	if err != nil {
		return nil, err
	}
	names := map[string]string{}
	for _, srv := range servers {
		names[srv.ID] = srv.Name
	}
	out := make([]Alert, 0, len(states))
	for _, st := range states {
		r := byID[st.RuleID]
		al := Alert{AlertState: st, RuleName: r.Name, Kind: r.Kind, ServerName: names[st.ServerID]}
		if al.ServerName == "" {
			al.ServerName = st.ServerID // deleted since
		}
		al.Message = message(r, al)
		out = append(out, al)
	}
	return out, nil
}

// FiringCount is how many alerts fire now in a workspace.
func (s *Service) FiringCount(ctx context.Context, workspaceID string) (int, error) {
	states, err := s.o.Store.Q().AlertStates(ctx, workspaceID, StateFiring, -1)
	return len(states), err
}

func message(r store.AlertRule, al Alert) string {
	d := time.Duration(r.ForS) * time.Second
	switch r.Kind {
	case KindOffline:
		return fmt.Sprintf("%s offline since %s (rule: offline for %s)", al.ServerName, al.Since.UTC().Format(time.RFC3339), d)
	case KindCPU, KindMemory, KindDisk:
		return fmt.Sprintf("%s %s at %.0f%% (rule: ≥ %.0f%% for %s)", al.ServerName, r.Kind, al.Value, r.ThresholdPercent, d)
	}
	return al.ServerName
}
