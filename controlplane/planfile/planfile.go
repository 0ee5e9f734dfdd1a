// Package planfile reads deployment plans written in YAML, the format of
// `devpilot deploy -f plan.yaml` and of the console's task form, into the
// API's deployment request.
package planfile

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// File is a deployment plan in YAML (see controlplane/cli/testdata/plan.yaml). A file
// step may give its content inline (content) or from a local file
// (from, relative to the plan file) instead of content_base64.
type File struct {
	Servers     []string `yaml:"servers"`
	Tag         string   `yaml:"tag"`
	MaxParallel int      `yaml:"max_parallel"`
	DeadlineS   int      `yaml:"deadline_s"`
	Steps       []Step   `yaml:"steps"`
}

// Step is one step of a plan file.
type Step struct {
	Name           string            `yaml:"name"`
	Kind           string            `yaml:"kind"`
	Argv           []string          `yaml:"argv"`
	Env            map[string]string `yaml:"env"`
	Dir            string            `yaml:"dir"`
	User           string            `yaml:"user"`
	TimeoutS       int               `yaml:"timeout_s"`
	MaxOutputBytes int64             `yaml:"max_output_bytes"`
	Unit           string            `yaml:"unit"`
	Action         string            `yaml:"action"`
	Path           string            `yaml:"path"`
	Content        *string           `yaml:"content"`
	From           string            `yaml:"from"`
	ContentBase64  string            `yaml:"content_base64"`
	Mode           string            `yaml:"mode"`
	Owner          string            `yaml:"owner"`
	Group          string            `yaml:"group"`
	Ports          []int             `yaml:"ports"` // firewall: exactly the server's new inbound ports
}

// Parse turns a plan file's bytes (from the file called name) into a
// deployment request; readFrom reads a step's from: file.
func Parse(b []byte, name string, readFrom func(from string) ([]byte, error)) (apitypes.CreateDeployment, error) {
	var req apitypes.CreateDeployment
	var pf File
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&pf); err != nil {
		return req, fmt.Errorf("plan %s: %w", name, err)
	}
	if err := plainText(pf); err != nil {
		return req, fmt.Errorf("plan %s: %w", name, err)
	}
	req = apitypes.CreateDeployment{Servers: pf.Servers, Tag: pf.Tag, MaxParallel: pf.MaxParallel, DeadlineS: pf.DeadlineS}
	for i, s := range pf.Steps {
		st := apitypes.TaskStep{Name: s.Name, Kind: s.Kind, StepFields: apitypes.StepFields{Argv: s.Argv, Env: s.Env, Dir: s.Dir, User: s.User,
			TimeoutS: s.TimeoutS, MaxOutputBytes: s.MaxOutputBytes, Unit: s.Unit, Action: s.Action, Path: s.Path,
			ContentBase64: s.ContentBase64, Mode: s.Mode, Owner: s.Owner, Group: s.Group}, Ports: s.Ports}
		sources := 0
		if s.Content != nil {
			sources++
			st.ContentBase64 = base64.StdEncoding.EncodeToString([]byte(*s.Content))
		}
		if s.From != "" {
			sources++
			data, err := readFrom(s.From)
			if err != nil {
				return req, fmt.Errorf("plan step %d (%s): %w", i+1, s.Name, err)
			}
			st.ContentBase64 = base64.StdEncoding.EncodeToString(data)
		}
		if s.ContentBase64 != "" {
			sources++
		}
		if sources > 1 {
			return req, fmt.Errorf("plan step %d (%s): give one of content, from and content_base64", i+1, s.Name)
		}
		req.Plan.Steps = append(req.Plan.Steps, st)
	}
	return req, nil
}

// plainText refuses a plan whose values are not valid UTF-8 (YAML's
// !!binary can make them so): JSON would turn such bytes into U+FFFD, so
// the servers would get something other than the plan says. Binary file
// content goes in content (sent as base64) or content_base64.
func plainText(pf File) error {
	bad := func(where string, vs ...string) error {
		for _, v := range vs {
			if !utf8.ValidString(v) {
				return fmt.Errorf("%s is not valid UTF-8 text (binary file content goes in content or content_base64)", where)
			}
		}
		return nil
	}
	if err := bad("tag", pf.Tag); err != nil {
		return err
	}
	if err := bad("servers", pf.Servers...); err != nil {
		return err
	}
	for i, s := range pf.Steps {
		where := fmt.Sprintf("step %d (%s)", i+1, strings.ToValidUTF8(s.Name, "?"))
		if err := bad(where+": argv", s.Argv...); err != nil {
			return err
		}
		for k, v := range s.Env {
			if err := bad(where+": env", k, v); err != nil {
				return err
			}
		}
		if err := bad(where, s.Name, s.Kind, s.Dir, s.User, s.Unit, s.Action, s.Path, s.From, s.ContentBase64, s.Mode, s.Owner, s.Group); err != nil {
			return err
		}
	}
	return nil
}
