package api

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/controlplane/problem"
)

// FuzzResumeAfter feeds ?after= and Last-Event-ID, which any client of a
// log follow sends, to resumeAfter: it never panics; it accepts only
// decimal sequence numbers, never a negative one, Last-Event-ID first;
// every event id the stream writes (strconv.FormatInt of a seq) resumes
// exactly after that seq; refusals are validation_failed naming the
// parameter, without echoing what was sent.
func FuzzResumeAfter(f *testing.F) {
	for _, s := range [][2]string{{"", ""}, {"0", ""}, {"17", ""}, {"", "42"}, {"5", "9"}, {"-1", ""}, {"", "-1"},
		{"9223372036854775807", ""}, {"9223372036854775808", ""}, {"+3", ""}, {" 3", ""}, {"", "3\n"}, {"0x10", ""},
		{"1_000", ""}, {"", "١٢"}, {"", "\x00"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, after, lastID string) {
		n, err := resumeAfter(after, lastID)
		used, name := after, "after"
		if lastID != "" {
			used, name = lastID, "Last-Event-ID"
		}
		if err != nil {
			var pe *problem.Error
			if !errors.As(err, &pe) || pe.Status != http.StatusBadRequest || pe.Code != "validation_failed" ||
				pe.Message != name+" must be a non-negative integer" {
				t.Fatalf("resumeAfter(%q, %q) = %#v, want a validation_failed naming %s", after, lastID, err, name)
			}
			return
		}
		if n < 0 {
			t.Fatalf("resumeAfter(%q, %q) = %d, negative", after, lastID, n)
		}
		if used != "" && strings.Trim(used, "0123456789") != "" {
			t.Fatalf("resumeAfter accepted %s %q as %d", name, used, n)
		}
		id := strconv.FormatInt(n, 10)
		if back, err := resumeAfter("", id); err != nil || back != n {
			t.Fatalf("event id %q resumes after %d (%v), want %d", id, back, err, n)
		}
	})
}
