package protocol

// Bootstrap is the install contract between the user-data that cloud-init
// runs and `devpilot-agent install --bootstrap-file FILE`: a JSON file
// (mode 0600) that the install consumes and deletes. The token in it is
// single-use and expires, so user-data read back from the metadata service
// later holds nothing that still works.
type Bootstrap struct {
	URL            string `json:"url"`             // control plane base URL, e.g. https://cp.example.com:8443
	CAPin          string `json:"ca_pin"`          // "sha256/<base64 SPKI hash>" of the control plane's CA
	CACertPEM      string `json:"ca_cert_pem"`     // the CA certificate itself (public); checked against CAPin
	ServerID       string `json:"server_id"`       // the control plane's id for this server
	BootstrapToken string `json:"bootstrap_token"` // one-time enrollment token
	// ReleaseKeys are the agent release public keys the agent pins
	// (base64 ed25519, shared/release): it installs only updates signed
	// by one of them. Absent: the agent refuses every update.
	ReleaseKeys []string `json:"release_keys,omitempty"`
}
