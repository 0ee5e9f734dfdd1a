package store

import (
	"context"
	"database/sql"
	"slices"
	"strings"
	"time"

	"github.com/devpilot/devpilot/controlplane/events"
)

// Server is a provisioned (or provisioning) server.
type Server struct {
	ID             string
	WorkspaceID    string
	IntegrationID  string // "" once the integration was removed
	Provider       string
	Name           string
	Region         string
	Size           string
	Image          string
	ImageID        string
	PortsJSON      string
	State          string
	Destroy        bool
	InstanceID     string
	PublicIPv4     string
	FirewallID     string
	SSHKeyID       string
	AgentPublicKey []byte
	AgentVersion   string
	FactsJSON      string
	// HealthJSON and HealthAt are the latest health flushed (table
	// server_health_latest, written by SaveHealthBatch; CreateServer
	// ignores them). LastSeenAt is the later of the session's last start
	// or end and HealthAt.
	HealthJSON    string
	HealthAt      *time.Time
	LastSeenAt    *time.Time
	InstalledAt   *time.Time
	ErrorJSON     string
	AgentTimeoutS int
	CreatedAt     time.Time
	UpdatedAt     time.Time
	// QuarantinedAt is set while two agents use the server's identity
	// key; QuarantineReason says what was seen. RevokedAgentKey is the key
	// the last rekey retired.
	QuarantinedAt    *time.Time
	QuarantineReason string
	RevokedAgentKey  []byte
	// AgentLastUpdate is the agent's last update outcome
	// (protocol.LastUpdate as JSON, "" when none) and AgentLastUpdateAt
	// when it was first recorded (SetAgentLastUpdate).
	AgentLastUpdate   string
	AgentLastUpdateAt *time.Time
	// SessionHolder is the control plane holding the agent's session (""
	// none; active mode), SessionStartedAt when it started and
	// AgentCapabilities its hello's (space-separated). Read-only here:
	// written by the session's start and end (StartAgentSession…).
	SessionHolder     string
	SessionStartedAt  *time.Time
	AgentCapabilities string
}

// Step is one recorded provisioning step.
type Step struct {
	ServerID   string
	Seq        int
	Name       string
	State      string
	Attempts   int
	StartedAt  *time.Time
	FinishedAt *time.Time
	ErrorJSON  string
	Detail     string
}

// SSHKey is a workspace's SSH key pair.
type SSHKey struct {
	WorkspaceID       string
	PublicKey         string // authorized_keys line
	Fingerprint       string // SHA256:…
	PrivateCiphertext string
	CreatedAt         time.Time
}

// serverCols are the servers table's columns as createServer writes them;
// selectServers reads them and the latest health (its own table: the
// hub's flushes rewrite it every 30 s, migration 00026). Filters after it
// name servers' columns unqualified.
const serverCols = `id, workspace_id, integration_id, provider, name, region, size, image, image_id, ports_json, state, destroy,
	instance_id, public_ipv4, firewall_id, ssh_key_id, agent_public_key, agent_version, facts_json,
	last_seen_at, installed_at, error_json, agent_timeout_s, created_at, updated_at, quarantined_at, quarantine_reason,
	revoked_agent_key, agent_last_update, agent_last_update_at`

const selectServers = `SELECT ` + serverCols + `, h.health_json, h.at, session_holder, session_started_at, agent_capabilities
	FROM servers LEFT JOIN server_health_latest h ON h.server_id = servers.id `

func scanServer(sc interface{ Scan(...any) error }) (Server, error) {
	var s Server
	var integ, health sql.NullString
	var healthAt, seen, installed, quarantined, lastUpdate, sessionAt sql.NullTime
	err := sc.Scan(&s.ID, &s.WorkspaceID, &integ, &s.Provider, &s.Name, &s.Region, &s.Size, &s.Image, &s.ImageID,
		&s.PortsJSON, &s.State, &s.Destroy, &s.InstanceID, &s.PublicIPv4, &s.FirewallID, &s.SSHKeyID, &s.AgentPublicKey,
		&s.AgentVersion, &s.FactsJSON, &seen, &installed, &s.ErrorJSON, &s.AgentTimeoutS,
		&s.CreatedAt, &s.UpdatedAt, &quarantined, &s.QuarantineReason, &s.RevokedAgentKey,
		&s.AgentLastUpdate, &lastUpdate, &health, &healthAt, &s.SessionHolder, &sessionAt, &s.AgentCapabilities)
	s.IntegrationID, s.HealthJSON = integ.String, health.String
	s.HealthAt, s.LastSeenAt, s.InstalledAt = timePtr(healthAt), laterOf(seen, healthAt), timePtr(installed)
	s.QuarantinedAt, s.AgentLastUpdateAt, s.SessionStartedAt = timePtr(quarantined), timePtr(lastUpdate), timePtr(sessionAt)
	return s, err
}

