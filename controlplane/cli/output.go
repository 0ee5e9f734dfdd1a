package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// Output formats of -o.
var outputFormats = []string{"table", "json", "yaml"}

// output prints the API's JSON as JSON or YAML, or tables and fields for
// people. Tables take --format COL,COL (columns by header, any case, _ for
// a space) and --no-header.
type output struct {
	format   string
	json     bool // --json, an alias of -o json
	columns  string
	noHeader bool
	color    bool // stdout is a terminal, NO_COLOR unset and TERM not dumb
	w        io.Writer
	err      error // a --format column that does not exist
}

func outFlags(fs *pflag.FlagSet, env Env) *output {
	o := &output{w: env.Stdout, color: env.Color && env.Getenv("NO_COLOR") == "" && env.Getenv("TERM") != "dumb"}
	fs.StringVarP(&o.format, "output", "o", "table", "output format: "+strings.Join(outputFormats, ", "))
	fs.BoolVar(&o.json, "json", false, "print JSON for scripts (same as -o json)")
	fs.StringVar(&o.columns, "format", "", "table columns to print, e.g. --format ID,NAME,STATE")
	fs.BoolVar(&o.noHeader, "no-header", false, "tables without their header line")
	return o
}

// check validates the output flags once they are parsed.
func (o *output) check() error {
	if o.json {
		o.format = "json"
	}
	if !slices.Contains(outputFormats, o.format) {
		return usagef("-o %q: use one of %s", o.format, strings.Join(outputFormats, ", "))
	}
	o.json = o.format == "json" // what code from before cobra tests (v.out.json)
	return nil
}

// raw prints a JSON document from the API as -o asks.
func (o *output) raw(raw []byte) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		raw = []byte("{}")
	}
	if o.format == "yaml" {
		// JSON allows a raw NEL, LS or PS in a string; YAML reads them as
		// line breaks and folds them to a space. Escaped, they survive (in
		// JSON they can only be inside strings, and UTF-8 never has their
		// bytes inside another character).
		raw = []byte(yamlLineBreaks.Replace(string(raw)))
		var n yaml.Node
		if err := yaml.Unmarshal(raw, &n); err != nil {
			return fmt.Errorf("convert to YAML: %w", err)
		}
		blockStyle(&n)
		b, err := yaml.Marshal(&n)
		if err != nil {
			return fmt.Errorf("convert to YAML: %w", err)
		}
		_, err = o.w.Write(b)
		return err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return fmt.Errorf("the API's answer is not JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err := o.w.Write(buf.Bytes())
	return err
}

var yamlLineBreaks = strings.NewReplacer("\u0085", `\u0085`, "\u2028", `\u2028`, "\u2029", `\u2029`)

// blockStyle drops the flow style JSON parses as, so YAML prints as YAML;
// strings that would read as another type stay quoted (their tag is !!str).
// A key given twice keeps its last value, as JSON decoders do (YAML
// refuses duplicates).
func blockStyle(n *yaml.Node) {
	if n.Kind == yaml.MappingNode {
		last := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			last[n.Content[i].Value] = i
		}
		kept := n.Content[:0]
		for i := 0; i+1 < len(n.Content); i += 2 {
			if last[n.Content[i].Value] == i {
				kept = append(kept, n.Content[i], n.Content[i+1])
			}
		}
		n.Content = kept
	}
	if n.Kind != yaml.ScalarNode {
		n.Style = 0
	} else if n.Tag != "!!str" {
		n.Style = 0
	} else {
		n.Style &^= yaml.FlowStyle
		// Strings with a line break stay double-quoted: yaml.v3 writes
		// "\n" as a literal block that reads back as "", and plain NEL
		// (U+0085) reads back as a space (a YAML 1.1 line break).
		if n.Style == yaml.DoubleQuotedStyle && !strings.ContainsAny(n.Value, "\n\r\u0085\u2028\u2029") {
			n.Style = 0
		}
	}
	for _, c := range n.Content {
		blockStyle(c)
	}
}

func normCol(s string) string {
	return strings.ToUpper(strings.NewReplacer("_", " ", "-", " ").Replace(strings.TrimSpace(s)))
}

func (o *output) table(header []string, rows [][]string) {
	cols := make([]int, len(header))
	for i := range header {
		cols[i] = i
	}
	if o.columns != "" {
		cols = cols[:0]
		for _, c := range strings.Split(o.columns, ",") {
			i := slices.IndexFunc(header, func(h string) bool { return normCol(h) == normCol(c) })
			if i < 0 {
				valid := make([]string, len(header))
				for j, h := range header {
					valid[j] = strings.ReplaceAll(h, " ", "_")
				}
				o.err = usagef("--format: no column %q here (columns: %s)", c, strings.Join(valid, ","))
				return
			}
			cols = append(cols, i)
		}
	}
	pick := func(r []string) string {
		out := make([]string, len(cols))
		for i, c := range cols {
			if c < len(r) {
				out[i] = r[c]
			}
		}
		return strings.Join(out, "\t")
	}
	tw := tabwriter.NewWriter(o.w, 0, 4, 2, ' ', 0)
	if !o.noHeader {
		fmt.Fprintln(tw, pick(header))
	}
	for _, r := range rows {
		fmt.Fprintln(tw, pick(r))
	}
	_ = tw.Flush()
}

// fields prints key: value lines in the given order.
func (o *output) fields(kv [][2]string) {
	tw := tabwriter.NewWriter(o.w, 0, 4, 1, ' ', 0)
	for _, f := range kv {
		fmt.Fprintf(tw, "%s:\t%s\n", f[0], f[1])
	}
	_ = tw.Flush()
}

// paint colours a state for a terminal: green when good, red when failed,
// yellow on the way. Every state gets a code of the same length so table
// columns stay aligned; nothing at all without colour.
func (o *output) paint(state string) string {
	if o == nil || !o.color {
		return state
	}
	code := "39"
	switch state {
	case "online", "succeeded", "valid", "done", "active":
		code = "32"
	case "failed", "lost", "invalid", "canceled", "timed_out", "agent_offline":
		code = "31"
	case "provisioning", "installing", "queued", "running", "sent", "deleting", "stopped", "offline":
		code = "33"
	}
	return "\x1b[" + code + "m" + state + "\x1b[0m"
}
