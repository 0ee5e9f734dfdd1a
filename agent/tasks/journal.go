package tasks

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/devpilot/devpilot/shared/atomicfile"
	"github.com/devpilot/devpilot/shared/protocol"
)

// Journal events, one JSON object per line in JournalFile.
const (
	evStarted  = "started"  // about to run; written (fsync'ed) before the work begins
	evFinished = "finished" // final result stored
	evAcked    = "acked"    // the hub stored the final result; the spool is gone
)

// JournalFile and SpoolDir are below Options.StateDir/tasks.
const (
	JournalFile = "journal.jsonl"
	SpoolDir    = "spool"
)

// event is one journal line.
type event struct {
	Ev     string               `json:"ev"`
	ID     string               `json:"id"`
	At     time.Time            `json:"at"`
	Kind   string               `json:"kind,omitempty"`
	Result *protocol.TaskResult `json:"result,omitempty"`
}

// entry is what the journal knows about one task id.
type entry struct {
	state  string // evStarted, evFinished or evAcked
	at     time.Time
	kind   string
	result *protocol.TaskResult
}

// journal is the append-only record of task ids; every append is fsync'ed.
type journal struct {
	dir       string
	retention time.Duration
	mu        sync.Mutex
	f         *os.File
	m         map[string]*entry
	lines     int // in the file
}

// compactEvery is how many appended lines make append compact the file
// (a long-running agent is not restarted often).
const compactEvery = 4096

// openJournal reads dir/journal.jsonl, drops entries whose last event is
// older than retention (except ones still marked started), rewrites it
// compacted, and removes spool files no entry needs.
func openJournal(dir string, now time.Time, retention time.Duration) (*journal, error) {
	if err := os.MkdirAll(filepath.Join(dir, SpoolDir), 0o700); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	j := &journal{dir: dir, m: map[string]*entry{}, retention: retention}
	path := filepath.Join(dir, JournalFile)
	if f, err := os.Open(path); err == nil {
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), protocol.MaxMessageBytes)
		for sc.Scan() {
			var ev event
			if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.ID == "" {
				continue // a torn last line after a crash
			}
			j.fold(ev)
		}
		_ = f.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("journal: %w", err)
	}
	if err := j.compactLocked(now); err != nil {
		return nil, err
	}
	// Spools of acked or forgotten tasks.
	keep := map[string]bool{}
	for id, e := range j.m {
		if e.state != evAcked {
			keep[spoolName(id)] = true
		}
	}
	names, _ := os.ReadDir(filepath.Join(dir, SpoolDir))
	for _, n := range names {
		if !keep[n.Name()] {
			_ = os.Remove(filepath.Join(dir, SpoolDir, n.Name()))
		}
	}
	return j, nil
}

// compactLocked drops old entries and rewrites the file with one line per
// id, oldest first; j.mu is held (or j is not shared yet).
func (j *journal) compactLocked(now time.Time) error {
	ids := make([]string, 0, len(j.m))
	for id, e := range j.m {
		if e.state != evStarted && now.Sub(e.at) > j.retention {
			delete(j.m, id)
			continue
		}
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b string) int {
		if c := j.m[a].at.Compare(j.m[b].at); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	var buf bytes.Buffer
	for _, id := range ids {
		b, _ := json.Marshal(j.m[id].event(id))
		buf.Write(append(b, '\n'))
	}
	path := filepath.Join(j.dir, JournalFile)
	if err := atomicfile.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if j.f != nil {
		_ = j.f.Close()
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		j.f = nil
		return fmt.Errorf("journal: %w", err)
	}
	j.f, j.lines = f, len(ids)
	return nil
}

// event is the one line that stands for e in a compacted journal.
func (e *entry) event(id string) event {
	return event{Ev: e.state, ID: id, At: e.at, Kind: e.kind, Result: e.result}
}

func (j *journal) fold(ev event) {
	e := j.m[ev.ID]
	if e == nil {
		e = &entry{}
		j.m[ev.ID] = e
	}
	e.state, e.at = ev.Ev, ev.At
	if ev.Kind != "" {
		e.kind = ev.Kind
	}
	if ev.Result != nil {
		e.result = ev.Result
	}
}

// append writes ev and fsyncs before returning.
func (j *journal) append(ev event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return errors.New("journal: closed")
	}
	if _, err := j.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	j.fold(ev)
	j.lines++
	if j.lines >= 2*max(len(j.m), compactEvery/2) {
		if err := j.compactLocked(ev.At); err != nil {
			return err
		}
	}
	return nil
}

