package vultr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/devpilot/devpilot/controlplane/cloud"
)

// Hints, written for the person who pasted the key.
const (
	keyHint = "Vultr did not accept this API key. In the Vultr customer portal open Account > API, " +
		"copy the Personal Access Token (API key) and paste it as the Secret Key; " +
		"the Access Key field is only a label you choose. If the key was regenerated, the old one no longer works."
	apiDisabledHint = "API access is switched off for this Vultr account. In the Vultr portal open Account > API, " +
		"click \"Enable API\", then copy the key it shows and paste it as the Secret Key."
	scopeHint = "The key belongs to a Vultr user without the permission this action needs. In Account > Users give the " +
		"sub-user the ACLs provisioning, subscriptions, subscriptions_view and firewall, or use the account owner's API key."
	rateHint = "Vultr allows 30 API requests per second per IP address, shared by every tool calling from this address. " +
		"Devpilot waited and retried; try again in a moment."
	quotaHint = "The Vultr account reached its instance limit. Delete instances you no longer need, " +
		"or ask Vultr support (Support > Open ticket) to raise the limit."
	billingHint = "Vultr refused the order for a billing reason. Check Billing in the Vultr portal " +
		"(payment method, credit or outstanding balance)."
	validationHint = "Vultr refused the request's content. Pick region, plan and image from this integration's " +
		"catalog (GET …/integrations/{id}/catalog): the plan must be offered in the region."
	serverHint = "Vultr answered with a server error (or could not be reached) even after retries. " +
		"Try again later; https://status.vultr.com shows incidents."
	networkHint = "Devpilot could not reach the Vultr API. Check the control plane's outbound network and DNS " +
		"for api.vultr.com, then try again."
	notFoundHint = "The resource no longer exists in the Vultr account (it may have been deleted in the portal)."
)

// apiError is Vultr's error body, {"error":"…","status":N}.
type apiError struct {
	Error  string `json:"error"`
	Status int    `json:"status"`
}

// apiMessage extracts the API's text from an error body.
func apiMessage(status int, body []byte) string {
	var ae apiError
	if err := json.Unmarshal(body, &ae); err == nil && ae.Error != "" {
		return strings.TrimSpace(ae.Error)
	}
	if t := strings.TrimSpace(string(body)); t != "" && len(t) <= 200 && !strings.ContainsAny(t, "<{") {
		return t
	}
	return http.StatusText(status)
}

// fail maps a failed govultr call to a *cloud.Error using the captured last
// answer (govultr's own error strings carry neither the status nor, after
// a retry, a reliable body).
func (p *Provider) fail(ctx context.Context, op string, c *cloud.Capture, err error) error {
	e := &cloud.Error{Provider: cloud.Vultr, Op: op, Status: c.Status}
	switch {
	case c.Status == 0 && ctx.Err() != nil:
		e.Code, e.Message = cloud.CodeProviderError, "request cancelled: "+ctx.Err().Error()
	case c.Status == 0:
		e.Code, e.Message, e.Hint = cloud.CodeProviderError, "cannot reach the Vultr API: "+transportText(err), networkHint
	case c.Status < 300:
		e.Code, e.Message, e.Hint = cloud.CodeProviderError, "unexpected answer from the Vultr API: "+err.Error(), serverHint
	default:
		classify(e, apiMessage(c.Status, c.Body), c.Header)
	}
	e.Message = p.scrub(e.Message)
	e.Hint = p.scrub(e.Hint)
	return e
}

// classify fills Code, Message and Hint from the status and the API's text.
func classify(e *cloud.Error, msg string, header http.Header) {
	lower := strings.ToLower(msg)
	e.Message = msg
	switch {
	case e.Status == http.StatusUnauthorized:
		if ip, ok := strings.CutPrefix(msg, "Unauthorized IP address: "); ok {
			ip = strings.TrimSpace(ip)
			e.Code = cloud.CodeIPNotAllowed
			e.Hint = fmt.Sprintf("Vultr refused this API key from the IP address %s. In the Vultr portal open "+
				"Account > API > Access Control and add %s (or a subnet containing it) to the key's allowlist.", ip, ip)
			return
		}
		if strings.Contains(lower, "disabled") || strings.Contains(lower, "not enabled") {
			e.Code, e.Hint = cloud.CodeAPIDisabled, apiDisabledHint
			return
		}
		e.Code, e.Hint = cloud.CodeInvalidCredentials, keyHint
	case e.Status == http.StatusForbidden:
		// The API-disabled answer is UNVERIFIED; accept it as a 403 too.
		if strings.Contains(lower, "api") && (strings.Contains(lower, "disabled") || strings.Contains(lower, "not enabled")) {
			e.Code, e.Hint = cloud.CodeAPIDisabled, apiDisabledHint
			return
		}
		e.Code, e.Hint = cloud.CodeInsufficientScope, scopeHint
	case e.Status == http.StatusTooManyRequests:
		e.Code, e.Hint = cloud.CodeRateLimited, rateHint
		if d, ok := cloud.ServerWait(&http.Response{Header: header}, time.Now()); ok {
			e.RetryAfter = d
		}
	case e.Status == http.StatusNotFound:
		e.Code, e.Hint = cloud.CodeNotFound, notFoundHint
	case e.Status >= 500:
		e.Code, e.Hint = cloud.CodeProviderError, serverHint
	case e.Status == http.StatusBadRequest || e.Status == http.StatusUnprocessableEntity || e.Status == http.StatusPaymentRequired:
		switch {
		case strings.Contains(lower, "maximum number of active") || strings.Contains(lower, "instance limit") ||
			strings.Contains(lower, "limit raised"):
			e.Code, e.Hint = cloud.CodeQuotaExceeded, quotaHint
		case strings.Contains(lower, "unavailable") || strings.Contains(lower, "sold out") ||
			strings.Contains(lower, "out of stock") || strings.Contains(lower, "not available"):
			e.Code = cloud.CodeUnavailable
			e.Hint = "The plan cannot be deployed in this region right now. Pick another region or plan from the catalog."
		case e.Status == http.StatusPaymentRequired || strings.Contains(lower, "billing") ||
			strings.Contains(lower, "payment") || strings.Contains(lower, "credit card"):
			e.Code, e.Hint = cloud.CodeBilling, billingHint
		default:
			e.Code, e.Hint = cloud.CodeValidation, validationHint
		}
	default:
		e.Code, e.Hint = cloud.CodeProviderError, serverHint
	}
}

// transportText trims govultr's "gave up after N attempts, last error : "
// wrapper off a network error.
func transportText(err error) string {
	s := err.Error()
	if i := strings.Index(s, "last error : "); i >= 0 {
		s = s[i+len("last error : "):]
	}
	return s
}

// scrub removes the API key should any text ever contain it.
func (p *Provider) scrub(s string) string {
	if k := p.secret.Reveal(); len(k) >= 4 && strings.Contains(s, k) {
		s = strings.ReplaceAll(s, k, "[REDACTED]")
	}
	return s
}

// isNotFound reports a *cloud.Error with CodeNotFound.
func isNotFound(err error) bool {
	return errors.Is(err, cloud.ErrNotFound)
}

// local builds an error for a request refused before reaching Vultr.
func local(op string, code cloud.Code, msg, hint string) error {
	return &cloud.Error{Code: code, Provider: cloud.Vultr, Op: op, Message: msg, Hint: hint}
}