// laterOf is the later of two optional times: a server was last seen at
// its session's start or end (servers.last_seen_at) or at its latest
// health sample, whichever came last.
func laterOf(a, b sql.NullTime) *time.Time {
	if b.Valid && (!a.Valid || b.Time.After(a.Time)) {
		return &b.Time
	}
	return timePtr(a)
}

func timePtr(t sql.NullTime) *time.Time {
	if !t.Valid {
		return nil
	}
	return &t.Time
}

// CreateServer inserts a server and its pending steps, with its
// server.created event; a live server with the same name in the workspace
// is ErrConflict.
func (q *Queries) CreateServer(ctx context.Context, s Server, steps []string) error {
	return q.atomically(ctx, func(q *Queries) error { return q.createServer(ctx, s, steps) })
}

func (q *Queries) createServer(ctx context.Context, s Server, steps []string) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO servers (`+serverCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		s.ID, s.WorkspaceID, nullString(s.IntegrationID), s.Provider, s.Name, s.Region, s.Size, s.Image, s.ImageID,
		s.PortsJSON, s.State, s.Destroy, s.InstanceID, s.PublicIPv4, s.FirewallID, s.SSHKeyID, s.AgentPublicKey,
		s.AgentVersion, s.FactsJSON, nullTime(s.LastSeenAt), nullTime(s.InstalledAt),
		s.ErrorJSON, s.AgentTimeoutS, s.CreatedAt.UTC(), s.UpdatedAt.UTC(), nullTime(s.QuarantinedAt), s.QuarantineReason,
		s.RevokedAgentKey, s.AgentLastUpdate, nullTime(s.AgentLastUpdateAt))
	if isUnique(err) {
		return ErrConflict
	}
	if err != nil {
		return err
	}
	for i, name := range steps {
		if _, err := q.x.ExecContext(ctx, `INSERT INTO server_steps (server_id, seq, name, state) VALUES (?, ?, ?, 'pending')`,
			s.ID, i+1, name); err != nil {
			return err
		}
	}
	_, err = q.AppendEvent(ctx, s.WorkspaceID, events.ServerCreated, s.ID, ServerEvent{Name: s.Name, State: s.State,
		Provider: s.Provider, Region: s.Region, Size: s.Size})
	return err
}

// GetServer finds a server by id (workspaceID "" matches any workspace).
func (q *Queries) GetServer(ctx context.Context, workspaceID, id string) (Server, error) {
	s, err := scanServer(q.x.QueryRowContext(ctx, selectServers+`WHERE id = ? AND (? = '' OR workspace_id = ?)`,
		id, workspaceID, workspaceID))
	return s, one(err)
}

// ListServers lists a workspace's servers that are not deleted, oldest first.
func (q *Queries) ListServers(ctx context.Context, workspaceID string) ([]Server, error) {
	return q.ServersPage(ctx, workspaceID, ServerFilter{Limit: -1})
}

// ServerFilter selects a page of servers. Zero fields do not filter.
type ServerFilter struct {
	State         string // stored state; "" lists all but deleted ones
	IntegrationID string
	Name          string
	ID            string
	After         *Cursor // (At, ID) of the last server of the previous page
	Limit         int     // -1: all
}

// ServersPage lists a workspace's servers matching f, oldest first.
func (q *Queries) ServersPage(ctx context.Context, workspaceID string, f ServerFilter) ([]Server, error) {
	where, args := keyset([]string{"workspace_id = ?"}, []any{workspaceID}, f.After, "created_at", "id", false)
	switch f.State {
	case "quarantined": // shown over the stored state
		where = append(where, "quarantined_at IS NOT NULL", "state <> 'deleted'")
	case "":
		where = append(where, "state <> 'deleted'")
	default:
		where, args = append(where, "state = ?", "quarantined_at IS NULL"), append(args, f.State)
	}
	for col, v := range map[string]string{"integration_id": f.IntegrationID, "name": f.Name, "id": f.ID} {
		if v != "" {
			where, args = append(where, col+" = ?"), append(args, v)
		}
	}
	return q.servers(ctx, `WHERE `+and(where)+` ORDER BY created_at, id LIMIT ?`, append(args, lim(f.Limit))...)
}

// ServersInStates lists servers of any workspace in the given states.
func (q *Queries) ServersInStates(ctx context.Context, states ...string) ([]Server, error) {
	return q.serversInStates(ctx, "", states)
}

// CloudServersInStates lists the servers in the given states that have a
// cloud instance (an integration and an instance id): the ones the
// reconciler can compare with their cloud. Enrolled servers are not read.
func (q *Queries) CloudServersInStates(ctx context.Context, states ...string) ([]Server, error) {
	return q.serversInStates(ctx, ` AND integration_id IS NOT NULL AND integration_id <> '' AND instance_id <> ''`, states)
}

// serversInStates lists the servers in states (one query each, so each
// uses the state index) that also match the condition and.
func (q *Queries) serversInStates(ctx context.Context, and string, states []string) ([]Server, error) {
	var out []Server
	for _, st := range states {
		ss, err := q.servers(ctx, `WHERE state = ?`+and+` ORDER BY created_at, id`, st)
		if err != nil {
			return nil, err
		}
		out = append(out, ss...)
	}
	return out, nil
}

func (q *Queries) servers(ctx context.Context, where string, args ...any) ([]Server, error) {
	rows, err := q.x.QueryContext(ctx, selectServers+where, args...)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []Server
	for rows.Next() {
		s, err := scanServer(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// DetachIntegration forgets which integration made the servers of id.
func (q *Queries) DetachIntegration(ctx context.Context, integrationID string) error {
	_, err := q.x.ExecContext(ctx, `UPDATE servers SET integration_id = NULL WHERE integration_id = ?`, integrationID)
	return err
}

// SetServerState moves a server from one of `from` states to `to`,
// reporting whether it did (and appending the move's event).
func (q *Queries) SetServerState(ctx context.Context, id, to string, at time.Time, from ...string) (bool, error) {
	n := int64(0)
	err := q.moveServer(ctx, id, func(q *Queries) error {
		n = 0 // afresh if the transaction runs again (InTxRows)
		for _, f := range from {
			res, err := q.x.ExecContext(ctx, `UPDATE servers SET state = ?, updated_at = ? WHERE id = ? AND state = ?`, to, at.UTC(), id, f)
			if err != nil {
				return err
			}
			k, _ := res.RowsAffected()
			n += k
		}
		return nil
	})
	return n > 0 && err == nil, err
}

// MarkAllOffline turns every online server offline (at start-up, before
// any agent reconnected), with a server.offline event for each: one
// UPDATE … RETURNING and the events in batches (AppendEvents).
func (q *Queries) MarkAllOffline(ctx context.Context, at time.Time) error {
	return q.atomically(ctx, func(q *Queries) error {
		rows, err := q.x.QueryContext(ctx, `UPDATE servers SET state = 'offline', updated_at = ?, session_holder = '' WHERE state = 'online'
			RETURNING id, workspace_id, name, state_reason`, at.UTC())
		if err != nil {
			return err
		}
		var evs []NewEvent
		for rows.Next() {
			var id, ws, name, reason string
			if err := rows.Scan(&id, &ws, &name, &reason); err != nil {
				_ = rows.Close()
				return err
			}
			evs = append(evs, NewEvent{Workspace: ws, Type: events.ServerOffline, Subject: id,
				Data: ServerEvent{Name: name, State: "offline", PreviousState: "online", StateReason: reason}})
		}
		_ = rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		// RETURNING's order is the database's; the log's is the servers'.
		slices.SortFunc(evs, func(a, b NewEvent) int { return strings.Compare(a.Subject, b.Subject) })
		return q.AppendEvents(ctx, evs)
	})
}

// --- steps

// Steps returns a server's steps in order.
func (q *Queries) Steps(ctx context.Context, serverID string) ([]Step, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT server_id, seq, name, state, attempts, started_at, finished_at, error_json, detail
		FROM server_steps WHERE server_id = ? ORDER BY seq`, serverID)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []Step
	for rows.Next() {
		var s Step
		var started, finished sql.NullTime
		if err := rows.Scan(&s.ServerID, &s.Seq, &s.Name, &s.State, &s.Attempts, &started, &finished, &s.ErrorJSON, &s.Detail); err != nil {
			return nil, err
		}
		s.StartedAt, s.FinishedAt = timePtr(started), timePtr(finished)
		out = append(out, s)
	}
	return out, rows.Err()
}

