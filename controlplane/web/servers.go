package web

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/shared/protocol"
)

// server is the API's server, with what the templates ask of it.
type server struct{ apitypes.Server }

// AgentRelease is the release part of the agent's version ("1.4.0").
func (s server) AgentRelease() string {
	v, _, _ := strings.Cut(s.Agent.Version, " ")
	return v
}

// agentUpdate is the agent's last update as the server page shows it.
type agentUpdate struct {
	apitypes.AgentLastUpdate
	Badge  string // the badge's class: succeeded, failed
	Label  string // updated, rolled back, refused, failed
	Change string // "1.0.0 → 1.1.0", "1.1.0 → 1.0.0" for a rollback, "1.1.0, stayed on 1.0.0"
}

// AgentUpdate is the agent's last update; nil before one.
func (s server) AgentUpdate() *agentUpdate {
	lu := s.Agent.LastUpdate
	if lu == nil {
		return nil
	}
	u := &agentUpdate{AgentLastUpdate: *lu, Badge: "failed", Label: strings.ReplaceAll(lu.Result, "_", " "),
		Change: lu.ToVersion + ", stayed on " + lu.FromVersion}
	switch lu.Result {
	case apitypes.UpdateResultUpdated:
		u.Badge, u.Change = "succeeded", lu.FromVersion+" → "+lu.ToVersion
	case apitypes.UpdateResultRolledBack:
		u.Change = lu.ToVersion + " → " + lu.FromVersion
	}
	return u
}

// Busy reports whether the server is still changing on its own.
func (s server) Busy() bool {
	return s.State == "provisioning" || s.State == "installing" || s.State == "deleting"
}

// Manageable reports whether lifecycle actions apply: the server exists
// in the cloud and is not being created or removed.
func (s server) Manageable() bool {
	return s.InstanceID != "" && !s.Busy() && s.State != "deleted" && s.State != "failed"
}

// PortsText is the server's ports as the ports field takes them.
func (s server) PortsText() string {
	ps := make([]string, len(s.Ports))
	for i, p := range s.Ports {
		ps[i] = strconv.Itoa(p)
	}
	return strings.Join(ps, ", ")
}

// took is how long a step ran.
func took(s apitypes.Step) string {
	if s.StartedAt == nil || s.FinishedAt == nil {
		return ""
	}
	return s.FinishedAt.Sub(*s.StartedAt).Round(10 * time.Millisecond).String()
}

// diskPct is the root file system's use.
func diskPct(h *protocol.Health) string {
	if h == nil {
		return "—"
	}
	for _, d := range h.Disks {
		if (d.Mount == "/" || len(h.Disks) == 1) && d.TotalMB > 0 {
			return fmt.Sprintf("%.0f%%", float64(d.UsedMB)*100/float64(d.TotalMB))
		}
	}
	return "—"
}

func (c *Console) serversPage(w http.ResponseWriter, r *http.Request, s *session) error {
	list, err := c.listServers(r, s)
	if err != nil {
		return err
	}
	c.render(w, r, http.StatusOK, "servers", page{Title: "Servers", S: s, Nav: "servers", Data: list, Firing: c.firingCount(r, s)})
	return nil
}

// serversLive is the servers list's table, which the script re-reads when
// a server changes.
func (c *Console) serversLive(w http.ResponseWriter, r *http.Request, s *session) error {
	list, err := c.listServers(r, s)
	if err != nil {
		return err
	}
	c.fragment(w, "servers", "live", page{S: s, WS: r.PathValue("ws"), Data: list})
	return nil
}

// catalog is an integration's catalog.
type catalog = apitypes.Catalog

// sizeOption is one entry of the size picker for the selected region.
type sizeOption struct {
	ID, Label, Regions, SoldOut string // Regions/SoldOut: space-separated, for the script
	Disabled                    bool
	Selected                    bool
}

type newServerData struct {
	Integrations []integration
	Integration  *integration
	Catalog      *catalog
	Region       string
	Sizes        []sizeOption
	Name, Size   string
	Image, Ports string
	CatalogErr   *apiError
}

func (c *Console) newServerPage(w http.ResponseWriter, r *http.Request, s *session) error {
	return c.renderNewServer(w, r, s, http.StatusOK, nil)
}

func (c *Console) renderNewServer(w http.ResponseWriter, r *http.Request, s *session, status int, e *apiError) error {
	list, err := c.listIntegrations(r, s)
	if err != nil {
		return err
	}
	d := newServerData{Integrations: list, Region: r.FormValue("region"), Name: r.FormValue("name"),
		Size: r.FormValue("size"), Image: r.FormValue("image"), Ports: r.FormValue("ports")}
	id := r.FormValue("integration_id")
	if id == "" && len(list) == 1 {
		id = list[0].ID
	}
	for i := range list {
		if list[i].ID == id {
			d.Integration = &list[i]
		}
	}
	if d.Integration != nil {
		var cat catalog
		err := c.call(r, s.token.Reveal(), http.MethodGet, wsBase(r)+"/integrations/"+url.PathEscape(id)+"/catalog", nil, &cat)
		var ae *apiError
		switch {
		case errors.As(err, &ae) && ae.Status != http.StatusUnauthorized:
			d.CatalogErr = ae
		case err != nil:
			return err
		default:
			d.Catalog = &cat
			if d.Region == "" {
				for _, rg := range cat.Regions {
					if rg.Available {
						d.Region = rg.ID
						break
					}
				}
			}
			d.Sizes = sizeOptions(&cat, d.Region, d.Size)
		}
	}
	c.render(w, r, status, "newserver", page{Title: "Create server", S: s, Nav: "servers", Err: e, Data: d})
	return nil
}

