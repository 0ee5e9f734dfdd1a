package tasks

import (
	"context"
	"errors"
	"time"
	"unicode/utf8"

	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/shared/protocol"
)

// Page sizes of log reads: memory stays bounded however large the output.
const (
	MaxPageChunks = 256
	maxPageBytes  = 1 << 20
)

// LogChunk is one chunk of output as the API shows it: Text is the bytes
// as UTF-8 (invalid sequences replaced); Data carries the exact bytes, in
// base64, only when they are not valid UTF-8.
type LogChunk struct {
	Seq    int64
	Stream string
	Step   int
	Text   string
	Data   []byte
	At     time.Time
}

// LogPage is a page of a task's output.
type LogPage struct {
	TaskID    string
	State     string
	Chunks    []LogChunk
	Next      int64 // pass as ?after= for the next page
	More      bool  // more output is stored already
	Done      bool  // the task is final and this page ends its output
	Truncated bool  // output beyond the control plane's cap was dropped
}

func chunk(l store.TaskLog) LogChunk {
	c := LogChunk{Seq: l.Seq, Stream: l.Stream, Step: l.Step, Text: string(l.Data), At: l.At}
	if !utf8.Valid(l.Data) {
		c.Data = l.Data
	}
	return c
}

// Logs returns the output stored after seq `after`, at most limit chunks.
func (s *Service) Logs(ctx context.Context, workspaceID, id string, after int64, limit int) (*LogPage, error) {
	t, err := s.store.Q().GetTask(ctx, workspaceID, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFound("task " + id)
	}
	if err != nil {
		return nil, err
	}
	return s.page(ctx, t, after, limit)
}

// page reads logs after reading the task: every chunk stored before the
// state was read is in the page (or a later one), so Done is reliable.
func (s *Service) page(ctx context.Context, t store.Task, after int64, limit int) (*LogPage, error) {
	if limit <= 0 || limit > MaxPageChunks {
		limit = MaxPageChunks
	}
	ls, err := s.store.Q().TaskLogs(ctx, t.ID, after, limit+1, maxPageBytes)
	if err != nil {
		return nil, err
	}
	p := &LogPage{TaskID: t.ID, State: t.State, Chunks: []LogChunk{}, Next: after, Truncated: t.LogTruncated}
	if len(ls) > limit {
		ls, p.More = ls[:limit], true
	}
	for _, l := range ls {
		p.Chunks = append(p.Chunks, chunk(l))
		p.Next = l.Seq
	}
	if !p.More && len(ls) > 0 {
		// The byte bound may have cut the page short.
		if next, err := s.store.Q().TaskLogs(ctx, t.ID, p.Next, 1, 1); err == nil && len(next) > 0 {
			p.More = true
		}
	}
	p.Done = protocol.Final(t.State) && !p.More
	return p, nil
}

// Follower receives a followed task's output.
type Follower interface {
	Chunk(c LogChunk) error
	Heartbeat() error
	End(t *Task) error // the task is final and all its stored output was sent
}

// Follow sends a task's output after seq `after` to f as it arrives, in
// pages from the store, waking on the task's changes (no polling) with a
// heartbeat every Options.Heartbeat, until the task is final (End), ctx
// ends or the service closes.
func (s *Service) Follow(ctx context.Context, workspaceID, id string, after int64, f Follower) error {
	if _, err := s.store.Q().GetTask(ctx, workspaceID, id); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return problem.NotFound("task " + id)
		}
		return err
	}
	hb := time.NewTicker(s.o.Heartbeat)
	defer hb.Stop()
	for {
		changed := s.Changed(id)
		t, err := s.store.Q().GetTask(ctx, workspaceID, id)
		if err != nil {
			return err
		}
		p, err := s.page(ctx, t, after, MaxPageChunks)
		if err != nil {
			return err
		}
		for _, c := range p.Chunks {
			if err := f.Chunk(c); err != nil {
				return err
			}
			after = c.Seq
		}
		if p.Done {
			return f.End(s.view(t))
		}
		if p.More {
			continue
		}
		for waiting := true; waiting; {
			select {
			case <-changed:
				waiting = false
			case <-hb.C:
				if err := f.Heartbeat(); err != nil {
					return err
				}
			case <-ctx.Done():
				return ctx.Err()
			case <-s.ctx.Done():
				return nil
			}
		}
	}
}