// get returns a copy of id's entry.
func (j *journal) get(id string) (entry, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	e, ok := j.m[id]
	if !ok {
		return entry{}, false
	}
	return *e, true
}

// pending returns the ids not acked, oldest first.
func (j *journal) pending() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	var ids []string
	for id, e := range j.m {
		if e.state != evAcked {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(a, b string) int { return j.m[a].at.Compare(j.m[b].at) })
	return ids
}

func (j *journal) close() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f != nil {
		_ = j.f.Close()
		j.f = nil
	}
}

func (j *journal) spoolPath(id string) string {
	return filepath.Join(j.dir, SpoolDir, spoolName(id))
}

// spoolName is a file name for a task id that the hub chose.
func spoolName(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:16]) + ".log"
}

// spool is a task's log chunks, one protocol.TaskLog JSON per line.
type spool struct {
	path string
	f    *os.File // open while the task runs
	size int64    // bytes of complete lines
	seq  int64    // last seq written
}

// createSpool starts an empty spool.
func createSpool(path string) (*spool, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	return &spool{path: path, f: f}, nil
}

// recoverSpool reads an existing spool, cutting a torn last line. A
// missing file is an empty spool.
func recoverSpool(path string) *spool {
	s := &spool{path: path}
	f, err := os.Open(path)
	if err != nil {
		return s
	}
	defer func() { _ = f.Close() }()
	r := bufio.NewReaderSize(f, 128<<10)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			break
		}
		var l protocol.TaskLog
		if json.Unmarshal(line, &l) != nil || l.Seq != s.seq+1 {
			break
		}
		s.seq = l.Seq
		s.size += int64(len(line))
	}
	if st, err := f.Stat(); err == nil && st.Size() != s.size {
		_ = os.Truncate(path, s.size)
	}
	return s
}

// add appends a chunk with the next seq; it returns the seq.
func (s *spool) add(stream string, step int, data []byte, id string) (int64, error) {
	if s.f == nil {
		return 0, errors.New("spool closed")
	}
	l := protocol.TaskLog{TaskID: id, Seq: s.seq + 1, Stream: stream, Step: step, Data: data}
	b, err := json.Marshal(l)
	if err != nil {
		return 0, err
	}
	b = append(b, '\n')
	if _, err := s.f.Write(b); err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	s.seq++
	s.size += int64(len(b))
	return s.seq, nil
}

// finish fsyncs and closes the spool file.
func (s *spool) finish() error {
	if s.f == nil {
		return nil
	}
	err := s.f.Sync()
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	s.f = nil
	return err
}

// readChunks returns the chunks in [off, size) and the offset after each.
func readChunks(path string, off, size int64, limit int) ([]protocol.TaskLog, []int64, error) {
	if off >= size {
		return nil, nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = f.Close() }()
	r := bufio.NewReaderSize(io.NewSectionReader(f, off, size-off), 128<<10)
	var logs []protocol.TaskLog
	var ends []int64
	for len(logs) < limit {
		line, err := r.ReadBytes('\n')
		if err != nil {
			break
		}
		var l protocol.TaskLog
		if err := json.Unmarshal(line, &l); err != nil {
			return logs, ends, fmt.Errorf("spool %s: %w", filepath.Base(path), err)
		}
		off += int64(len(line))
		logs = append(logs, l)
		ends = append(ends, off)
	}
	return logs, ends, nil
}
