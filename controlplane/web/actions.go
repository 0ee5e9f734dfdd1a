package web

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// Lifecycle actions (issue 11's contract): the server page's buttons post
// here, and the console sends POST /v1/workspaces/{ws}/servers/{id}/actions
// through the API like every other change. Power off and resize first show
// a confirmation page (a plain form: no script needed).

// action is the API's view of one lifecycle action.
type action struct{ apitypes.Action }

// actionTypes are the types the console offers, with their words.
var actionTypes = map[string]string{
	"reboot": "Reboot", "power_off": "Power off", "power_on": "Power on",
	"resize": "Resize", "ports": "Change ports", "rename": "Rename",
}

// destructive actions stop what the server runs: the console asks first.
func destructive(typ string) bool { return typ == "power_off" || typ == "resize" }

// Label is the action type in words.
func (a action) Label() string {
	if l, ok := actionTypes[a.Type]; ok {
		return l
	}
	return a.Type
}

// actionRequest reads the action form into the API's request body.
func actionRequest(r *http.Request) (map[string]any, *apiError) {
	typ := r.PostFormValue("type")
	bad := func(msg, hint string) (map[string]any, *apiError) {
		return nil, &apiError{Status: 422, Code: "validation_failed", Message: msg, Hint: hint}
	}
	body := map[string]any{"type": typ}
	switch typ {
	case "reboot":
		body["hard"] = r.PostFormValue("hard") == "1"
	case "power_off":
		body["force"] = r.PostFormValue("force") == "1"
	case "power_on":
	case "resize":
		size := strings.TrimSpace(r.PostFormValue("size"))
		if size == "" {
			return bad("choose a size", "Pick one of the sizes offered in the server's region.")
		}
		body["size"] = size
	case "ports":
		ports := []int{}
		for _, f := range strings.FieldsFunc(r.PostFormValue("ports"), func(r rune) bool { return r == ',' || r == ' ' }) {
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 || n > 65535 {
				return bad(fmt.Sprintf("port %q is not a number from 1 to 65535", f), "List ports as numbers separated by commas, e.g. 22, 80, 443.")
			}
			ports = append(ports, n)
		}
		body["ports"] = ports
	case "rename":
		name := strings.TrimSpace(r.PostFormValue("name"))
		if name == "" {
			return bad("the new name is empty", "Lowercase letters, digits and dashes, e.g. web-2.")
		}
		body["name"] = name
	default:
		types := make([]string, 0, len(actionTypes))
		for t := range actionTypes {
			types = append(types, t)
		}
		slices.Sort(types)
		return bad(fmt.Sprintf("unknown action %q", typ), "One of: "+strings.Join(types, ", ")+".")
	}
	return body, nil
}

type confirmData struct {
	Server  server
	Type    string
	Label   string
	Form    url.Values // the fields to post again, with confirm=1
	Sizes   []sizeOption
	Size    string
	Warning string
	// Err is why the sizes could not be listed.
	SizesErr *apiError
}

// serverAction runs (or, for a destructive one not yet confirmed, asks to
// confirm) a lifecycle action.
func (c *Console) serverAction(w http.ResponseWriter, r *http.Request, s *session) error {
	id := r.PathValue("id")
	back := uiBase(r) + "/servers/" + url.PathEscape(id)
	typ := r.PostFormValue("type")
	if destructive(typ) && r.PostFormValue("confirm") != "1" {
		return c.confirmAction(w, r, s, typ)
	}
	body, bad := actionRequest(r)
	if bad != nil {
		return c.done(w, r, s, back, "", bad)
	}
	var a action
	err := c.call(r, s.token.Reveal(), http.MethodPost, wsBase(r)+"/servers/"+url.PathEscape(id)+"/actions", body, &a)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status != http.StatusUnauthorized {
		return c.done(w, r, s, back, "", ae)
	}
	if err != nil {
		return err
	}
	return c.done(w, r, s, back, a.Label()+" requested; its progress shows below.", nil)
}

// resizePage is the resize form: the sizes offered in the server's
// region, and what resizing does. It is the confirmation step too.
func (c *Console) resizePage(w http.ResponseWriter, r *http.Request, s *session) error {
	return c.confirmAction(w, r, s, "resize")
}

func (c *Console) confirmAction(w http.ResponseWriter, r *http.Request, s *session, typ string) error {
	var d confirmData
	if err := c.call(r, s.token.Reveal(), http.MethodGet, wsBase(r)+"/servers/"+url.PathEscape(r.PathValue("id")), nil, &d.Server); err != nil {
		return err
	}
	d.Type, d.Label = typ, actionTypes[typ]
	d.Form = url.Values{}
	switch typ {
	case "power_off":
		d.Form.Set("force", r.FormValue("force"))
		d.Warning = "Everything running on the server stops until it is powered on again; the cloud may still bill for it while it is off."
		if r.FormValue("force") == "1" {
			d.Warning = "Forced: the power is cut without a clean shutdown, which can lose data not yet written. " + d.Warning
		}
	case "resize":
		d.Size = r.FormValue("size")
		d.Warning = "The server is powered off, resized and powered on again: what it runs stops for a few minutes."
		if d.Server.IntegrationID == "" {
			d.SizesErr = &apiError{Status: 409, Code: "no_integration", Message: "this server's integration was removed, so its sizes cannot be listed",
				Hint: "Connect the cloud account again in Settings › Integrations."}
			break
		}
		var cat catalog
		err := c.call(r, s.token.Reveal(), http.MethodGet, wsBase(r)+"/integrations/"+url.PathEscape(d.Server.IntegrationID)+"/catalog", nil, &cat)
		var ae *apiError
		switch {
		case errors.As(err, &ae) && ae.Status != http.StatusUnauthorized:
			d.SizesErr = ae
		case err != nil:
			return err
		default:
			if d.Size == "" {
				d.Size = d.Server.Size
			}
			d.Sizes = sizeOptions(&cat, d.Server.Region, d.Size)
		}
	}
	c.render(w, r, http.StatusOK, "action", page{Title: d.Label + " " + d.Server.Name, S: s, Nav: "servers", Data: d})
	return nil
}

// loadActions lists a server's recent actions; a control plane without
// the actions API has none to show.
func (c *Console) loadActions(r *http.Request, s *session, serverID string) ([]action, error) {
	var out struct {
		Actions []action `json:"actions"`
	}
	err := c.call(r, s.token.Reveal(), http.MethodGet, wsBase(r)+"/servers/"+url.PathEscape(serverID)+"/actions?limit=5", nil, &out)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
		return nil, nil
	}
	return out.Actions, err
}