// sizeOptions marks sizes sold out or not offered in region as not
// selectable.
func sizeOptions(cat *catalog, region, selected string) []sizeOption {
	out := make([]sizeOption, 0, len(cat.Sizes))
	for _, sz := range cat.Sizes {
		o := sizeOption{ID: sz.ID, Regions: strings.Join(sz.Regions, " "), SoldOut: strings.Join(sz.SoldOut, " "),
			Label: fmt.Sprintf("%s — %d vCPU, %s RAM, %d GB disk, $%.2f/mo", sz.ID, sz.VCPUs, memText(sz.MemoryMB), sz.DiskGB, sz.PriceMonthly)}
		switch {
		case slices.Contains(sz.SoldOut, region):
			o.Disabled, o.Label = true, o.Label+" (sold out in "+region+")"
		case !slices.Contains(sz.Regions, region):
			o.Disabled, o.Label = true, o.Label+" (not offered in "+region+")"
		}
		o.Selected = !o.Disabled && sz.ID == selected
		out = append(out, o)
	}
	return out
}

func memText(mb int) string {
	if mb%1024 == 0 {
		return fmt.Sprintf("%d GB", mb/1024)
	}
	return fmt.Sprintf("%d MB", mb)
}

func (c *Console) createServer(w http.ResponseWriter, r *http.Request, s *session) error {
	req := map[string]any{"integration_id": r.PostFormValue("integration_id"), "name": strings.TrimSpace(r.PostFormValue("name")),
		"region": r.PostFormValue("region"), "size": r.PostFormValue("size"), "image": r.PostFormValue("image")}
	if p := strings.TrimSpace(r.PostFormValue("ports")); p != "" {
		ports := []int{}
		for _, f := range strings.FieldsFunc(p, func(r rune) bool { return r == ',' || r == ' ' }) {
			n, err := strconv.Atoi(f)
			if err != nil {
				return c.renderNewServer(w, r, s, http.StatusUnprocessableEntity, &apiError{Status: 422, Code: "validation",
					Message: fmt.Sprintf("port %q is not a number", f), Hint: "List ports as numbers separated by commas, e.g. 22, 80, 443."})
			}
			ports = append(ports, n)
		}
		req["ports"] = ports
	}
	var srv server
	err := c.call(r, s.token.Reveal(), http.MethodPost, wsBase(r)+"/servers", req, &srv)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status != http.StatusUnauthorized {
		return c.renderNewServer(w, r, s, ae.Status, ae)
	}
	if err != nil {
		return err
	}
	return c.done(w, r, s, uiBase(r)+"/servers/"+url.PathEscape(srv.ID), "Server “"+srv.Name+"” requested.", nil)
}

// serverData is the server detail page's (and its live fragment's) data.
type serverData struct {
	Server  server
	Actions []action // recent lifecycle actions, newest first
	Charts  []chart
	Live    string // URL the script polls
}

func (c *Console) loadServer(r *http.Request, s *session) (serverData, error) {
	var d serverData
	base := wsBase(r) + "/servers/" + url.PathEscape(r.PathValue("id"))
	if err := c.call(r, s.token.Reveal(), http.MethodGet, base, nil, &d.Server); err != nil {
		return d, err
	}
	var h struct {
		Samples []apitypes.HealthSample `json:"samples"`
	}
	if err := c.call(r, s.token.Reveal(), http.MethodGet, base+"/health?since=1h", nil, &h); err != nil {
		return d, err
	}
	d.Charts = charts(h.Samples, c.o.Now(), time.Hour)
	acts, err := c.loadActions(r, s, d.Server.ID)
	if err != nil {
		return d, err
	}
	d.Actions = acts
	d.Live = uiBase(r) + "/servers/" + url.PathEscape(d.Server.ID) + "/live"
	return d, nil
}

func (c *Console) serverPage(w http.ResponseWriter, r *http.Request, s *session) error {
	d, err := c.loadServer(r, s)
	if err != nil {
		return err
	}
	c.render(w, r, http.StatusOK, "server", page{Title: d.Server.Name, S: s, Nav: "servers", Data: d})
	return nil
}

// serverLive is the part of the detail page the script refreshes.
func (c *Console) serverLive(w http.ResponseWriter, r *http.Request, s *session) error {
	d, err := c.loadServer(r, s)
	if err != nil {
		return err
	}
	c.fragment(w, "server", "live", page{S: s, WS: r.PathValue("ws"), Data: d})
	return nil
}

func (c *Console) deleteServer(w http.ResponseWriter, r *http.Request, s *session) error {
	q := ""
	if r.PostFormValue("destroy") == "1" {
		q = "?destroy=1"
	}
	var srv server
	if err := c.call(r, s.token.Reveal(), http.MethodDelete, wsBase(r)+"/servers/"+url.PathEscape(r.PathValue("id"))+q, nil, &srv); err != nil {
		return err
	}
	msg := "Server “" + srv.Name + "” removed from Devpilot; its cloud instance was left running."
	if q != "" {
		msg = "Server “" + srv.Name + "” is being destroyed."
	}
	return c.done(w, r, s, uiBase(r)+"/servers", msg, nil)
}
