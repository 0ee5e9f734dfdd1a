// Package contract holds the in-repo cloud simulators to the providers'
// official OpenAPI specifications (DigitalOcean's split-YAML spec and Vultr's
// single JSON spec, see ../shared/specs/SOURCES.md).
//
// A simulator test wraps its handler with Spec.Middleware; every exchange that
// passes through is checked against the spec (route, request parameters and
// body, response status and body) and the findings land in a Recorder whose
// AssertClean fails the test. Places where the real API or SDK is known to
// disagree with the spec are listed, narrowly, in exceptions.go.
package contract

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/cache"
	"github.com/pb33f/libopenapi-validator/config"
	"github.com/pb33f/libopenapi-validator/router"
	"github.com/pb33f/libopenapi/datamodel"
	v3 "github.com/pb33f/libopenapi/datamodel/high/v3"
)

// EnvSpecsDir names the environment variable that points at the spec folder
// (the one holding digitalocean/ and vultr/).
const EnvSpecsDir = "DEVPILOT_SPECS_DIR"

// Paths of the entry documents inside the spec folder.
const (
	doEntry    = "digitalocean/specification/DigitalOcean-public.v2.yaml"
	vultrEntry = "vultr/vultr-openapi-v2.json"
)

// Provider names used in Spec and in violation messages.
const (
	ProviderDigitalOcean = "digitalocean"
	ProviderVultr        = "vultr"
)

// SpecsDir finds the spec folder: $DEVPILOT_SPECS_DIR if set, else walk up
// from the working directory to the directory holding go.mod and use
// <that>/../shared/specs. It returns an error if the folder or either entry
// document is missing.
func SpecsDir() (string, error) {
	dir := os.Getenv(EnvSpecsDir)
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return "", fmt.Errorf("specs dir: %w", err)
		}
		root := wd
		for {
			if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
				break
			}
			parent := filepath.Dir(root)
			if parent == root {
				return "", fmt.Errorf("specs dir: no go.mod above %s and $%s is not set", wd, EnvSpecsDir)
			}
			root = parent
		}
		dir = filepath.Join(root, "..", "shared", "specs")
	}
	dir = filepath.Clean(dir)
	for _, f := range []string{doEntry, vultrEntry} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return "", fmt.Errorf("specs dir: %s has no %s", dir, f)
		}
	}
	return dir, nil
}

// Require returns SpecsDir or, when the specs are missing, fails the test if
// $CI is "true" (CI always has them) and otherwise skips it with a message
// saying how to point DEVPILOT_SPECS_DIR at them.
func Require(t testing.TB) string {
	t.Helper()
	dir, err := SpecsDir()
	if err == nil {
		return dir
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("contract: OpenAPI specs not found (%v); CI must provide them", err)
	}
	t.Skipf("contract test skipped: OpenAPI specs not found (%v); "+
		"set %s to the folder holding digitalocean/specification/ and vultr/ (normally <repo>/../shared/specs)",
		err, EnvSpecsDir)
	return ""
}

// Spec is one provider's loaded OpenAPI document with its validator and the
// exceptions that apply to it. It is safe for concurrent use.
type Spec struct {
	provider   string
	basePath   string // server path prefix the spec's paths live under ("" or "/v2")
	doc        *v3.Document
	mu         sync.Mutex // libopenapi-validator is not race-free when it compiles schemas on first use
	validator  validator.Validator
	router     router.Router
	exceptions []Exception
	genericErr func(status int) bool
	errorShape func(status int, body []byte) []string

	bundle bundleStats // DigitalOcean only

	// LoadTime is how long bundling, parsing and building the validator took.
	LoadTime time.Duration
}

// PathCount returns how many paths the loaded spec has.
func (s *Spec) PathCount() int { return s.doc.Paths.PathItems.Len() }

type loaded struct {
	once sync.Once
	spec *Spec
	err  error
}

var doSpec, vultrSpec loaded

// DigitalOcean returns the DigitalOcean spec, loaded once per process. It calls
// Require (so it skips or fails when the specs are missing) and fails the test
// if the spec cannot be loaded.
func DigitalOcean(t testing.TB) *Spec {
	t.Helper()
	dir := Require(t)
	doSpec.once.Do(func() { doSpec.spec, doSpec.err = LoadDigitalOcean(dir) })
	if doSpec.err != nil {
		t.Fatalf("contract: %v", doSpec.err)
	}
	return doSpec.spec
}

// Vultr returns the Vultr spec, loaded once per process; see DigitalOcean.
func Vultr(t testing.TB) *Spec {
	t.Helper()
	dir := Require(t)
	vultrSpec.once.Do(func() { vultrSpec.spec, vultrSpec.err = LoadVultr(dir) })
	if vultrSpec.err != nil {
		t.Fatalf("contract: %v", vultrSpec.err)
	}
	return vultrSpec.spec
}

