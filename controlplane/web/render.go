package web

import (
	"bytes"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"go.uber.org/zap"
)

// page is what every template gets.
type page struct {
	Title    string
	S        *session
	WS       string // workspace slug in the URL
	Nav      string // active section: servers, tasks, integrations
	CSRF     string // the session's (or the sign-in form's) CSRF token
	Flash    string
	FlashErr *apiError
	Err      *apiError
	Data     any
	// Since is the change feed's position before the page read its data:
	// where the page's event stream starts.
	Since string
	// Firing is how many alerts fire now (the servers page's badge).
	Firing int
}

// EventsURL is the page's event stream for topics (space-separated), or
// "" when signed out.
func (p page) EventsURL(topics string) string {
	if p.S == nil || p.WS == "" {
		return ""
	}
	return "/ui/w/" + url.PathEscape(p.WS) + "/events?topics=" + url.QueryEscape(strings.ReplaceAll(topics, " ", ",")) +
		"&since=" + url.QueryEscape(p.Since)
}

// User is what the layout shows of the signed-in token.
func (p page) User() *session { return p.S }

var funcs = template.FuncMap{
	"when": func(v any) string {
		switch t := v.(type) {
		case time.Time:
			if t.IsZero() {
				return "—"
			}
			return t.UTC().Format("2006-01-02 15:04:05 UTC")
		case *time.Time:
			if t == nil || t.IsZero() {
				return "—"
			}
			return t.UTC().Format("2006-01-02 15:04:05 UTC")
		}
		return "—"
	},
	"iso": func(v any) string {
		switch t := v.(type) {
		case time.Time:
			return t.UTC().Format(time.RFC3339)
		case *time.Time:
			if t != nil {
				return t.UTC().Format(time.RFC3339)
			}
		}
		return ""
	},
	"providerName": providerName,
	"took":         took,
	"diskPct":      diskPct,
	// day is a date (UTC); the full time is in the element's title.
	"day": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02")
	},
	"pct": func(used, total int64) string {
		if total <= 0 {
			return "—"
		}
		return fmt.Sprintf("%.0f%%", float64(used)*100/float64(total))
	},
	"fixed1": func(f float64) string { return fmt.Sprintf("%.1f", f) },
	"join":   func(xs []string, sep string) string { return strings.Join(xs, sep) },
}

func providerName(p string) string {
	switch p {
	case "digitalocean":
		return "DigitalOcean"
	case "vultr":
		return "Vultr"
	}
	return p
}

// parsePages parses every page template together with the layout; a page
// template may also define fragments (such as "live") served on their own.
func parsePages() map[string]*template.Template {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		panic(err)
	}
	out := map[string]*template.Template{}
	for _, n := range names {
		base := strings.TrimSuffix(path.Base(n), ".html")
		if base == "layout" {
			continue
		}
		out[base] = template.Must(template.New(base).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n))
	}
	return out
}

// render writes a whole page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	if p.S != nil {
		p.CSRF = p.S.csrf
		if p.Flash == "" && p.FlashErr == nil {
			p.Flash, p.FlashErr = c.sessions.takeFlash(p.S)
		}
	}
	if p.WS == "" && r != nil {
		p.WS = r.PathValue("ws")
	}
	if p.WS == "" && p.S != nil {
		p.WS = p.S.workspace
	}
	if p.Since == "" {
		p.Since = sinceOf(r)
	}
	c.execute(w, status, name, "layout", p)
}

// fragment writes one named template of a page, without the layout.
func (c *Console) fragment(w http.ResponseWriter, name, tmpl string, p page) {
	if p.S != nil {
		p.CSRF = p.S.csrf
	}
	c.execute(w, http.StatusOK, name, tmpl, p)
}

func (c *Console) execute(w http.ResponseWriter, status int, name, tmpl string, p page) {
	t, ok := c.pages[name]
	if !ok {
		panic("web: no template " + name)
	}
	var b bytes.Buffer
	if err := t.ExecuteTemplate(&b, tmpl, p); err != nil {
		c.log.Error("render", zap.String("page", name), zap.Error(err))
		http.Error(w, "the console failed to render this page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}
