package vultr

// SetPageSize makes list calls fetch n items per page.
func (p *Provider) SetPageSize(n int) { p.pageSize = n }
