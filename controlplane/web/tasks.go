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
	"github.com/devpilot/devpilot/controlplane/planfile"
)

func (c *Console) taskRoutes() {
	c.handle("GET /ui/w/{ws}/tasks", readOnly, c.tasksPage)
	c.handle("POST /ui/w/{ws}/tasks", changes, c.runTask)
	c.handle("GET /ui/w/{ws}/tasks/{id}", readOnly, c.taskPage)
	c.handle("GET /ui/w/{ws}/tasks/{id}/live", readOnly, c.taskLive)
	c.handle("GET /ui/w/{ws}/tasks/{id}/logs", readOnly, c.taskLogs)
	c.handle("POST /ui/w/{ws}/tasks/{id}/cancel", changes, c.cancelTask)
	c.handle("GET /ui/w/{ws}/deployments/{id}", readOnly, c.deploymentPage)
	c.handle("GET /ui/w/{ws}/deployments/{id}/live", readOnly, c.deploymentLive)
}

// task is the API's task, with what the templates ask of it.
type task struct{ apitypes.Task }

// Finished reports whether the task is over.
func (t task) Finished() bool { return t.FinishedAt != nil }

// Summary is a one-line description of what the task runs.
func (t task) Summary() string {
	switch {
	case t.Spec.Exec != nil:
		a := t.Spec.Exec.Argv
		if len(a) == 3 && a[0] == "/bin/sh" && a[1] == "-c" {
			return a[2]
		}
		return strings.Join(a, " ")
	case t.Spec.Deploy != nil:
		names := []string{}
		for i, s := range t.Spec.Deploy.Steps {
			n := s.Name
			if n == "" {
				n = s.Kind
			}
			names = append(names, strings.TrimSpace(n))
			if i == 4 && len(t.Spec.Deploy.Steps) > 5 {
				names = append(names, "…")
				break
			}
		}
		return "deploy: " + strings.Join(names, " → ")
	}
	return t.Kind
}

type tasksData struct {
	Tasks     []task
	Servers   []server
	Tags      []string
	Target    string
	Kind      string
	Command   string
	Plan      string
	Names     map[string]string // server id → name
	Available bool
}

const examplePlan = `steps:
  - name: hello
    kind: exec
    argv: ["/bin/sh", "-c", "echo deploying on $(hostname)"]
`

func (c *Console) tasksPage(w http.ResponseWriter, r *http.Request, s *session) error {
	return c.renderTasks(w, r, s, http.StatusOK, nil)
}

func (c *Console) renderTasks(w http.ResponseWriter, r *http.Request, s *session, status int, e *apiError) error {
	d := tasksData{Target: r.FormValue("target"), Kind: r.FormValue("kind"), Command: r.FormValue("command"),
		Plan: r.FormValue("plan"), Names: map[string]string{}, Available: true}
	if srv := r.FormValue("server"); srv != "" && d.Target == "" {
		d.Target = "server:" + srv
	}
	if d.Kind == "" {
		d.Kind = "command"
	}
	if d.Plan == "" {
		d.Plan = examplePlan
	}
	var out struct {
		Tasks []task `json:"tasks"`
	}
	err := c.call(r, s.token.Reveal(), http.MethodGet, wsBase(r)+"/tasks?limit=50", nil, &out)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
		d.Available = false // this control plane has no tasks API
	} else if err != nil {
		return err
	}
	d.Tasks = out.Tasks
	srvs, err := c.listServers(r, s)
	if err != nil {
		return err
	}
	for _, sv := range srvs {
		d.Names[sv.ID] = sv.Name
		if sv.State == "deleted" {
			continue
		}
		d.Servers = append(d.Servers, sv)
		for _, tg := range sv.Tags {
			if !slices.Contains(d.Tags, tg) {
				d.Tags = append(d.Tags, tg)
			}
		}
	}
	slices.Sort(d.Tags)
	c.render(w, r, status, "tasks", page{Title: "Tasks", S: s, Nav: "tasks", Err: e, Data: d})
	return nil
}

// noLocalFiles refuses a plan step's from: (a file on the CLI user's
// machine); the console has no such files.
func noLocalFiles(string) ([]byte, error) {
	return nil, errors.New("from: names a file on your machine, which the console cannot read; put the file's text in content instead")
}

