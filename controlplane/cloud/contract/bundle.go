package contract

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	yaml "github.com/pb33f/go-yaml"
)

// bundler turns a spec split over many YAML files into one self-contained
// document. Every $ref is resolved relative to the file that contains it (the
// rule libopenapi's rolodex gets wrong for DigitalOcean's nested references, see
// API-NOTES §11) and its target is inlined. A reference that leads back into
// itself (a cycle) is hoisted to components/schemas and referenced locally.
//
// The bundler works on plain decoded values (map[string]any, []any, scalars),
// which loses YAML key order; that does not matter for validation.
type bundler struct {
	files    map[string]any    // absolute path -> decoded document
	done     map[string]any    // ref key -> resolved value (shared, never mutated)
	active   map[string]bool   // ref keys being resolved (cycle detection)
	cyclic   map[string]string // ref key -> component name
	comps    map[string]any    // hoisted component name -> schema
	refCount int               // references resolved, for the load report
}

func newBundler() *bundler {
	return &bundler{
		files:  map[string]any{},
		done:   map[string]any{},
		active: map[string]bool{},
		cyclic: map[string]string{},
		comps:  map[string]any{},
	}
}

// bundleStats describes a bundle, for tests and load reports.
type bundleStats struct {
	Refs      int // references resolved
	Cycles    int // references hoisted to components/schemas as cycles
	Leftover  int // $refs left that do not point at a hoisted cycle (must be 0)
	JSONBytes int
}

// bundleFile reads the entry document at path and returns it as JSON with every
// reference resolved.
func bundleFile(path string) ([]byte, bundleStats, error) {
	js, st, err := bundleFileRaw(path)
	if err != nil {
		return nil, st, err
	}
	st.JSONBytes = len(js)
	return js, st, nil
}

func bundleFileRaw(path string) ([]byte, bundleStats, error) {
	var st bundleStats
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, st, fmt.Errorf("bundle: %w", err)
	}
	b := newBundler()
	root, err := b.load(abs)
	if err != nil {
		return nil, st, err
	}
	out, err := b.resolve(root, abs, "")
	if err != nil {
		return nil, st, err
	}
	doc, ok := out.(map[string]any)
	if !ok {
		return nil, st, fmt.Errorf("bundle: %s is not a mapping", path)
	}
	if len(b.comps) > 0 {
		comps, _ := doc["components"].(map[string]any)
		if comps == nil {
			comps = map[string]any{}
		} else {
			comps = shallowCopy(comps)
		}
		schemas, _ := comps["schemas"].(map[string]any)
		if schemas == nil {
			schemas = map[string]any{}
		} else {
			schemas = shallowCopy(schemas)
		}
		for name, s := range b.comps {
			schemas[name] = s
		}
		comps["schemas"] = schemas
		doc = shallowCopy(doc)
		doc["components"] = comps
	}
	st.Refs, st.Cycles, st.Leftover = b.refCount, len(b.comps), leftoverRefs(doc)
	if st.Leftover > 0 {
		return nil, st, fmt.Errorf("bundle: %d references left unresolved", st.Leftover)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		return nil, st, fmt.Errorf("bundle: encode: %w", err)
	}
	return js, st, nil
}

// leftoverRefs counts $refs other than those to hoisted cycles.
func leftoverRefs(v any) int {
	n := 0
	switch t := v.(type) {
	case map[string]any:
		if r, ok := t["$ref"].(string); ok && !strings.HasPrefix(r, "#/components/schemas/bundled.") {
			n++
		}
		for _, e := range t {
			n += leftoverRefs(e)
		}
	case []any:
		for _, e := range t {
			n += leftoverRefs(e)
		}
	}
	return n
}

func shallowCopy(m map[string]any) map[string]any {
	c := make(map[string]any, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func (b *bundler) load(abs string) (any, error) {
	if d, ok := b.files[abs]; ok {
		return d, nil
	}
	raw, err := os.ReadFile(abs)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	var v any
	if err := yaml.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("bundle: parse %s: %w", abs, err)
	}
	v = normalize(v)
	b.files[abs] = v
	return v, nil
}

// normalize converts YAML-decoded values into JSON-compatible ones
// (map[any]any keys such as response codes become strings).
func normalize(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = normalize(e)
		}
		return t
	case map[any]any:
		m := make(map[string]any, len(t))
		for k, e := range t {
			m[fmt.Sprint(k)] = normalize(e)
		}
		return m
	case []any:
		for i, e := range t {
			t[i] = normalize(e)
		}
		return t
	default:
		return v
	}
}

// nameMaps are keys whose value maps user-chosen names (a property called
// "example" or "description") to objects; their children are never stripped.
var nameMaps = map[string]bool{
	"properties": true, "patternProperties": true, "schemas": true, "paths": true,
	"responses": true, "headers": true, "content": true, "securitySchemes": true,
	"requestBodies": true, "links": true, "callbacks": true, "mapping": true,
	"variables": true, "definitions": true, "$defs": true, "encoding": true,
}