// StartStep records that a step is running (again).
func (q *Queries) StartStep(ctx context.Context, serverID string, seq int, at time.Time) error {
	return affected(q.x.ExecContext(ctx, `UPDATE server_steps SET state = 'running', attempts = attempts + 1,
		started_at = COALESCE(started_at, ?), error_json = '' WHERE server_id = ? AND seq = ?`, at.UTC(), serverID, seq))
}

// FinishStep records a step's end: state done or failed.
func (q *Queries) FinishStep(ctx context.Context, serverID string, seq int, state, errorJSON, detail string, at time.Time) error {
	return affected(q.x.ExecContext(ctx, `UPDATE server_steps SET state = ?, finished_at = ?, error_json = ?,
		detail = CASE WHEN ? = '' THEN detail ELSE ? END WHERE server_id = ? AND seq = ?`,
		state, at.UTC(), errorJSON, detail, detail, serverID, seq))
}

// NoteStep records progress detail of a running step.
func (q *Queries) NoteStep(ctx context.Context, serverID string, seq int, errorJSON, detail string) error {
	_, err := q.x.ExecContext(ctx, `UPDATE server_steps SET error_json = ?, detail = ? WHERE server_id = ? AND seq = ?`,
		errorJSON, detail, serverID, seq)
	return err
}

