package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Workspace is a tenant: integrations, servers and tokens belong to one.
type Workspace struct {
	ID        string
	Slug      string
	Name      string
	CreatedAt time.Time
}

// Token is an API token; the secret part is kept only as its sha256.
type Token struct {
	ID          string
	WorkspaceID string
	Name        string
	Role        string
	SecretHash  []byte
	CreatedBy   string
	CreatedAt   time.Time
	LastUsedAt  *time.Time
	RevokedAt   *time.Time
}

// Integration is a cloud account connected to a workspace.
type Integration struct {
	ID               string
	WorkspaceID      string
	Provider         string
	AccessKey        string // the user's label for the key
	SecretCiphertext string
	SecretHint       string
	Status           string
	WriteAccess      string
	AccountJSON      string
	LastValidatedAt  *time.Time
	LastErrorJSON    string // "" when the last validation passed
	CreatedAt        time.Time
	UpdatedAt        time.Time
}

// AuditEntry records one change: who, what, when. Detail never holds a secret.
type AuditEntry struct {
	ID          int64
	WorkspaceID string
	Actor       string
	Action      string
	Target      string
	DetailJSON  string
	At          time.Time
}

// --- workspaces

// CreateWorkspace inserts w; a taken slug is ErrConflict.
func (q *Queries) CreateWorkspace(ctx context.Context, w Workspace) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO workspaces (id, slug, name, created_at) VALUES (?, ?, ?, ?)`,
		w.ID, w.Slug, w.Name, w.CreatedAt.UTC())
	if isUnique(err) {
		return ErrConflict
	}
	return err
}

// WorkspaceBySlug finds a workspace.
func (q *Queries) WorkspaceBySlug(ctx context.Context, slug string) (Workspace, error) {
	var w Workspace
	err := q.x.QueryRowContext(ctx, `SELECT id, slug, name, created_at FROM workspaces WHERE slug = ?`, slug).
		Scan(&w.ID, &w.Slug, &w.Name, &w.CreatedAt)
	return w, one(err)
}

// WorkspaceByID finds a workspace.
func (q *Queries) WorkspaceByID(ctx context.Context, id string) (Workspace, error) {
	var w Workspace
	err := q.x.QueryRowContext(ctx, `SELECT id, slug, name, created_at FROM workspaces WHERE id = ?`, id).
		Scan(&w.ID, &w.Slug, &w.Name, &w.CreatedAt)
	return w, one(err)
}

// ListWorkspaces lists all workspaces by slug.
func (q *Queries) ListWorkspaces(ctx context.Context) ([]Workspace, error) {
	return q.WorkspacesPage(ctx, nil, -1)
}

// WorkspacesPage lists at most limit workspaces (-1: all) by slug, after
// the cursor's Key.
func (q *Queries) WorkspacesPage(ctx context.Context, after *Cursor, limit int) ([]Workspace, error) {
	key := ""
	if after != nil {
		key = after.Key
	}
	rows, err := q.x.QueryContext(ctx, `SELECT id, slug, name, created_at FROM workspaces WHERE slug > ? ORDER BY slug LIMIT ?`, key, lim(limit))
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []Workspace
	for rows.Next() {
		var w Workspace
		if err := rows.Scan(&w.ID, &w.Slug, &w.Name, &w.CreatedAt); err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// --- tokens

const tokenCols = `id, workspace_id, name, role, secret_hash, created_by, created_at, last_used_at, revoked_at`

func scanToken(sc interface{ Scan(...any) error }) (Token, error) {
	var t Token
	var used, revoked sql.NullTime
	if err := sc.Scan(&t.ID, &t.WorkspaceID, &t.Name, &t.Role, &t.SecretHash, &t.CreatedBy, &t.CreatedAt, &used, &revoked); err != nil {
		return t, err
	}
	if used.Valid {
		t.LastUsedAt = &used.Time
	}
	if revoked.Valid {
		t.RevokedAt = &revoked.Time
	}
	return t, nil
}

// CreateToken inserts t.
func (q *Queries) CreateToken(ctx context.Context, t Token) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO api_tokens (`+tokenCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)`,
		t.ID, t.WorkspaceID, t.Name, t.Role, t.SecretHash, t.CreatedBy, t.CreatedAt.UTC())
	return err
}

// TokenByID finds a token, revoked or not.
func (q *Queries) TokenByID(ctx context.Context, id string) (Token, error) {
	t, err := scanToken(q.x.QueryRowContext(ctx, `SELECT `+tokenCols+` FROM api_tokens WHERE id = ?`, id))
	return t, one(err)
}

// ListTokens lists a workspace's tokens, newest first.
func (q *Queries) ListTokens(ctx context.Context, workspaceID string) ([]Token, error) {
	return q.TokensPage(ctx, workspaceID, false, nil, -1)
}

// TokensPage lists at most limit (-1: all) of a workspace's tokens, newest
// first, after the cursor (At, ID); noOwner leaves owner tokens out.
func (q *Queries) TokensPage(ctx context.Context, workspaceID string, noOwner bool, after *Cursor, limit int) ([]Token, error) {
	where, args := keyset([]string{"workspace_id = ?"}, []any{workspaceID}, after, "created_at", "id", true)
	if noOwner {
		where = append(where, "role <> 'owner'")
	}
	rows, err := q.x.QueryContext(ctx, `SELECT `+tokenCols+` FROM api_tokens WHERE `+and(where)+` ORDER BY created_at DESC, id DESC LIMIT ?`,
		append(args, lim(limit))...)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []Token
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// CountTokens counts tokens of any workspace (0 means a fresh install).
func (q *Queries) CountTokens(ctx context.Context) (int, error) {
	var n int
	err := q.x.QueryRowContext(ctx, `SELECT COUNT(*) FROM api_tokens`).Scan(&n)
	return n, err
}

// CountLiveTokens counts the tokens with role, of any workspace, that are
// not revoked.
func (q *Queries) CountLiveTokens(ctx context.Context, role string) (int, error) {
	var n int
	err := q.x.QueryRowContext(ctx, `SELECT COUNT(*) FROM api_tokens WHERE role = ? AND revoked_at IS NULL`, role).Scan(&n)
	return n, err
}

// RevokeToken marks a token of a workspace revoked.
func (q *Queries) RevokeToken(ctx context.Context, workspaceID, id string, at time.Time) error {
	return affected(q.x.ExecContext(ctx, `UPDATE api_tokens SET revoked_at = ? WHERE workspace_id = ? AND id = ? AND revoked_at IS NULL`,
		at.UTC(), workspaceID, id))
}

// TouchToken records a token's use.
func (q *Queries) TouchToken(ctx context.Context, id string, at time.Time) error {
	_, err := q.x.ExecContext(ctx, `UPDATE api_tokens SET last_used_at = ? WHERE id = ?`, at.UTC(), id)
	return err
}

// --- integrations

const integrationCols = `id, workspace_id, provider, access_key, secret_ciphertext, secret_hint, status, write_access,
	account_json, last_validated_at, last_error_json, created_at, updated_at`

func scanIntegration(sc interface{ Scan(...any) error }) (Integration, error) {
	var in Integration
	var validated sql.NullTime
	var lastErr sql.NullString
	err := sc.Scan(&in.ID, &in.WorkspaceID, &in.Provider, &in.AccessKey, &in.SecretCiphertext, &in.SecretHint,
		&in.Status, &in.WriteAccess, &in.AccountJSON, &validated, &lastErr, &in.CreatedAt, &in.UpdatedAt)
	if validated.Valid {
		in.LastValidatedAt = &validated.Time
	}
	in.LastErrorJSON = lastErr.String
	return in, err
}

func nullString(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

func nullTime(t *time.Time) sql.NullTime {
	if t == nil {
		return sql.NullTime{}
	}
	return sql.NullTime{Time: t.UTC(), Valid: true}
}

// CreateIntegration inserts in; the same provider and access key twice in
// a workspace is ErrConflict.
func (q *Queries) CreateIntegration(ctx context.Context, in Integration) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO integrations (`+integrationCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		in.ID, in.WorkspaceID, in.Provider, in.AccessKey, in.SecretCiphertext, in.SecretHint, in.Status, in.WriteAccess,
		in.AccountJSON, nullTime(in.LastValidatedAt), nullString(in.LastErrorJSON), in.CreatedAt.UTC(), in.UpdatedAt.UTC())
	if isUnique(err) {
		return ErrConflict
	}
	return err
}