// LoadDigitalOcean loads the DigitalOcean spec from specsDir without caching.
// The split YAML is bundled in memory first (every relative $ref resolved from
// the file that holds it), so libopenapi never touches the file system.
func LoadDigitalOcean(specsDir string) (*Spec, error) {
	start := time.Now()
	js, st, err := bundleFile(filepath.Join(specsDir, doEntry))
	if err != nil {
		return nil, fmt.Errorf("load digitalocean spec: %w", err)
	}
	s, err := build(ProviderDigitalOcean, js)
	if err != nil {
		return nil, fmt.Errorf("load digitalocean spec: %w", err)
	}
	s.genericErr = doGenericStatus
	s.errorShape = doErrorShape
	s.exceptions = exceptionsFor(ProviderDigitalOcean)
	s.bundle = st
	s.LoadTime = time.Since(start)
	return s, nil
}

// LoadVultr loads the Vultr spec from specsDir without caching.
func LoadVultr(specsDir string) (*Spec, error) {
	start := time.Now()
	js, err := os.ReadFile(filepath.Join(specsDir, vultrEntry))
	if err != nil {
		return nil, fmt.Errorf("load vultr spec: %w", err)
	}
	s, err := build(ProviderVultr, js)
	if err != nil {
		return nil, fmt.Errorf("load vultr spec: %w", err)
	}
	s.genericErr = vultrGenericStatus
	s.errorShape = vultrErrorShape
	s.exceptions = exceptionsFor(ProviderVultr)
	s.LoadTime = time.Since(start)
	return s, nil
}

// errorLog collects error-level records libopenapi logs while loading, so a
// load that "succeeds" while dropping references is treated as a failure.
type errorLog struct {
	mu   sync.Mutex
	msgs []string
}

func (e *errorLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelError }
func (e *errorLog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	e.mu.Lock()
	e.msgs = append(e.msgs, b.String())
	e.mu.Unlock()
	return nil
}
func (e *errorLog) WithAttrs([]slog.Attr) slog.Handler { return e }
func (e *errorLog) WithGroup(string) slog.Handler      { return e }

func build(provider string, spec []byte) (*Spec, error) {
	logs := &errorLog{}
	cfg := datamodel.NewDocumentConfiguration()
	cfg.Logger = slog.New(logs)
	doc, err := libopenapi.NewDocumentWithConfiguration(spec, cfg)
	if err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	model, err := doc.BuildV3Model()
	if err != nil {
		return nil, fmt.Errorf("build model: %w", err)
	}
	if model == nil || model.Model.Paths == nil || model.Model.Paths.PathItems.Len() == 0 {
		return nil, errors.New("build model: no paths")
	}
	if len(logs.msgs) > 0 {
		return nil, fmt.Errorf("build model: libopenapi reported %d errors, first: %s", len(logs.msgs), logs.msgs[0])
	}
	m := &model.Model

	// The validator compiles every schema of every operation up front when
	// given a schema cache (2.5 s for DigitalOcean's 445 paths). The lazy cache
	// claims to hold everything while the validator is built, which skips that
	// warm-up, and then behaves as a normal cache: schemas compile on first use.
	lc := &lazyCache{inner: cache.NewDefaultCache()}
	v := validator.NewValidatorFromV3Model(m,
		config.WithSchemaCache(lc),
		config.WithoutSecurityValidation(),
		config.WithRegexCache(&sync.Map{}),
	)
	lc.armed.Store(true)

	s := &Spec{
		provider:  provider,
		doc:       m,
		validator: v,
		router:    router.NewRouter(m, router.WithPathOnlyMatching()),
	}
	if len(m.Servers) > 0 {
		s.basePath = serverBasePath(m.Servers[0].URL)
	}
	return s, nil
}

func serverBasePath(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		u = u[i+3:]
		if j := strings.Index(u, "/"); j >= 0 {
			return strings.TrimRight(u[j:], "/")
		}
		return ""
	}
	return strings.TrimRight(u, "/")
}

// lazyCache is a cache.SchemaCache that pretends to be full until armed; see build.
type lazyCache struct {
	armed atomic.Bool
	inner cache.SchemaCache
}

var placeholder = &cache.SchemaCacheEntry{}

func (c *lazyCache) Load(key uint64) (*cache.SchemaCacheEntry, bool) {
	if !c.armed.Load() {
		return placeholder, true
	}
	return c.inner.Load(key)
}

func (c *lazyCache) Store(key uint64, value *cache.SchemaCacheEntry) {
	if c.armed.Load() {
		c.inner.Store(key, value)
	}
}

func (c *lazyCache) Range(f func(key uint64, value *cache.SchemaCacheEntry) bool) {
	c.inner.Range(f)
}