// docOnly reports whether key (inside a map that is not a name map) holds only
// documentation, which validation never reads. Dropping it shrinks the
// DigitalOcean bundle severalfold and with it parse, hash and compile time.
func docOnly(key string, v any) bool {
	switch key {
	case "description", "summary":
		_, isStr := v.(string)
		return isStr
	case "example", "x-codeSamples":
		return true
	case "examples":
		_, isMap := v.(map[string]any)
		return isMap // OpenAPI example objects; a JSON Schema "examples" array is kept
	}
	return false
}

// resolve returns v with all references inlined and documentation-only keys
// dropped; file is the absolute path of the document v came from (the base for
// relative references) and parent the key v sits under.
func (b *bundler) resolve(v any, file, parent string) (any, error) {
	switch t := v.(type) {
	case map[string]any:
		if ref, ok := t["$ref"].(string); ok {
			return b.resolveRef(ref, file, parent)
		}
		out := make(map[string]any, len(t))
		for k, e := range t {
			if !nameMaps[parent] && docOnly(k, e) {
				continue
			}
			r, err := b.resolve(e, file, k)
			if err != nil {
				return nil, err
			}
			out[k] = r
		}
		return out, nil
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			r, err := b.resolve(e, file, "")
			if err != nil {
				return nil, err
			}
			out[i] = r
		}
		return out, nil
	default:
		return v, nil
	}
}

var nonName = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

func (b *bundler) resolveRef(ref, file, parent string) (any, error) {
	b.refCount++
	target, frag, _ := strings.Cut(ref, "#")
	if strings.Contains(target, "://") {
		return nil, fmt.Errorf("bundle: remote reference %q in %s is not supported", ref, file)
	}
	tfile := file
	if target != "" {
		p, err := url.PathUnescape(target)
		if err != nil {
			p = target
		}
		tfile = filepath.Clean(filepath.Join(filepath.Dir(file), p))
	}
	key := tfile + "#" + frag
	if nameMaps[parent] {
		key += "#names" // the same target resolved as a name map is stripped differently
	}
	if name, ok := b.cyclic[key]; ok && b.active[key] {
		return map[string]any{"$ref": "#/components/schemas/" + name}, nil
	}
	if d, ok := b.done[key]; ok {
		return d, nil
	}
	if b.active[key] {
		name := "bundled." + strings.Trim(nonName.ReplaceAllString(strings.TrimSuffix(filepath.Base(tfile), filepath.Ext(tfile))+"."+frag, "_"), "_.")
		for n := 2; b.nameTaken(name); n++ {
			name = name + "_" + strconv.Itoa(n)
		}
		b.cyclic[key] = name
		return map[string]any{"$ref": "#/components/schemas/" + name}, nil
	}
	doc, err := b.load(tfile)
	if err != nil {
		return nil, fmt.Errorf("bundle: %s: $ref %q: %w", file, ref, err)
	}
	node, err := pointer(doc, frag)
	if err != nil {
		return nil, fmt.Errorf("bundle: %s: $ref %q: %w", file, ref, err)
	}
	b.active[key] = true
	res, err := b.resolve(node, tfile, parent)
	delete(b.active, key)
	if err != nil {
		return nil, err
	}
	if name, ok := b.cyclic[key]; ok {
		b.comps[name] = res
		res = map[string]any{"$ref": "#/components/schemas/" + name}
	}
	b.done[key] = res
	return res, nil
}

func (b *bundler) nameTaken(name string) bool {
	for _, n := range b.cyclic {
		if n == name {
			return true
		}
	}
	return false
}

// pointer walks a JSON pointer (RFC 6901) such as "/components/schemas/x".
func pointer(doc any, frag string) (any, error) {
	if frag == "" || frag == "/" {
		return doc, nil
	}
	if !strings.HasPrefix(frag, "/") {
		return nil, fmt.Errorf("unsupported fragment %q", frag)
	}
	cur := doc
	for _, seg := range strings.Split(frag[1:], "/") {
		if s, err := url.PathUnescape(seg); err == nil {
			seg = s
		}
		seg = strings.ReplaceAll(strings.ReplaceAll(seg, "~1", "/"), "~0", "~")
		switch t := cur.(type) {
		case map[string]any:
			n, ok := t[seg]
			if !ok {
				return nil, fmt.Errorf("no %q in %q (keys: %s)", seg, frag, keysOf(t))
			}
			cur = n
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(t) {
				return nil, fmt.Errorf("bad index %q in %q", seg, frag)
			}
			cur = t[i]
		default:
			return nil, fmt.Errorf("cannot descend into %q of %q", seg, frag)
		}
	}
	return cur, nil
}

func keysOf(m map[string]any) string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	if len(ks) > 8 {
		ks = append(ks[:8], "…")
	}
	return strings.Join(ks, ",")
}
