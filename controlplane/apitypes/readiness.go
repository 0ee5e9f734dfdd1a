package apitypes

// Readiness is GET /readyz's answer while the database answers.
type Readiness struct {
	Status string `json:"status"` // "ready"
	// Agents is this control plane's agent connections against its
	// ceiling (the open file limit, or --max-agents).
	Agents *AgentCapacity `json:"agents,omitempty"`
}

// AgentCapacity is how full a control plane's agent side is.
type AgentCapacity struct {
	Connections int `json:"connections"` // held now, authenticated or in their handshake
	Capacity    int `json:"capacity"`    // most it holds; 0: no bound
	// NearCeiling: at least 90% of Capacity is used; past Capacity new
	// agents are refused busy and back off (or go to another replica).
	NearCeiling bool `json:"near_ceiling"`
}