// runTask starts a command or a deploy plan on one server (a task) or on
// every server with a tag (a deployment). Plans are YAML, read exactly as
// `devpilot deploy -f` reads them (package planfile); the target chosen in
// the form replaces the plan's servers or tag.
func (c *Console) runTask(w http.ResponseWriter, r *http.Request, s *session) error {
	target, kind := r.PostFormValue("target"), r.PostFormValue("kind")
	refuse := func(msg, hint string) error {
		return c.renderTasks(w, r, s, http.StatusUnprocessableEntity, &apiError{Status: 422, Code: "validation_failed", Message: msg, Hint: hint})
	}
	var spec apitypes.TaskSpec
	var plan apitypes.CreateDeployment
	switch kind {
	case "command":
		cmd := strings.TrimSpace(r.PostFormValue("command"))
		if cmd == "" {
			return refuse("the command is empty", "Type a shell command, e.g. uptime.")
		}
		spec = apitypes.TaskSpec{Kind: "exec", StepFields: apitypes.StepFields{Argv: []string{"/bin/sh", "-c", cmd}}}
		plan.Plan.Steps = []apitypes.TaskStep{{Kind: "exec", StepFields: spec.StepFields}}
	case "plan":
		var err error
		plan, err = planfile.Parse([]byte(r.PostFormValue("plan")), "from the form", noLocalFiles)
		if err != nil {
			return refuse(err.Error(), "Write YAML as for `devpilot deploy -f plan.yaml`: steps: with kind exec (argv), systemd (unit, action), file (path, content) or firewall (ports).")
		}
		if len(plan.Plan.Steps) == 0 {
			return refuse("the plan has no steps", "Add steps: with at least one step.")
		}
		spec = apitypes.TaskSpec{Kind: "deploy", Steps: plan.Plan.Steps, DeadlineS: plan.DeadlineS}
	default:
		return refuse(fmt.Sprintf("unknown kind %q", kind), "Choose command or plan.")
	}
	var err error
	switch {
	case strings.HasPrefix(target, "server:") && kind == "plan" && hasFirewall(plan):
		// A firewall step runs on the control plane, between agent steps:
		// only a deployment runs it, here of this one server.
		plan.Servers, plan.Tag = []string{strings.TrimPrefix(target, "server:")}, ""
		var d deployment
		err = c.call(r, s.token.Reveal(), http.MethodPost, wsBase(r)+"/deployments", plan, &d)
		if err == nil {
			return c.done(w, r, s, uiBase(r)+"/deployments/"+url.PathEscape(d.ID), "Deployment started.", nil)
		}
	case strings.HasPrefix(target, "server:"):
		var t task
		err = c.call(r, s.token.Reveal(), http.MethodPost, wsBase(r)+"/servers/"+url.PathEscape(strings.TrimPrefix(target, "server:"))+"/tasks", spec, &t)
		if err == nil {
			msg := "Task started."
			if kind == "plan" {
				msg = "Deploy started."
			}
			return c.done(w, r, s, uiBase(r)+"/tasks/"+url.PathEscape(t.ID), msg, nil)
		}
	case strings.HasPrefix(target, "tag:"):
		plan.Servers, plan.Tag = nil, strings.TrimPrefix(target, "tag:")
		var d deployment
		err = c.call(r, s.token.Reveal(), http.MethodPost, wsBase(r)+"/deployments", plan, &d)
		if err == nil {
			return c.done(w, r, s, uiBase(r)+"/deployments/"+url.PathEscape(d.ID), "Deployment started.", nil)
		}
	default:
		return refuse("choose a server or a tag to run on", "Pick one in the list “On”.")
	}
	var ae *apiError
	if errors.As(err, &ae) && ae.Status != http.StatusUnauthorized {
		return c.renderTasks(w, r, s, ae.Status, ae)
	}
	return err
}

// hasFirewall reports whether a plan has a firewall step.
func hasFirewall(p apitypes.CreateDeployment) bool {
	for _, st := range p.Plan.Steps {
		if st.Kind == "firewall" {
			return true
		}
	}
	return false
}

type taskData struct {
	Task   task
	Server string // name
	Logs   string // the console's event stream URL
}

func (c *Console) loadTask(r *http.Request, s *session) (taskData, error) {
	var d taskData
	if err := c.call(r, s.token.Reveal(), http.MethodGet, wsBase(r)+"/tasks/"+url.PathEscape(r.PathValue("id")), nil, &d.Task); err != nil {
		return d, err
	}
	var sv server
	if err := c.call(r, s.token.Reveal(), http.MethodGet, wsBase(r)+"/servers/"+url.PathEscape(d.Task.ServerID), nil, &sv); err == nil {
		d.Server = sv.Name
	}
	d.Logs = uiBase(r) + "/tasks/" + url.PathEscape(d.Task.ID) + "/logs"
	return d, nil
}

