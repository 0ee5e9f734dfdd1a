package apitypes

// AgentRelease is one signed agent build the control plane serves (GET
// /v1/agent-releases). Signature is base64 ed25519 over the statement
// binding version, os, arch and sha256 (shared/release); agents verify it
// against the release keys they pinned at install.
type AgentRelease struct {
	Version   string `json:"version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	SHA256    string `json:"sha256"`
	Signature string `json:"signature"`
	KeyID     string `json:"key_id"` // the signing key (first 8 bytes of its sha256, hex)
	Size      int64  `json:"size"`
	URL       string `json:"url"` // where agents download it, relative to the control plane
}

// AgentProtocol is the agent protocol range this control plane accepts
// (README, "Version skew"): agents speaking MinVersion.MinMinor up to
// Version.Minor work; newer minors work with what this hub knows.
type AgentProtocol struct {
	Speaks  string `json:"speaks"`  // e.g. "1.2"
	Accepts string `json:"accepts"` // oldest accepted, e.g. "1.0"
}

// AgentReleaseList is GET /v1/agent-releases: newest version first.
type AgentReleaseList struct {
	AgentReleases []AgentRelease `json:"agent_releases"`
	Next          string         `json:"next"`
	Protocol      AgentProtocol  `json:"protocol"`
	// ReleaseKeys are the key ids this control plane trusts (and pins in
	// new servers' user-data).
	ReleaseKeys []string `json:"release_keys"`
}
