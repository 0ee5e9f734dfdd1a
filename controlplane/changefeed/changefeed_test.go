package changefeed_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/changefeed"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestResumeGetsWhatWasMissed(t *testing.T) {
	f := changefeed.New(4)
	start := f.Now()
	f.Publish("servers", "tasks")
	evs, next, ok, wake, err := f.Since(start)
	if err != nil || !ok || len(evs) != 2 || evs[0].Topic != "servers" || evs[1].Topic != "tasks" {
		t.Fatalf("since start: %v %v %v %v", evs, ok, err, next)
	}
	select {
	case <-wake:
		t.Fatal("woken without a publish")
	default:
	}
	f.Publish("deployments")
	<-wake // closed by the publish
	c, ok := f.Resume(next.ID())
	if !ok {
		t.Fatalf("resume %s refused", next.ID())
	}
	evs, _, ok, _, _ = f.Since(c)
	if !ok || len(evs) != 1 || evs[0].Topic != "deployments" {
		t.Fatalf("after resume: %v %v", evs, ok)
	}
}

func TestResumeRefusesWhatItCannotReplay(t *testing.T) {
	f := changefeed.New(2)
	old := f.Now().ID()
	f.Publish("a", "b", "c")
	if _, ok := f.Resume(old); ok {
		t.Error("a cursor older than the ring resumed: the listener would miss an event")
	}
	other := changefeed.New(2)
	if _, ok := f.Resume(other.Now().ID()); ok {
		t.Error("another process's cursor resumed")
	}
	for _, bad := range []string{"", "x", "-1", f.Now().ID() + "9"} {
		if _, ok := f.Resume(bad); ok {
			t.Errorf("resumed %q", bad)
		}
	}
	f.Close()
	if _, _, _, _, err := f.Since(f.Now()); err == nil {
		t.Error("a closed feed still listens")
	}
}

// FuzzResume feeds Last-Event-ID values (sent by any browser) to Resume:
// it never panics, and resumes only from a position this feed has issued.
func FuzzResume(f *testing.F) {
	feed := changefeed.New(8)
	feed.Publish("servers", "tasks")
	for _, s := range []string{feed.Now().ID(), "", "-", "x-1", "0-0", feed.Now().ID() + "0", "ffffffffffff-18446744073709551615", "a-b-c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		c, ok := feed.Resume(id)
		if !ok {
			return
		}
		evs, _, ok, _, err := feed.Since(c)
		if err != nil || !ok || len(evs) > 2 {
			t.Fatalf("resumed %q to a position the feed never issued: %v %v %v", id, evs, ok, err)
		}
	})
}