func (c *Console) taskPage(w http.ResponseWriter, r *http.Request, s *session) error {
	d, err := c.loadTask(r, s)
	if err != nil {
		return err
	}
	c.render(w, r, http.StatusOK, "task", page{Title: "Task " + d.Task.ID, S: s, Nav: "tasks", Data: d})
	return nil
}

// taskLive is the task page's state, facts and Cancel button, which the
// script re-reads when a task changes.
func (c *Console) taskLive(w http.ResponseWriter, r *http.Request, s *session) error {
	d, err := c.loadTask(r, s)
	if err != nil {
		return err
	}
	c.fragment(w, "task", "live", page{S: s, WS: r.PathValue("ws"), Data: d})
	return nil
}

// taskLogs relays the API's event stream of a task's output, carrying the
// session's token.
func (c *Console) taskLogs(w http.ResponseWriter, r *http.Request, s *session) error {
	req, err := apiRequest(r.Context(), r, s.token.Reveal(), http.MethodGet,
		wsBase(r)+"/tasks/"+url.PathEscape(r.PathValue("id"))+"/logs?follow=1", nil)
	if err != nil {
		return err
	}
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		req.Header.Set("Last-Event-ID", id)
	}
	c.o.API.ServeHTTP(w, req)
	return nil
}

func (c *Console) cancelTask(w http.ResponseWriter, r *http.Request, s *session) error {
	id := r.PathValue("id")
	if err := c.call(r, s.token.Reveal(), http.MethodPost, wsBase(r)+"/tasks/"+url.PathEscape(id)+"/cancel", nil, nil); err != nil {
		return err
	}
	return c.done(w, r, s, uiBase(r)+"/tasks/"+url.PathEscape(id), "Cancellation requested.", nil)
}

// deployment is the API's deployment, with what the templates ask of it.
type deployment struct{ apitypes.Deployment }

// Busy reports whether the deployment is still running.
func (d deployment) Busy() bool { return d.FinishedAt == nil }

// FirewallSteps describes the plan's firewall steps, which the control
// plane runs between the agent's steps (one ports action per server):
// "step 3 (open-web): inbound ports 22, 80, 443".
func (d deployment) FirewallSteps() []string {
	out := make([]string, 0, len(d.Firewall))
	for _, f := range d.Firewall {
		ports := make([]string, len(f.Ports))
		for i, p := range f.Ports {
			ports[i] = strconv.Itoa(p)
		}
		name := ""
		if f.Name != "" {
			name = " (" + f.Name + ")"
		}
		out = append(out, fmt.Sprintf("step %d%s: inbound ports %s", f.Step+1, name, strings.Join(ports, ", ")))
	}
	return out
}

type deploymentData struct {
	Deployment deployment
	Names      map[string]string
	Live       string
}

func (c *Console) loadDeployment(r *http.Request, s *session) (deploymentData, error) {
	d := deploymentData{Names: map[string]string{}}
	if err := c.call(r, s.token.Reveal(), http.MethodGet, wsBase(r)+"/deployments/"+url.PathEscape(r.PathValue("id")), nil, &d.Deployment); err != nil {
		return d, err
	}
	srvs, err := c.listServers(r, s)
	if err != nil {
		return d, err
	}
	for _, sv := range srvs {
		d.Names[sv.ID] = sv.Name
	}
	d.Live = uiBase(r) + "/deployments/" + url.PathEscape(d.Deployment.ID) + "/live"
	return d, nil
}

func (c *Console) deploymentPage(w http.ResponseWriter, r *http.Request, s *session) error {
	d, err := c.loadDeployment(r, s)
	if err != nil {
		return err
	}
	c.render(w, r, http.StatusOK, "deployment", page{Title: "Deployment " + d.Deployment.ID, S: s, Nav: "tasks", Data: d})
	return nil
}

func (c *Console) deploymentLive(w http.ResponseWriter, r *http.Request, s *session) error {
	d, err := c.loadDeployment(r, s)
	if err != nil {
		return err
	}
	c.fragment(w, "deployment", "live", page{S: s, WS: r.PathValue("ws"), Data: d})
	return nil
}