// GetIntegration finds an integration of a workspace.
func (q *Queries) GetIntegration(ctx context.Context, workspaceID, id string) (Integration, error) {
	in, err := scanIntegration(q.x.QueryRowContext(ctx, `SELECT `+integrationCols+` FROM integrations WHERE workspace_id = ? AND id = ?`, workspaceID, id))
	return in, one(err)
}

// ListIntegrations lists a workspace's integrations (workspaceID "" lists all).
func (q *Queries) ListIntegrations(ctx context.Context, workspaceID string) ([]Integration, error) {
	return q.IntegrationsPage(ctx, workspaceID, "", nil, -1)
}

// IntegrationsPage lists at most limit (-1: all) of a workspace's
// integrations (workspaceID "": all), oldest first, after the cursor (At,
// ID); name "" or only the one whose access key is name.
func (q *Queries) IntegrationsPage(ctx context.Context, workspaceID, name string, after *Cursor, limit int) ([]Integration, error) {
	where, args := keyset([]string{"(? = '' OR workspace_id = ?)"}, []any{workspaceID, workspaceID}, after, "created_at", "id", false)
	if name != "" {
		where, args = append(where, "access_key = ?"), append(args, name)
	}
	rows, err := q.x.QueryContext(ctx, `SELECT `+integrationCols+` FROM integrations WHERE `+and(where)+` ORDER BY created_at, id LIMIT ?`,
		append(args, lim(limit))...)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []Integration
	for rows.Next() {
		in, err := scanIntegration(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, rows.Err()
}

// UpdateIntegration writes every mutable field of in (label, secret,
// validation results); a taken label is ErrConflict.
func (q *Queries) UpdateIntegration(ctx context.Context, in Integration) error {
	res, err := q.x.ExecContext(ctx, `UPDATE integrations SET access_key = ?, secret_ciphertext = ?, secret_hint = ?, status = ?,
		write_access = ?, account_json = ?, last_validated_at = ?, last_error_json = ?, updated_at = ?
		WHERE workspace_id = ? AND id = ?`,
		in.AccessKey, in.SecretCiphertext, in.SecretHint, in.Status, in.WriteAccess, in.AccountJSON,
		nullTime(in.LastValidatedAt), nullString(in.LastErrorJSON), in.UpdatedAt.UTC(), in.WorkspaceID, in.ID)
	if isUnique(err) {
		return ErrConflict
	}
	return affected(res, err)
}

// DeleteIntegration removes the row, ciphertext included.
func (q *Queries) DeleteIntegration(ctx context.Context, workspaceID, id string) error {
	return affected(q.x.ExecContext(ctx, `DELETE FROM integrations WHERE workspace_id = ? AND id = ?`, workspaceID, id))
}

// --- audit

// AddAudit appends an entry.
func (q *Queries) AddAudit(ctx context.Context, e AuditEntry) error {
	if e.DetailJSON == "" {
		e.DetailJSON = "{}"
	}
	_, err := q.x.ExecContext(ctx, `INSERT INTO audit_log (workspace_id, actor, action, target, detail_json, at) VALUES (?, ?, ?, ?, ?, ?)`,
		e.WorkspaceID, e.Actor, e.Action, e.Target, e.DetailJSON, e.At.UTC())
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

// ListAudit returns a workspace's entries newest first, before the id
// `before` (0: from the newest), at most limit.
func (q *Queries) ListAudit(ctx context.Context, workspaceID string, before int64, limit int) ([]AuditEntry, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT id, workspace_id, actor, action, target, detail_json, at FROM audit_log
		WHERE workspace_id = ? AND (? = 0 OR id < ?) ORDER BY id DESC LIMIT ?`, workspaceID, before, before, limit)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []AuditEntry
	for rows.Next() {
		var e AuditEntry
		if err := rows.Scan(&e.ID, &e.WorkspaceID, &e.Actor, &e.Action, &e.Target, &e.DetailJSON, &e.At); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}
