package digitalocean

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/digitalocean/godo"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud"
)

// Where users fix what the hints talk about.
const (
	tokensURL  = "https://cloud.digitalocean.com/account/api/tokens"
	accountURL = "https://cloud.digitalocean.com/account/profile"
	statusURL  = "https://status.digitalocean.com"
	limitsURL  = "https://cloud.digitalocean.com/account/team/droplet_limit_increase"
)

const (
	hintNewToken = "The token is unknown, revoked or expired. Create a personal access token with " +
		"Read and Write scope at " + tokensURL + " and update the integration with it."
	hintScope = "The token lacks write access. Create a personal access token with \"Read and Write\" " +
		"scope (or custom scopes including droplet:create, droplet:delete, ssh_key:create, ssh_key:read, " +
		"tag:create, tag:read and firewall:create/read/update/delete) at " + tokensURL +
		" and update the integration with it."
	hintRate = "DigitalOcean allows 250 requests per minute and 5,000 per hour per token; " +
		"Devpilot retried and gave up. Wait a little and try again, and check whether other tools share this token."
	hintServer = "DigitalOcean's API failed or could not be reached, even after retries. Try again later; see " + statusURL + "."
)

// apiError maps a godo (or transport) failure to a *cloud.Error whose
// Message is the API's own text, never godo's "METHOD URL: status (request
// …)" line and never the token.
func (p *Provider) apiError(op string, err error) *cloud.Error {
	e := &cloud.Error{Provider: cloud.DigitalOcean, Op: op}
	var er *godo.ErrorResponse
	switch {
	case errors.As(err, &er) && er.Response != nil:
		e.Status = er.Response.StatusCode
		e.Message = p.clean(bodyMessage(er.Message))
		if e.Message == "" {
			e.Message = strings.ToLower(http.StatusText(e.Status))
		}
		if er.RequestID != "" {
			p.log.Debug("digitalocean error", zap.String("op", op), zap.Int("status", e.Status), zap.String("request_id", er.RequestID))
		}
		classify(e, er.Response)
	case errors.Is(err, context.Canceled):
		e.Code, e.Message = cloud.CodeProviderError, "the request was cancelled"
	case errors.Is(err, context.DeadlineExceeded):
		e.Code, e.Message = cloud.CodeProviderError, "DigitalOcean did not answer in time"
		e.Hint = hintServer
	default:
		var ue *url.Error
		msg := err.Error()
		if errors.As(err, &ue) {
			msg = ue.Err.Error() // without the URL
		}
		e.Code = cloud.CodeProviderError
		e.Message = "could not reach the DigitalOcean API: " + p.clean(msg)
		e.Hint = hintServer
	}
	return e
}

// classify sets Code, Hint and RetryAfter from the status and message.
func classify(e *cloud.Error, resp *http.Response) {
	msg := strings.ToLower(e.Message)
	switch s := e.Status; {
	case s == http.StatusUnauthorized:
		e.Code, e.Hint = cloud.CodeInvalidCredentials, hintNewToken
		e.Message = "DigitalOcean rejected the token: " + e.Message
	case s == http.StatusForbidden:
		e.Code, e.Hint = cloud.CodeInsufficientScope, hintScope
	case s == http.StatusTooManyRequests:
		e.Code, e.Hint = cloud.CodeRateLimited, hintRate
		if d, ok := cloud.ServerWait(resp, time.Now()); ok {
			e.RetryAfter = d
		}
	case s == http.StatusNotFound:
		e.Code = cloud.CodeNotFound
	case s == http.StatusUnprocessableEntity && strings.Contains(msg, "droplet limit"):
		e.Code = cloud.CodeQuotaExceeded
		e.Hint = "The account reached its droplet limit. Delete droplets you no longer need, or ask DigitalOcean " +
			"to raise the limit at " + limitsURL + "."
	case s == http.StatusUnprocessableEntity && strings.Contains(msg, "not available"):
		e.Code = cloud.CodeUnavailable
		e.Hint = "Choose another region or size; the catalog shows where each size is available."
	case s == http.StatusUnprocessableEntity && strings.Contains(msg, "invalid key identifiers"):
		e.Code = cloud.CodeValidation
		e.Hint = "An SSH key named in the request is not (or no longer) in the DigitalOcean account; upload it again."
	case s == http.StatusBadRequest, s == http.StatusUnprocessableEntity, s == http.StatusConflict:
		e.Code = cloud.CodeValidation
		e.Hint = "DigitalOcean refused the request's content; correct the named field and retry."
	case s >= 500:
		e.Code, e.Hint = cloud.CodeProviderError, hintServer
	default:
		e.Code = cloud.CodeProviderError
		e.Hint = fmt.Sprintf("DigitalOcean answered with unexpected status %d.", s)
	}
}

// clean keeps a provider-supplied text printable and free of the token.
func (p *Provider) clean(s string) string {
	if tok := p.secret.Reveal(); tok != "" {
		s = strings.ReplaceAll(s, tok, "[REDACTED]")
	}
	s = strings.TrimSpace(s)
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// bodyMessage unwraps the tags endpoint's {"error": "...", "root_causes":
// [...]} body, which godo cannot parse and hands over raw.
func bodyMessage(m string) string {
	if !strings.HasPrefix(strings.TrimSpace(m), "{") {
		return m
	}
	var b struct {
		Error any `json:"error"`
	}
	if json.Unmarshal([]byte(m), &b) == nil {
		if s, ok := b.Error.(string); ok && s != "" {
			return s
		}
	}
	return "unreadable error answer"
}