// --- SSH keys

// GetSSHKey returns a workspace's SSH key.
func (q *Queries) GetSSHKey(ctx context.Context, workspaceID string) (SSHKey, error) {
	var k SSHKey
	err := q.x.QueryRowContext(ctx, `SELECT workspace_id, public_key, fingerprint, private_ciphertext, created_at
		FROM workspace_ssh_keys WHERE workspace_id = ?`, workspaceID).
		Scan(&k.WorkspaceID, &k.PublicKey, &k.Fingerprint, &k.PrivateCiphertext, &k.CreatedAt)
	return k, one(err)
}

// CreateSSHKey inserts a key; a workspace that has one already is ErrConflict.
func (q *Queries) CreateSSHKey(ctx context.Context, k SSHKey) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO workspace_ssh_keys (workspace_id, public_key, fingerprint, private_ciphertext, created_at)
		VALUES (?, ?, ?, ?, ?)`, k.WorkspaceID, k.PublicKey, k.Fingerprint, k.PrivateCiphertext, k.CreatedAt.UTC())
	if isUnique(err) {
		return ErrConflict
	}
	return err
}

// ListSSHKeys lists every workspace key (for master key rotation).
func (q *Queries) ListSSHKeys(ctx context.Context) ([]SSHKey, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT workspace_id, public_key, fingerprint, private_ciphertext, created_at FROM workspace_ssh_keys`)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []SSHKey
	for rows.Next() {
		var k SSHKey
		if err := rows.Scan(&k.WorkspaceID, &k.PublicKey, &k.Fingerprint, &k.PrivateCiphertext, &k.CreatedAt); err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// --- bootstrap tokens

// CreateBootstrapToken stores a token's hash.
func (q *Queries) CreateBootstrapToken(ctx context.Context, hash []byte, serverID string, expires time.Time) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO bootstrap_tokens (hash, server_id, expires_at) VALUES (?, ?, ?)`, hash, serverID, expires.UTC())
	return err
}

// UseBootstrapToken consumes a token: it must exist, belong to serverID,
// be unused and unexpired. It reports whether it did.
func (q *Queries) UseBootstrapToken(ctx context.Context, hash []byte, serverID string, now time.Time) (bool, error) {
	res, err := q.x.ExecContext(ctx, `UPDATE bootstrap_tokens SET used_at = ? WHERE hash = ? AND server_id = ? AND used_at IS NULL AND expires_at > ?`,
		now.UTC(), hash, serverID, now.UTC())
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// SaveProvisioning records what provisioning learnt about the cloud side.
// (Targeted: the hub writes the agent columns concurrently.)
func (q *Queries) SaveProvisioning(ctx context.Context, s Server, at time.Time) error {
	return affected(q.x.ExecContext(ctx, `UPDATE servers SET image_id = ?, instance_id = ?, public_ipv4 = ?, firewall_id = ?,
		ssh_key_id = ?, updated_at = ? WHERE id = ?`, s.ImageID, s.InstanceID, s.PublicIPv4, s.FirewallID, s.SSHKeyID, at.UTC(), s.ID))
}

// SaveAgentKey records an enrolled agent's public key. It ends a
// quarantine: only a rekey issues a token to a quarantined server, and
// the rekey retired the key two agents shared.
func (q *Queries) SaveAgentKey(ctx context.Context, id string, pub []byte, at time.Time) error {
	return affected(q.x.ExecContext(ctx, `UPDATE servers SET agent_public_key = ?, quarantined_at = NULL, quarantine_reason = '',
		updated_at = ? WHERE id = ?`, pub, at.UTC(), id))
}

// Quarantine marks a server quarantined with reason; it reports whether
// it was not already.
func (q *Queries) Quarantine(ctx context.Context, id, reason string, at time.Time) (bool, error) {
	res, err := q.x.ExecContext(ctx, `UPDATE servers SET quarantined_at = ?, quarantine_reason = ?, updated_at = ?
		WHERE id = ? AND quarantined_at IS NULL`, at.UTC(), reason, at.UTC(), id)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// RevokeAgentKey retires a server's agent key (kept as revoked_agent_key,
// so its holder can be told why it is refused) and invalidates its unused
// bootstrap tokens; a new one is then issued.
func (q *Queries) RevokeAgentKey(ctx context.Context, id string, at time.Time) error {
	if err := affected(q.x.ExecContext(ctx, `UPDATE servers SET revoked_agent_key = COALESCE(agent_public_key, revoked_agent_key),
		agent_public_key = NULL, updated_at = ? WHERE id = ?`, at.UTC(), id)); err != nil {
		return err
	}
	_, err := q.x.ExecContext(ctx, `UPDATE bootstrap_tokens SET used_at = ? WHERE server_id = ? AND used_at IS NULL`, at.UTC(), id)
	return err
}

// FailServer marks a provisioning or installing server failed.
func (q *Queries) FailServer(ctx context.Context, id, errorJSON string, at time.Time) (bool, error) {
	var n int64
	err := q.moveServer(ctx, id, func(q *Queries) error {
		res, err := q.x.ExecContext(ctx, `UPDATE servers SET state = 'failed', error_json = ?, updated_at = ?
		WHERE id = ? AND state IN ('provisioning', 'installing', 'deleting')`, errorJSON, at.UTC(), id)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n == 1 && err == nil, err
}

// MarkDeleted moves a live server to deleting (destroy) or deleted.
func (q *Queries) MarkDeleted(ctx context.Context, id string, destroy bool, at time.Time) error {
	to := "deleted"
	if destroy {
		to = "deleting"
	}
	return q.moveServer(ctx, id, func(q *Queries) error {
		return affected(q.x.ExecContext(ctx, `UPDATE servers SET state = ?, destroy = ?, updated_at = ? WHERE id = ? AND state NOT IN ('deleted', 'deleting')`,
			to, destroy, at.UTC(), id))
	})
}

// HealthPoint is one stored health sample.
type HealthPoint struct {
	At          time.Time
	CPUPercent  float64
	Load1       float64
	MemUsedMB   int64
	MemTotalMB  int64
	DiskUsedMB  int64
	DiskTotalMB int64
}

// AddHealthPoint stores a sample (a repeat of the same instant is ignored).
func (q *Queries) AddHealthPoint(ctx context.Context, serverID string, p HealthPoint) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO server_health (server_id, at, cpu_percent, load1, mem_used_mb,
		mem_total_mb, disk_used_mb, disk_total_mb) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`, serverID, p.At.UTC(), p.CPUPercent,
		p.Load1, p.MemUsedMB, p.MemTotalMB, p.DiskUsedMB, p.DiskTotalMB)
	return err
}

