package vultrsim

// countFirewallChange records one rule created or deleted in a firewall
// group through the API. Caller holds s.mu.
func (s *Sim) countFirewallChange(groupID string) {
	if s.fwChanges == nil {
		s.fwChanges = map[string]int{}
	}
	s.fwChanges[groupID]++
}

// FirewallChanges returns how many rules of a firewall group the API has
// created or deleted (changes through the control API are not counted):
// a test proves with it that a resumed job did not change a firewall twice.
func (s *Sim) FirewallChanges(groupID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fwChanges[groupID]
}
