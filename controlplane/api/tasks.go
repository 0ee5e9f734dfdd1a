package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/tasks"
)

func (a *API) taskRoutes() {
	if a.o.Tasks == nil {
		return
	}
	a.handle("POST /v1/workspaces/{ws}/servers/{id}/tasks", write, a.createTask)
	a.handle("GET /v1/workspaces/{ws}/tasks", read, a.listTasks)
	a.handle("GET /v1/workspaces/{ws}/tasks/{id}", read, a.getTask)
	a.handle("POST /v1/workspaces/{ws}/tasks/{id}/cancel", write, a.cancelTask)
	a.handle("GET /v1/workspaces/{ws}/tasks/{id}/logs", read, a.taskLogs)
	a.handle("POST /v1/workspaces/{ws}/deployments", write, a.createDeployment)
	a.handle("GET /v1/workspaces/{ws}/deployments", read, a.listDeployments)
	a.handle("GET /v1/workspaces/{ws}/deployments/{id}", read, a.getDeployment)
}

func (a *API) createTask(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.TaskSpec
	if err := decode(r, &req); err != nil {
		return err
	}
	t, err := a.o.Tasks.Create(r.Context(), c.p.Actor(), c.ws.ID, r.PathValue("id"), taskSpecIn(req))
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/workspaces/"+c.ws.Slug+"/tasks/"+t.ID)
	return writeJSON(w, http.StatusAccepted, taskOut(t))
}

// listTasks pages a workspace's tasks, newest first, filtered by
// ?server=, ?deployment= and ?state=.
func (a *API) listTasks(w http.ResponseWriter, r *http.Request, c *call) error {
	pg, err := pageOf(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	list, err := a.o.Tasks.List(r.Context(), c.ws.ID, store.TaskFilter{ServerID: q.Get("server"),
		DeploymentID: q.Get("deployment"), State: q.Get("state"), After: pg.after, Limit: pg.limit + 1})
	if err != nil {
		return err
	}
	list, more := trim(list, pg.limit)
	out := apitypes.TaskList{Tasks: make([]apitypes.Task, 0, len(list))}
	for _, t := range list {
		out.Tasks = append(out.Tasks, taskOut(t))
	}
	if more {
		last := list[len(list)-1]
		out.Next = nextLink(r, store.Cursor{At: last.CreatedAt, ID: last.ID})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (a *API) getTask(w http.ResponseWriter, r *http.Request, c *call) error {
	t, err := a.o.Tasks.Get(r.Context(), c.ws.ID, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, taskOut(t))
}

func (a *API) cancelTask(w http.ResponseWriter, r *http.Request, c *call) error {
	t, err := a.o.Tasks.Cancel(r.Context(), c.p.Actor(), c.ws.ID, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusAccepted, taskOut(t))
}

func intParam(v, name string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	// Digits only: ParseInt alone would also take "+5" and "-0".
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || strings.Trim(v, "0123456789") != "" {
		return 0, problem.Validation("", "%s must be a non-negative integer", name)
	}
	return n, nil
}

// resumeAfter is the log sequence number to continue after: a
// reconnecting EventSource's Last-Event-ID (the id of the last "log" event
// it got) when it sends one, else ?after=, else 0.
func resumeAfter(after, lastEventID string) (int64, error) {
	if lastEventID != "" {
		return intParam(lastEventID, "Last-Event-ID")
	}
	return intParam(after, "after")
}

// taskLogs returns a page of output (?after=SEQ&limit=N), or with
// ?follow=1 streams it as server-sent events until the task ends: one
// "log" event per chunk (id = seq, so a reconnecting EventSource resumes
// with Last-Event-ID), comments as heartbeats, and a final "end" event
// carrying the task.
func (a *API) taskLogs(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	follow := q.Get("follow") == "1" || q.Get("follow") == "true"
	lastID := ""
	if follow {
		lastID = r.Header.Get("Last-Event-ID")
	}
	after, err := resumeAfter(q.Get("after"), lastID)
	if err != nil {
		return err
	}
	if !follow {
		limit, err := intParam(q.Get("limit"), "limit")
		if err != nil {
			return err
		}
		p, err := a.o.Tasks.Logs(r.Context(), c.ws.ID, r.PathValue("id"), after, int(limit))
		if err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, logPageOut(p))
	}
	// Errors before the first byte (unknown task) are ordinary JSON errors.
	if _, err := a.o.Tasks.Get(r.Context(), c.ws.ID, r.PathValue("id")); err != nil {
		return err
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		return fmt.Errorf("streaming unsupported by the response writer")
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, ": following task output\n\n")
	fl.Flush()
	err = a.o.Tasks.Follow(r.Context(), c.ws.ID, r.PathValue("id"), after, &sse{w: w, f: fl})
	if err != nil && r.Context().Err() == nil {
		// Headers are out: the client sees the stream end without an
		// "end" event and can resume with Last-Event-ID.
		a.log.Debug("log follow ended", zap.String("task", r.PathValue("id")), zap.Error(err))
	}
	return nil
}

// sse writes server-sent events.
type sse struct {
	w http.ResponseWriter
	f http.Flusher
}

func (s *sse) event(id, typ string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if id != "" {
		if _, err := fmt.Fprintf(s.w, "id: %s\n", id); err != nil {
			return err
		}
	}
	if _, err := fmt.Fprintf(s.w, "event: %s\ndata: %s\n\n", typ, b); err != nil {
		return err
	}
	s.f.Flush()
	return nil
}

func (s *sse) Chunk(c tasks.LogChunk) error {
	return s.event(strconv.FormatInt(c.Seq, 10), "log", logChunkOut(c))
}

func (s *sse) Heartbeat() error {
	if _, err := fmt.Fprint(s.w, ": heartbeat\n\n"); err != nil {
		return err
	}
	s.f.Flush()
	return nil
}

func (s *sse) End(t *tasks.Task) error { return s.event("", "end", taskOut(t)) }

func (a *API) createDeployment(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.CreateDeployment
	if err := decode(r, &req); err != nil {
		return err
	}
	d, err := a.o.Tasks.Deploy(r.Context(), c.p.Actor(), c.ws.ID, deploymentIn(req))
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/workspaces/"+c.ws.Slug+"/deployments/"+d.ID)
	return writeJSON(w, http.StatusAccepted, deploymentOut(d))
}

// listDeployments pages a workspace's deployments, newest first.
func (a *API) listDeployments(w http.ResponseWriter, r *http.Request, c *call) error {
	pg, err := pageOf(r)
	if err != nil {
		return err
	}
	list, err := a.o.Tasks.ListDeployments(r.Context(), c.ws.ID, pg.after, pg.limit+1)
	if err != nil {
		return err
	}
	list, more := trim(list, pg.limit)
	out := apitypes.DeploymentList{Deployments: make([]apitypes.Deployment, 0, len(list))}
	for _, d := range list {
		out.Deployments = append(out.Deployments, deploymentOut(d))
	}
	if more {
		last := list[len(list)-1]
		out.Next = nextLink(r, store.Cursor{At: last.CreatedAt, ID: last.ID})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (a *API) getDeployment(w http.ResponseWriter, r *http.Request, c *call) error {
	d, err := a.o.Tasks.Deployment(r.Context(), c.ws.ID, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, deploymentOut(d))
}
