package dosim

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Patterns from the spec.
var (
	dropletNameRe  = regexp.MustCompile(`^[a-zA-Z0-9]?[a-z0-9A-Z.\-]*[a-z0-9A-Z]$`)
	firewallNameRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9.\-]+$`)
	tagNameRe      = regexp.MustCompile(`^[a-zA-Z0-9_\-:]+$`)
)

func (s *Sim) routes(mux *http.ServeMux) {
	h := func(f func(*call)) http.HandlerFunc {
		return func(_ http.ResponseWriter, r *http.Request) {
			c := callOf(r)
			c.r = r // the routed request carries the path values
			f(c)
		}
	}
	mux.Handle("GET /v2/account", h(s.getAccount))

	mux.Handle("GET /v2/account/keys", h(s.listKeys))
	mux.Handle("POST /v2/account/keys", h(s.createKey))
	mux.Handle("GET /v2/account/keys/{key}", h(s.getKey))
	mux.Handle("DELETE /v2/account/keys/{key}", h(s.deleteKey))

	mux.Handle("POST /v2/tags", h(s.createTag))
	mux.Handle("GET /v2/tags", h(s.listTags))
	mux.Handle("GET /v2/tags/{name}", h(s.getTag))
	mux.Handle("DELETE /v2/tags/{name}", h(s.deleteTag))
	mux.Handle("POST /v2/tags/{name}/resources", h(s.tagResources(true)))
	mux.Handle("DELETE /v2/tags/{name}/resources", h(s.tagResources(false)))

	mux.Handle("GET /v2/firewalls", h(s.listFirewalls))
	mux.Handle("POST /v2/firewalls", h(s.createFirewall))
	mux.Handle("GET /v2/firewalls/{id}", h(s.getFirewall))
	mux.Handle("PUT /v2/firewalls/{id}", h(s.updateFirewall))
	mux.Handle("DELETE /v2/firewalls/{id}", h(s.deleteFirewall))
	mux.Handle("POST /v2/firewalls/{id}/tags", h(s.firewallTags(true)))
	mux.Handle("DELETE /v2/firewalls/{id}/tags", h(s.firewallTags(false)))
	mux.Handle("POST /v2/firewalls/{id}/droplets", h(s.firewallDroplets(true)))
	mux.Handle("DELETE /v2/firewalls/{id}/droplets", h(s.firewallDroplets(false)))

	mux.Handle("POST /v2/droplets", h(s.createDroplet))
	mux.Handle("GET /v2/droplets", h(s.listDroplets))
	mux.Handle("GET /v2/droplets/{id}", h(s.getDroplet))
	mux.Handle("DELETE /v2/droplets", h(s.deleteDropletsByTag))
	mux.Handle("DELETE /v2/droplets/{id}", h(s.deleteDroplet))
	mux.Handle("POST /v2/droplets/{id}/actions", h(s.postDropletAction))
	mux.Handle("GET /v2/droplets/{id}/actions", h(s.listDropletActions))
	mux.Handle("GET /v2/droplets/{id}/actions/{action}", h(s.getDropletAction))

	mux.Handle("GET /v2/actions/{id}", h(s.getAction))

	mux.Handle("GET /v2/regions", h(s.listRegions))
	mux.Handle("GET /v2/sizes", h(s.listSizes))
	mux.Handle("GET /v2/images", h(s.listImages))

	mux.Handle("/", h(func(c *call) {
		c.fail(http.StatusNotFound, "The resource you were accessing could not be found.")
	}))
}

// --- pagination ---

type pageLinks struct {
	Pages *pages `json:"pages,omitempty"`
}

type pages struct {
	First string `json:"first,omitempty"`
	Prev  string `json:"prev,omitempty"`
	Next  string `json:"next,omitempty"`
	Last  string `json:"last,omitempty"`
}

type meta struct {
	Total int `json:"total"`
}

// paginate cuts items to the requested page (page from 1, per_page default
// 20, at most 200) and builds links with full URLs, only those that apply.
func paginate[T any](c *call, items []T) ([]T, pageLinks, meta) {
	q := c.r.URL.Query()
	page, err := strconv.Atoi(q.Get("page"))
	if err != nil || page < 1 {
		page = 1
	}
	per, err := strconv.Atoi(q.Get("per_page"))
	if err != nil || per < 1 {
		per = 20
	}
	per = min(per, 200)
	total := len(items)
	last := max((total+per-1)/per, 1)
	lo := min((page-1)*per, total)
	hi := min(lo+per, total)
	link := func(p int) string {
		u := url.URL{Scheme: "http", Host: c.r.Host, Path: c.r.URL.Path}
		v := c.r.URL.Query()
		v.Set("page", strconv.Itoa(p))
		v.Set("per_page", strconv.Itoa(per))
		u.RawQuery = v.Encode()
		return u.String()
	}
	var l pageLinks
	if page > 1 {
		l.Pages = &pages{First: link(1), Prev: link(min(page-1, last))}
	}
	if page < last {
		if l.Pages == nil {
			l.Pages = &pages{}
		}
		l.Pages.Next = link(page + 1)
		l.Pages.Last = link(last)
	}
	return items[lo:hi], l, meta{Total: total}
}

// --- account ---

type accountJSON struct {
	DropletLimit    int    `json:"droplet_limit"`
	FloatingIPLimit int    `json:"floating_ip_limit"`
	ReservedIPLimit int    `json:"reserved_ip_limit"`
	VolumeLimit     int    `json:"volume_limit"`
	Email           string `json:"email"`
	Name            string `json:"name"`
	UUID            string `json:"uuid"`
	EmailVerified   bool   `json:"email_verified"`
	Status          string `json:"status"`
	StatusMessage   string `json:"status_message"`
	Team            struct {
		UUID string `json:"uuid"`
		Name string `json:"name"`
	} `json:"team"`
}

func (s *Sim) getAccount(c *call) {
	s.mu.Lock()
	a := accountJSON{
		DropletLimit: s.account.dropletLimit, FloatingIPLimit: 3, ReservedIPLimit: 3, VolumeLimit: 100,
		Email: "sammy@example.com", Name: "Sammy the Shark", UUID: "b6fr89dbf6d9156cace5f3c78dc9851d957381ef",
		EmailVerified: true, Status: s.account.status, StatusMessage: s.account.statusMessage,
	}
	s.mu.Unlock()
	a.Team.UUID = "5df3e3004a17e242b7c20ca6c9fc25b701a47ece"
	a.Team.Name = "My Team"
	c.json(http.StatusOK, map[string]any{"account": a})
}

// --- SSH keys ---

type sshKey struct {
	ID          int    `json:"id"`
	Fingerprint string `json:"fingerprint"`
	PublicKey   string `json:"public_key"`
	Name        string `json:"name"`
}

func (s *Sim) listKeys(c *call) {
	s.mu.Lock()
	keys := make([]sshKey, 0, len(s.keys))
	for _, k := range s.keys {
		keys = append(keys, *k)
	}
	s.mu.Unlock()
	page, links, m := paginate(c, keys)
	c.json(http.StatusOK, map[string]any{"ssh_keys": page, "links": links, "meta": m})
}

// findKey looks a key up by id or fingerprint. Caller holds s.mu.
func (s *Sim) findKey(ref string) (int, *sshKey) {
	for i, k := range s.keys {
		if strconv.Itoa(k.ID) == ref || k.Fingerprint == ref {
			return i, k
		}
	}
	return -1, nil
}

func (s *Sim) createKey(c *call) {
	var req struct {
		Name      string `json:"name"`
		PublicKey string `json:"public_key"`
	}
	if !c.decode(&req) {
		return
	}
	if strings.TrimSpace(req.Name) == "" {
		c.fail(http.StatusUnprocessableEntity, "Name is required")
		return
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(req.PublicKey))
	if err != nil {
		c.fail(http.StatusUnprocessableEntity, "Key invalid, key should be of the format `type key [comment]`")
		return
	}
	if !c.writeAllowed() {
		return
	}
	fp := ssh.FingerprintLegacyMD5(pub)
	s.mu.Lock()
	if _, k := s.findKey(fp); k != nil {
		s.mu.Unlock()
		c.fail(http.StatusUnprocessableEntity, "SSH Key is already in use on your account")
		return
	}
	k := &sshKey{ID: s.nextKey, Fingerprint: fp, PublicKey: strings.TrimSpace(req.PublicKey), Name: req.Name}
	s.nextKey++
	s.keys = append(s.keys, k)
	out := *k
	s.mu.Unlock()
	c.json(http.StatusCreated, map[string]any{"ssh_key": out})
}

func (s *Sim) getKey(c *call) {
	s.mu.Lock()
	_, k := s.findKey(c.r.PathValue("key"))
	var out sshKey
	if k != nil {
		out = *k
	}
	s.mu.Unlock()
	if k == nil {
		c.fail(http.StatusNotFound, "The resource you were accessing could not be found.")
		return
	}
	c.json(http.StatusOK, map[string]any{"ssh_key": out})
}

func (s *Sim) deleteKey(c *call) {
	if !c.writeAllowed() {
		return
	}
	s.mu.Lock()
	i, k := s.findKey(c.r.PathValue("key"))
	if k != nil {
		s.keys = slices.Delete(s.keys, i, i+1)
	}
	s.mu.Unlock()
	if k == nil {
		c.fail(http.StatusNotFound, "The resource you were accessing could not be found.")
		return
	}
	c.noContent()
}

// --- tags ---

// findTag returns the canonical name of a tag, matched case-insensitively
// when fold is set. Caller holds s.mu.
func (s *Sim) findTag(name string, fold bool) (string, bool) {
	for _, t := range s.tags {
		if t == name || (fold && strings.EqualFold(t, name)) {
			return t, true
		}
	}
	return "", false
}

// ensureTag creates a tag unless one with that name exists in any case and
// returns the canonical name. Caller holds s.mu.
func (s *Sim) ensureTag(name string) string {
	if t, ok := s.findTag(name, true); ok {
		return t
	}
	s.tags = append(s.tags, name)
	return name
}

func validTag(name string) bool { return len(name) <= 255 && tagNameRe.MatchString(name) }

type tagMetadata struct {
	Count         int    `json:"count"`
	LastTaggedURI string `json:"last_tagged_uri,omitempty"`
}

// tagJSON renders a tag with its resource counts. Caller holds s.mu.
func (s *Sim) tagJSON(c *call, name string) map[string]any {
	var drops tagMetadata
	for _, d := range s.droplets {
		if slices.Contains(d.tags, name) {
			drops.Count++
			drops.LastTaggedURI = fmt.Sprintf("http://%s/v2/droplets/%d", c.r.Host, d.id)
		}
	}
	zero := tagMetadata{}
	return map[string]any{"name": name, "resources": map[string]any{
		"count": drops.Count, "last_tagged_uri": drops.LastTaggedURI,
		"droplets": drops, "images": zero, "volumes": zero, "volume_snapshots": zero, "databases": zero,
	}}
}

func (s *Sim) createTag(c *call) {
	var req struct {
		Name string `json:"name"`
	}
	if !c.decode(&req) {
		return
	}
	if !validTag(req.Name) {
		// The tags endpoint has its own 400 shape (DO:resources/tags/responses/tags_bad_request.yml).
		msg := fmt.Sprintf("Error validating resource tag: \"tag-name %q contains invalid characters\"", req.Name)
		if req.Name == "" {
			msg = "Error validating resource tag: \"tag-name must not be empty\""
		}
		writeJSON(c.w, http.StatusBadRequest, map[string]any{
			"error":       msg,
			"messages":    nil,
			"root_causes": []string{"rpc error: code = InvalidArgument desc = " + msg},
		})
		return
	}
	if !c.writeAllowed() {
		return
	}
	s.mu.Lock()
	name := s.ensureTag(req.Name)
	body := s.tagJSON(c, name)
	s.mu.Unlock()
	c.json(http.StatusCreated, map[string]any{"tag": body})
}

func (s *Sim) getTag(c *call) {
	s.mu.Lock()
	name, ok := s.findTag(c.r.PathValue("name"), false)
	var body map[string]any
	if ok {
		body = s.tagJSON(c, name)
	}
	s.mu.Unlock()
	if !ok {
		c.fail(http.StatusNotFound, "tag not found")
		return
	}
	c.json(http.StatusOK, map[string]any{"tag": body})
}

// --- catalog ---

// regionJSON renders a region; its sizes omit those sold out there.
// Caller holds s.mu.
func (s *Sim) regionJSON(r regionSpec) map[string]any {
	sizes := []string{}
	if r.Available {
		for _, sz := range catalogSizes {
			if slices.Contains(sz.Regions, r.Slug) && !s.faults.soldOut[r.Slug][sz.Slug] {
				sizes = append(sizes, sz.Slug)
			}
		}
	}
	return map[string]any{"name": r.Name, "slug": r.Slug, "features": regionFeatures, "available": r.Available, "sizes": sizes}
}

func sizeJSON(sz sizeSpec) map[string]any {
	return map[string]any{
		"slug": sz.Slug, "memory": sz.Memory, "vcpus": sz.VCPUs, "disk": sz.Disk,
		"transfer": sz.Transfer, "price_monthly": sz.PriceMonthly, "price_hourly": sz.PriceHourly,
		"regions": sz.Regions, "available": true, "description": sz.Description,
		"disk_info": []any{map[string]any{"type": "local", "size": map[string]any{"amount": sz.Disk, "unit": "gib"}}},
	}
}

func imageJSON(im imageSpec) map[string]any {
	return map[string]any{
		"id": im.ID, "name": im.Name, "type": "base", "distribution": im.Distribution, "slug": im.Slug,
		"public": true, "regions": allLive, "created_at": im.Created, "min_disk_size": im.MinDisk,
		"size_gigabytes": im.SizeGB, "description": im.Description, "tags": []string{},
		"status": "available", "error_message": "",
	}
}

func (s *Sim) listRegions(c *call) {
	s.mu.Lock()
	out := make([]map[string]any, 0, len(catalogRegions))
	for _, r := range catalogRegions {
		out = append(out, s.regionJSON(r))
	}
	s.mu.Unlock()
	page, links, m := paginate(c, out)
	c.json(http.StatusOK, map[string]any{"regions": page, "links": links, "meta": m})
}

func (s *Sim) listSizes(c *call) {
	out := make([]map[string]any, 0, len(catalogSizes))
	for _, sz := range catalogSizes {
		out = append(out, sizeJSON(sz))
	}
	page, links, m := paginate(c, out)
	c.json(http.StatusOK, map[string]any{"sizes": page, "links": links, "meta": m})
}

func (s *Sim) listImages(c *call) {
	out := []map[string]any{}
	switch c.r.URL.Query().Get("type") {
	case "", "distribution":
		for _, im := range catalogImages {
			out = append(out, imageJSON(im))
		}
	}
	if c.r.URL.Query().Get("private") == "true" {
		out = out[:0] // the simulated account has no private images
	}
	page, links, m := paginate(c, out)
	c.json(http.StatusOK, map[string]any{"images": page, "links": links, "meta": m})
}

func findRegion(slug string) (regionSpec, bool) {
	i := slices.IndexFunc(catalogRegions, func(r regionSpec) bool { return r.Slug == slug })
	if i < 0 {
		return regionSpec{}, false
	}
	return catalogRegions[i], true
}

func findSize(slug string) (sizeSpec, bool) {
	i := slices.IndexFunc(catalogSizes, func(z sizeSpec) bool { return z.Slug == slug })
	if i < 0 {
		return sizeSpec{}, false
	}
	return catalogSizes[i], true
}

func findImage(ref any) (imageSpec, bool) {
	i := slices.IndexFunc(catalogImages, func(im imageSpec) bool {
		switch v := ref.(type) {
		case string:
			return im.Slug == v || strconv.Itoa(im.ID) == v
		case float64:
			return float64(im.ID) == v
		}
		return false
	})
	if i < 0 {
		return imageSpec{}, false
	}
	return catalogImages[i], true
}

// --- actions ---

type action struct {
	id        int
	dropletID int
	typ       string // "create" or a droplet action type
	region    string
	started   time.Time

	// Droplet actions (not create): done once the runtime finished and the
	// action's duration passed.
	done    bool
	doneAt  time.Time
	errored bool
}

// actionJSON renders an action. Caller holds s.mu.
func (s *Sim) actionJSON(a *action) map[string]any {
	status, completed := "in-progress", any(nil)
	if a.typ == "create" {
		d := s.dropletByID(a.dropletID)
		switch {
		case d == nil: // deleted: its create action finished long ago
			status, completed = "completed", a.started.UTC().Format(time.RFC3339)
		case d.failed:
			status, completed = "errored", d.bootAt.UTC().Format(time.RFC3339)
		case s.isActive(d) || d.off:
			status, completed = "completed", d.bootAt.UTC().Format(time.RFC3339)
		}
	} else if a.done && !s.now().Before(a.doneAt) {
		status, completed = "completed", a.doneAt.UTC().Format(time.RFC3339)
		if a.errored {
			status = "errored"
		}
	}
	r, _ := findRegion(a.region)
	return map[string]any{
		"id": a.id, "status": status, "type": a.typ, "started_at": a.started.UTC().Format(time.RFC3339),
		"completed_at": completed, "resource_id": a.dropletID, "resource_type": "droplet",
		"region": s.regionJSON(r), "region_slug": a.region,
	}
}

func (s *Sim) getAction(c *call) {
	id, _ := strconv.Atoi(c.r.PathValue("id"))
	s.mu.Lock()
	a, ok := s.actions[id]
	var body map[string]any
	if ok {
		body = s.actionJSON(a)
	}
	s.mu.Unlock()
	if !ok {
		c.fail(http.StatusNotFound, "The resource you were accessing could not be found.")
		return
	}
	c.json(http.StatusOK, map[string]any{"action": body})
}
