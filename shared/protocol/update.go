package protocol

// Agent updates (1.2). The hub sends update to an agent that advertised
// CapUpdate; the agent downloads URL from the control plane over its pinned
// TLS channel, checks Size and SHA256, verifies Signature against the
// release keys it pinned at install (shared/release), installs the binary
// beside the running one and restarts into it through systemd. It reports
// progress with update_status; the binary that runs afterwards (the new one,
// or the old one after a rollback) reports the outcome in Hello.LastUpdate
// until a welcome acknowledges it (Welcome.LastUpdateAck).
//
// An update id is handled once: the agent records it before it starts, so
// a second update message with the same id (a resumed control plane job)
// never installs twice.

// Update asks the agent to install an agent release.
type Update struct {
	ID        string `json:"id"`        // the control plane's action id
	Version   string `json:"version"`   // the release's version
	URL       string `json:"url"`       // path on the control plane, e.g. /v1/agent/releases/1.4.0/linux/amd64
	SHA256    string `json:"sha256"`    // hex
	Signature string `json:"signature"` // base64 ed25519 over release.Statement
	Size      int64  `json:"size"`      // bytes
}

// Update states (UpdateStatus.State).
const (
	UpdateDownloading = "downloading"
	UpdateVerified    = "verified" // size, sha256 and signature check out
	UpdateInstalling  = "installing"
	UpdateRestarting  = "restarting" // the agent says goodbye and exits next
	UpdateRefused     = "refused"    // verification failed; nothing installed
	UpdateFailed      = "failed"     // download or install failed; the old version keeps running
)

// UpdateStatus reports an update's progress.
type UpdateStatus struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Error string `json:"error,omitempty"` // at most MaxReasonBytes
}

// Update results (LastUpdate.Result).
const (
	UpdateResultUpdated    = "updated"     // the new version runs and has a session
	UpdateResultRolledBack = "rolled_back" // the old version was restored; Reason says why
	UpdateResultRefused    = "refused"     // verification failed before installing
	UpdateResultFailed     = "failed"      // the install failed before the restart
)

// LastUpdate is an update's outcome, reported in Hello.
type LastUpdate struct {
	ID     string `json:"id"`
	Result string `json:"result"`
	From   string `json:"from"`
	To     string `json:"to"`
	Reason string `json:"reason,omitempty"` // at most MaxReasonBytes
}
