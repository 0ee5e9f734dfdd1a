package api

import (
	"net/http"
	"strconv"

	"github.com/devpilot/devpilot/controlplane/agentrelease"
	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/release"
)

func (a *API) agentReleaseRoutes() {
	a.handle("GET /v1/agent-releases", read, a.listAgentReleases)
}

// listAgentReleases pages the release catalogue; the cursor is the index
// after the last one returned (the catalogue is a directory, small).
func (a *API) listAgentReleases(w http.ResponseWriter, r *http.Request, c *call) error {
	limit := apitypes.DefaultLimit
	q := r.URL.Query()
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > apitypes.MaxLimit || strconv.Itoa(n) != v {
			return problem.Validation(limitHint, "limit must be an integer from 1 to %d", apitypes.MaxLimit)
		}
		limit = n
	}
	from := 0
	if v := q.Get("cursor"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || strconv.Itoa(n) != v {
			return problem.Validation("Pass back the cursor of a list's next link unchanged, or leave it out to start over.", "invalid cursor")
		}
		from = n
	}
	out := apitypes.AgentReleaseList{AgentReleases: []apitypes.AgentRelease{}, ReleaseKeys: []string{},
		Protocol: apitypes.AgentProtocol{Speaks: strconv.Itoa(protocol.Version) + "." + strconv.Itoa(protocol.Minor),
			Accepts: strconv.Itoa(protocol.MinVersion) + "." + strconv.Itoa(protocol.MinMinor)}}
	if a.o.Releases != nil {
		all, err := a.o.Releases.List()
		if err != nil {
			return err
		}
		for _, k := range a.o.Releases.Keys() {
			out.ReleaseKeys = append(out.ReleaseKeys, release.KeyID(k))
		}
		if from < len(all) {
			end := min(from+limit, len(all))
			for _, rel := range all[from:end] {
				out.AgentReleases = append(out.AgentReleases, apitypes.AgentRelease{Version: rel.Version, OS: rel.OS, Arch: rel.Arch,
					SHA256: rel.SHA256, Signature: rel.Signature, KeyID: rel.KeyID, Size: rel.Size,
					URL: agentrelease.DownloadPath(rel.Version, rel.OS, rel.Arch)})
			}
			if end < len(all) {
				qq := r.URL.Query()
				qq.Set("cursor", strconv.Itoa(end))
				out.Next = r.URL.Path + "?" + qq.Encode()
			}
		}
	}
	return writeJSON(w, http.StatusOK, out)
}
