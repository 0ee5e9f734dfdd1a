package web

func (c *Console) taskRoutes() {}
