package dosim

// FirewallUpdates returns how many updates (PUT /v2/firewalls/{id}) the API
// accepted for a firewall: a test proves with it that a resumed job did not
// change a firewall twice.
func (s *Sim) FirewallUpdates(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fwUpdates[id]
}
