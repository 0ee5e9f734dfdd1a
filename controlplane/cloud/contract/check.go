package contract

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"

	verrors "github.com/pb33f/libopenapi-validator/errors"
	"github.com/pb33f/libopenapi-validator/router"
	v3 "github.com/pb33f/libopenapi/datamodel/high/v3"
)

// Check validates one exchange and returns human-readable violations (nil when
// clean). Each violation starts with "METHOD /request/path".
//
//   - The request must match an operation of the spec; an unknown path or
//     method is a violation and nothing else is checked.
//   - Request parameters and body must satisfy the operation. These findings
//     are reported only when the response status is below 400: a simulator that
//     rejects a bad request behaves like the real API, one that accepts it does not.
//   - The response status must be documented for the operation, or be one of the
//     provider's generic error statuses (see exceptions.go) with the provider's
//     error body shape. Documented statuses are validated against their schema
//     (including Content-Type); documented error statuses without a schema are
//     checked for the provider's error shape.
//
// Known exceptions (exceptions.go) are applied before validating.
func (s *Spec) Check(req *http.Request, reqBody []byte, resp *http.Response, respBody []byte) []string {
	vs, _ := s.check(req, reqBody, resp, respBody)
	return vs
}

// check returns the violations and the "METHOD /spec/path" operation ("" if
// the route is unknown).
func (s *Spec) check(req *http.Request, reqBody []byte, resp *http.Response, respBody []byte) ([]string, string) {
	prefix := req.Method + " " + req.URL.Path
	s.mu.Lock()
	route, err := s.router.FindRoute(withBody(req, nil))
	s.mu.Unlock()
	switch {
	case errors.Is(err, router.ErrMethodNotAllowed):
		p := ""
		if route != nil {
			p = s.basePath + route.Path
		}
		return []string{fmt.Sprintf("%s: method %s is not an operation of %s in the %s spec", prefix, req.Method, p, s.provider)}, ""
	case err != nil || route == nil || route.Operation == nil:
		return []string{fmt.Sprintf("%s: path is not in the %s spec", prefix, s.provider)}, ""
	}
	specPath := s.basePath + route.Path
	op := req.Method + " " + specPath
	if specPath != req.URL.Path {
		prefix += " [" + specPath + "]"
	}

	var out []string
	status := 0
	if resp != nil {
		status = resp.StatusCode
	}

	// Request.
	if status < 400 {
		body := reqBody
		if e := s.requestException(req.Method, specPath); e != nil {
			body = dropNulls(body, e.NullAsAbsent)
		}
		s.mu.Lock()
		_, errs := s.validator.ValidateHttpRequestSync(withBody(req, body))
		s.mu.Unlock()
		out = append(out, format(prefix, "request", errs)...)
	}

	// Response.
	if resp != nil {
		out = append(out, s.checkResponse(prefix, req, route.Operation, resp, respBody)...)
	}
	return dedupe(out), op
}

func (s *Spec) checkResponse(prefix string, req *http.Request, op *v3.Operation, resp *http.Response, body []byte) []string {
	status := resp.StatusCode
	documented := documentedResponse(op, status)
	where := fmt.Sprintf("response %d", status)
	if documented == nil {
		if !s.genericErr(status) {
			return []string{fmt.Sprintf("%s: %s is not documented for this operation (documented: %s)", prefix, where, strings.Join(documentedCodes(op), ", "))}
		}
		return prefixAll(prefix+": "+where, s.errorShape(status, body))
	}
	if documented.Content == nil || documented.Content.Len() == 0 {
		if status >= 400 {
			return prefixAll(prefix+": "+where, s.errorShape(status, body))
		}
		if len(bytes.TrimSpace(body)) > 0 {
			return []string{fmt.Sprintf("%s: %s: the spec documents no body but %d bytes were sent", prefix, where, len(body))}
		}
		return nil
	}
	r := &http.Response{
		Status:        resp.Status,
		StatusCode:    status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        resp.Header.Clone(),
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
	if r.Header == nil {
		r.Header = http.Header{}
	}
	s.mu.Lock()
	_, errs := s.validator.ValidateHttpResponse(withBody(req, nil), r)
	s.mu.Unlock()
	return format(prefix, where, errs)
}

// documentedResponse finds the response entry for status: exact code, then
// range ("4XX"). The operation's `default` entry is deliberately not used:
// DigitalOcean puts "default: unexpected error" on every operation, which would
// make any status (a 201 on a GET, a 418) count as documented.
func documentedResponse(op *v3.Operation, status int) *v3.Response {
	if op.Responses == nil {
		return nil
	}
	if op.Responses.Codes != nil {
		if r, ok := op.Responses.Codes.Get(strconv.Itoa(status)); ok {
			return r
		}
		rng := strconv.Itoa(status/100) + "XX"
		for p := op.Responses.Codes.First(); p != nil; p = p.Next() {
			if strings.EqualFold(p.Key(), rng) {
				return p.Value()
			}
		}
	}
	return nil
}

func documentedCodes(op *v3.Operation) []string {
	var codes []string
	if op.Responses != nil && op.Responses.Codes != nil {
		for p := op.Responses.Codes.First(); p != nil; p = p.Next() {
			codes = append(codes, p.Key())
		}
	}
	sort.Strings(codes)
	return codes
}

// withBody clones req with body as its body, so validation never consumes the
// caller's request.
func withBody(req *http.Request, body []byte) *http.Request {
	r := req.Clone(req.Context())
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	return r
}

func format(prefix, where string, errs []*verrors.ValidationError) []string {
	var out []string
	for _, e := range errs {
		if e == nil {
			continue
		}
		if len(e.SchemaValidationErrors) == 0 {
			msg := e.Message
			if e.Reason != "" && e.Reason != e.Message {
				msg += " (" + e.Reason + ")"
			}
			out = append(out, fmt.Sprintf("%s: %s: %s", prefix, where, msg))
			continue
		}
		for _, f := range e.SchemaValidationErrors {
			field := f.FieldPath
			if field == "" {
				field = "$"
			}
			out = append(out, fmt.Sprintf("%s: %s body: %s: %s", prefix, where, field, f.Reason))
		}
	}
	return out
}

func prefixAll(prefix string, msgs []string) []string {
	out := make([]string, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, prefix+": "+m)
	}
	return out
}

func dedupe(in []string) []string {
	if len(in) == 0 {
		return nil
	}
	seen := make(map[string]bool, len(in))
	out := in[:0]
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
