package events_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/problem"
)

func TestMatch(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		pattern, typ string
		want         bool
	}{
		{"*", events.ServerOnline, true},
		{"*", events.WebhookDisabled, true},
		{"server.*", events.ServerOnline, true},
		{"server.*", events.ServerAgentOffline, true},
		{"server.*", events.TaskFailed, false},
		{"task.*", events.TaskTimedOut, true},
		{"serv.*", events.ServerOnline, false}, // a prefix ends at a dot
		{"server*", events.ServerOnline, false},
		{"server", events.ServerOnline, false},
		{"server.online", events.ServerOnline, true},
		{"server.online", events.ServerOffline, false},
		{"server.on*", events.ServerOnline, false},
		{".*", events.ServerOnline, false},
		{"*.*", events.ServerOnline, false},
		{"", events.ServerOnline, false},
		{"SERVER.ONLINE", events.ServerOnline, false},
	} {
		if got := events.Match(c.pattern, c.typ); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.pattern, c.typ, got, c.want)
		}
	}
}

func TestValidPattern(t *testing.T) {
	t.Parallel()
	for _, p := range []string{"*", "server.*", "task.*", "deployment.*", "integration.*", "alert.*", "agent.*", "rollout.*", "webhook.*", events.TaskFailed, events.RolloutFinished} {
		if err := events.ValidPattern(p); err != nil {
			t.Errorf("ValidPattern(%q) = %v, want nil", p, err)
		}
	}
	for _, p := range []string{"", "server", "server.", "servers.*", "server.onlin", "task.**", " *", "**"} {
		err := events.ValidPattern(p)
		var pe *problem.Error
		if !errors.As(err, &pe) || pe.Code != "validation_failed" {
			t.Errorf("ValidPattern(%q) = %v, want validation_failed", p, err)
			continue
		}
		// The hint names what would have been valid.
		for _, want := range []string{`"*"`, "server.*", events.ServerOnline, events.WebhookDisabled} {
			if !strings.Contains(pe.Hint, want) {
				t.Errorf("ValidPattern(%q) hint %q lacks %q", p, pe.Hint, want)
			}
		}
	}
}

// Every type is unique, lower case "family.name", and matched by its family.
func TestTypesAreWellFormed(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for _, typ := range events.Types {
		if seen[typ] {
			t.Errorf("%q listed twice", typ)
		}
		seen[typ] = true
		fam, name, ok := strings.Cut(typ, ".")
		if !ok || fam == "" || name == "" || strings.ToLower(typ) != typ || strings.Contains(name, ".") {
			t.Errorf("%q is not family.name", typ)
		}
		if !events.Match(fam+".*", typ) || !events.Match(typ, typ) {
			t.Errorf("%q not matched by its family or itself", typ)
		}
	}
	if len(events.Types) != 23 {
		t.Errorf("%d types, want the contract's 23", len(events.Types))
	}
}

// A pattern arrives from a user (API query, webhook subscription): Match
// and ValidPattern never panic, and a valid pattern matches some type.
func FuzzPattern(f *testing.F) {
	for _, s := range []string{"*", "server.*", "task.failed", "", ".*", "*.*", "server", "a.b.*", "\x00", "server.\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		matched := false
		for _, typ := range events.Types {
			if events.Match(p, typ) {
				matched = true
			}
		}
		if err := events.ValidPattern(p); (err == nil) != matched {
			t.Fatalf("ValidPattern(%q) = %v but matches a type: %v", p, err, matched)
		}
	})
}