// HealthSince returns a server's samples since t, oldest first.
func (q *Queries) HealthSince(ctx context.Context, serverID string, t time.Time) ([]HealthPoint, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT at, cpu_percent, load1, mem_used_mb, mem_total_mb, disk_used_mb, disk_total_mb
		FROM server_health WHERE server_id = ? AND at >= ? ORDER BY at`, serverID, t.UTC())
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	out := []HealthPoint{}
	for rows.Next() {
		var p HealthPoint
		if err := rows.Scan(&p.At, &p.CPUPercent, &p.Load1, &p.MemUsedMB, &p.MemTotalMB, &p.DiskUsedMB, &p.DiskTotalMB); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// PruneHealth deletes samples older than t.
func (q *Queries) PruneHealth(ctx context.Context, t time.Time) error {
	_, err := q.x.ExecContext(ctx, `DELETE FROM server_health WHERE at < ?`, t.UTC())
	return err
}

// SetDiagnostics stores what was collected from a server whose install failed.
func (q *Queries) SetDiagnostics(ctx context.Context, id, text string) error {
	_, err := q.x.ExecContext(ctx, `UPDATE servers SET diagnostics = ? WHERE id = ?`, text, id)
	return err
}

// Diagnostics returns a server's stored diagnostics.
func (q *Queries) Diagnostics(ctx context.Context, id string) (string, error) {
	var s string
	err := q.x.QueryRowContext(ctx, `SELECT diagnostics FROM servers WHERE id = ?`, id).Scan(&s)
	return s, one(err)
}
