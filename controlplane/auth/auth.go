// Package auth issues and checks API tokens. A token is
// "dpt_<id>_<secret>": the id finds the row, and only sha256(secret) is
// stored, compared in constant time.
package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"strings"

	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/secrets"
)

// Roles, from most to least powerful.
const (
	RoleOwner  = "owner"  // everything, in every workspace, and instance-wide actions (keys rotate, workspaces)
	RoleAdmin  = "admin"  // read and change one workspace, including its tokens
	RoleViewer = "viewer" // read one workspace
)

// ValidRole reports whether role may be given to a new token.
func ValidRole(role string) bool { return role == RoleAdmin || role == RoleViewer }

const prefix = "dpt_"

// NewToken returns a token id, the whole token (shown to the user once) and
// the hash to store.
func NewToken() (id string, token secrets.Value, hash []byte) {
	id = ids.Random(10)
	secret := ids.Random(32)
	h := sha256.Sum256([]byte(secret))
	return id, secrets.New(prefix + id + "_" + secret), h[:]
}

// Parse splits a token into its id and secret part.
func Parse(token string) (id, secret string, ok bool) {
	rest, ok := strings.CutPrefix(token, prefix)
	if !ok {
		return "", "", false
	}
	id, secret, ok = strings.Cut(rest, "_")
	return id, secret, ok && id != "" && secret != ""
}

// Matches compares secret with a stored hash in constant time.
func Matches(storedHash []byte, secret string) bool {
	h := sha256.Sum256([]byte(secret))
	return subtle.ConstantTimeCompare(storedHash, h[:]) == 1
}

// Principal is who is calling: a token and its powers.
type Principal struct {
	TokenID     string
	TokenName   string
	Role        string
	WorkspaceID string
}

// Actor is how the audit log names the principal.
func (p Principal) Actor() string { return "token:" + p.TokenID + " (" + p.TokenName + ")" }

// CanWrite reports whether the principal may change things.
func (p Principal) CanWrite() bool { return p.Role == RoleOwner || p.Role == RoleAdmin }

// CanAccess reports whether the principal may see workspace id at all.
func (p Principal) CanAccess(workspaceID string) bool {
	return p.Role == RoleOwner || p.WorkspaceID == workspaceID
}
