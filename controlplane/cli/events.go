package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// eventsCmd is `devpilot events`: the workspace's event log, and with -f
// the events as they happen.
func eventsCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "events [-f] [--after ID] [--type PATTERN]",
		Short: "show the event log (servers online/offline/failed, tasks, deployments…); -f follows it",
		Long: `events prints the workspace's event log, oldest first: the most recent
--limit events, or every event after --after ID. --type keeps the events
matching a pattern: "*", a family such as "server.*", or one type such as
"task.failed".

With -f it keeps printing events as they happen until Ctrl-C (exit 130); a
dropped connection is resumed after the last event printed, so nothing is
missed or printed twice. Under -o json it prints {"events": [...]}, or with -f
one JSON event per line.`,
		Args: cobra.NoArgs,
		Example: `  devpilot events
  devpilot events -f --type 'server.*'
  devpilot events --after 1200 -o json`}, apiVerb, func(v *verb) runFn {
		fol := v.fs.BoolP("follow", "f", false, "keep printing events as they happen")
		after := v.fs.Int64("after", -1, "only events after this id (default: the most recent --limit)")
		typ := v.fs.String("type", "", `a type pattern: "*", "server.*", "task.failed"…`)
		limit := v.fs.Int("limit", 20, "how many events without --after (1-1000)")
		return func(ctx context.Context, _ []string) error {
			if *limit < 1 || *limit > apitypes.MaxLimit {
				return usagef("--limit must be from 1 to %d", apitypes.MaxLimit)
			}
			cl, err := v.connect()
			if err != nil {
				return err
			}
			q := url.Values{}
			if *typ != "" {
				q.Set("type", *typ)
			}
			if *after >= 0 {
				q.Set("after", strconv.FormatInt(*after, 10))
			} else {
				q.Set("last", strconv.Itoa(*limit))
			}
			if *fol {
				return v.followEvents(ctx, cl, q)
			}
			var list apitypes.EventList
			if *after >= 0 {
				q.Set("limit", strconv.Itoa(*limit))
			}
			raw, err := cl.do(ctx, "GET", v.path("/events?"+q.Encode()), nil, &list)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				rows := [][]string{}
				for _, e := range list.Events {
					rows = append(rows, eventRow(e))
				}
				v.out.table(eventHeader, rows)
			})
		}
	})
}

var eventHeader = []string{"ID", "TIME", "TYPE", "SUBJECT", "SUMMARY"}

func eventRow(e apitypes.Event) []string {
	t := e.Time
	return []string{strconv.FormatInt(e.ID, 10), ts(&t), e.Type, e.Subject, eventSummary(e)}
}

// eventSummary is one line about what happened, from the event's data.
func eventSummary(e apitypes.Event) string {
	var d map[string]any
	_ = json.Unmarshal(e.Data, &d)
	str := func(k string) string {
		if s, ok := d[k].(string); ok {
			return s
		}
		return ""
	}
	var b strings.Builder
	switch fam, _, _ := strings.Cut(e.Type, "."); fam {
	case "server":
		b.WriteString(str("name"))
		if p := str("previous_state"); p != "" {
			fmt.Fprintf(&b, ": %s → %s", p, str("state"))
		} else if s := str("state"); s != "" {
			fmt.Fprintf(&b, ": %s", s)
		}
		if r := str("state_reason"); r != "" {
			fmt.Fprintf(&b, " (%s)", r)
		}
		if s := str("step"); s != "" {
			fmt.Fprintf(&b, " at step %s", s)
		}
		if s := str("error"); s != "" {
			fmt.Fprintf(&b, ": %s", s)
		}
		return b.String()
	case "task":
		fmt.Fprintf(&b, "%s on %s", str("kind"), str("server_id"))
		if c, ok := d["exit_code"].(float64); ok {
			fmt.Fprintf(&b, ", exit %d", int(c))
		}
		if r := str("reason"); r != "" {
			fmt.Fprintf(&b, " (%s)", r)
		}
		return b.String()
	}
	for _, k := range sortedKeys(d) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%v", k, d[k])
	}
	return b.String()
}

// followEvents prints events as the stream delivers them, resuming after
// the last one printed when the connection drops; Ctrl-C exits 130.
func (v *verb) followEvents(ctx context.Context, cl *client, q url.Values) error {
	stream := &http.Client{Transport: cl.http.Transport} // no overall timeout: it runs until Ctrl-C
	q.Set("follow", "1")
	last := int64(-1)
	header := !v.json() && (v.out == nil || !v.out.noHeader)
	failures := 0
	for {
		got, err := v.followEventsOnce(ctx, stream, cl, q, last, &header)
		if ctx.Err() != nil {
			return &exitError{code: ExitInterrupted}
		}
		if got > last {
			last, failures = got, 0
		}
		var ae *APIError
		if errors.As(err, &ae) && ae.Status < 500 {
			return err
		}
		failures++
		wait := time.Duration(min(failures, 10)) * time.Second
		fmt.Fprintf(v.env.Stderr, "# event stream interrupted (%v); resuming in %s\n", err, wait)
		select {
		case <-ctx.Done():
			return &exitError{code: ExitInterrupted}
		case <-time.After(wait):
		}
	}
}

// followEventsOnce reads one connection's events; it returns the id of
// the last one printed (or last, if none).
func (v *verb) followEventsOnce(ctx context.Context, stream *http.Client, cl *client, q url.Values, last int64, header *bool) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", cl.base+v.path("/events?"+q.Encode()), nil)
	if err != nil {
		return last, err
	}
	req.Header.Set("Authorization", "Bearer "+cl.token.Reveal())
	req.Header.Set("Accept", "text/event-stream")
	if last >= 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(last, 10))
	}
	resp, err := stream.Do(req)
	if err != nil {
		return last, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var eb struct {
			Error APIError `json:"error"`
		}
		if json.Unmarshal(raw, &eb) != nil || eb.Error.Code == "" {
			return last, &APIError{Status: resp.StatusCode, Code: "http_error", Message: resp.Status}
		}
		eb.Error.Status = resp.StatusCode
		return last, &eb.Error
	}
	if *header {
		fmt.Fprintf(v.env.Stdout, "%-8s %-20s %-22s %-22s %s\n", "ID", "TIME", "TYPE", "SUBJECT", "SUMMARY")
		*header = false
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var data bytes.Buffer
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data.Len() > 0 {
				var e apitypes.Event
				if err := json.Unmarshal(data.Bytes(), &e); err != nil {
					return last, fmt.Errorf("decode event: %w", err)
				}
				if err := v.printEvent(e, data.Bytes()); err != nil {
					return last, err
				}
				last = e.ID
			}
			data.Reset()
		case strings.HasPrefix(line, "data:"):
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
	if err := sc.Err(); err != nil {
		return last, err
	}
	return last, io.ErrUnexpectedEOF
}

func (v *verb) printEvent(e apitypes.Event, raw []byte) error {
	switch {
	case v.out != nil && v.out.format == "json":
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return err
		}
		buf.WriteByte('\n')
		_, err := v.env.Stdout.Write(buf.Bytes())
		return err
	case v.out != nil && v.out.format == "yaml":
		fmt.Fprintln(v.env.Stdout, "---")
		return v.out.raw(raw)
	}
	r := eventRow(e)
	_, err := fmt.Fprintf(v.env.Stdout, "%-8s %-20s %-22s %-22s %s\n", r[0], r[1], r[2], r[3], r[4])
	return err
}
