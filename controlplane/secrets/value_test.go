package secrets

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

const canary = "canary-PLAINTEXT-7f3a9c1e" // 25 chars, so Hint is non-empty

// assertNoCanary fails if out contains the canary in clear, hex or base64.
func assertNoCanary(t *testing.T, what, out string) {
	t.Helper()
	forms := []string{
		canary,
		"PLAINTEXT-7f3a9c",
		hex.EncodeToString([]byte(canary)),
		strings.ToUpper(hex.EncodeToString([]byte(canary))),
		base64.StdEncoding.EncodeToString([]byte(canary)),
	}
	for _, f := range forms {
		if strings.Contains(out, f) {
			t.Errorf("%s leaks the secret (%q): %s", what, f, out)
		}
	}
}

type exported struct {
	Name  string
	Token Value
}

type unexported struct {
	name  string
	token Value
}

func TestValueRevealAndHint(t *testing.T) {
	t.Parallel()
	v := New(canary)
	if v.Reveal() != canary {
		t.Fatalf("Reveal = %q", v.Reveal())
	}
	if v.IsZero() || !New("").IsZero() || !(Value{}).IsZero() {
		t.Fatal("IsZero wrong")
	}
	if got := v.Hint(); got != canary[len(canary)-4:] {
		t.Fatalf("Hint = %q", got)
	}
	if New("short").Hint() != "" {
		t.Fatal("short secrets must give no hint")
	}
	if !v.Equal(New(canary)) || v.Equal(New(canary+"x")) || !(Value{}).Equal(New("")) {
		t.Fatal("Equal wrong")
	}
}

func TestValueRedactedInFmt(t *testing.T) {
	t.Parallel()
	v := New(canary)
	args := map[string]any{
		"value":      v,
		"pointer":    &v,
		"exported":   exported{Name: "n", Token: v},
		"exportedp":  &exported{Name: "n", Token: v},
		"unexported": unexported{name: "n", token: v},
		"slice":      []Value{v, v},
		"map":        map[string]Value{"k": v},
		"any":        []any{v},
	}
	verbs := []string{"%v", "%+v", "%s", "%q", "%x", "%X", "%#v", "%d", "%t", "%10.3s", "%T", "%p"}
	for name, arg := range args {
		for _, verb := range verbs {
			out := fmt.Sprintf(verb, arg)
			assertNoCanary(t, name+" "+verb, out)
		}
	}
	if got := fmt.Sprintf("%v|%s|%q|%#v", v, v, v, v); got != `[REDACTED]|[REDACTED]|"[REDACTED]"|[REDACTED]` {
		t.Errorf("fmt = %s", got)
	}
	if got := fmt.Sprintf("%+v", exported{Name: "n", Token: v}); got != "{Name:n Token:[REDACTED]}" {
		t.Errorf("struct = %s", got)
	}
	err := fmt.Errorf("login failed with %v", v)
	assertNoCanary(t, "error", err.Error())
}

func TestValueRedactedInJSON(t *testing.T) {
	t.Parallel()
	v := New(canary)
	cases := map[string]any{
		"value":      v,
		"pointer":    &v,
		"exported":   exported{Name: "n", Token: v},
		"unexported": unexported{name: "n", token: v},
		"map":        map[string]Value{"k": v},
		"slice":      []Value{v},
	}
	for name, c := range cases {
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if name == "unexported" {
			if string(b) != "{}" {
				t.Errorf("unexported: %s", b)
			}
			continue
		}
		assertNoCanary(t, "json "+name, string(b))
	}
	b, _ := json.Marshal(exported{Name: "n", Token: v})
	if string(b) != `{"Name":"n","Token":"[REDACTED]"}` {
		t.Errorf("json struct = %s", b)
	}
	txt, _ := v.MarshalText()
	assertNoCanary(t, "text", string(txt))
}

func TestValueRedactedInZap(t *testing.T) {
	t.Parallel()
	v := New(canary)
	for _, enc := range []struct {
		name string
		enc  zapcore.Encoder
	}{
		{"json", zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())},
		{"console", zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())},
	} {
		var buf bytes.Buffer
		log := zap.New(zapcore.NewCore(enc.enc, zapcore.AddSync(&buf), zapcore.DebugLevel))
		log.Info("secrets",
			zap.Any("any", v),
			zap.Any("anyptr", &v),
			zap.Object("object", v),
			zap.Stringer("stringer", v),
			zap.Reflect("reflect", v),
			zap.Any("struct", exported{Name: "n", Token: v}),
			zap.Any("unexported", unexported{name: "n", token: v}),
			zap.Any("slice", []Value{v}),
			zap.String("hint", v.Hint()),
		)
		log.Sugar().Infow("sugar", "tok", v)
		log.Sugar().Infof("sugar %v %s %d", v, v, v)
		_ = log.Sync()
		out := buf.String()
		if !strings.Contains(out, redacted) {
			t.Fatalf("%s: no redaction marker in %s", enc.name, out)
		}
		assertNoCanary(t, "zap "+enc.name, out)
	}
}

func TestValueRedactedInSlog(t *testing.T) {
	t.Parallel()
	v := New(canary)
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewJSONHandler(&buf, nil), slog.NewTextHandler(&buf, nil)} {
		slog.New(h).Info("secrets", "v", v, "p", &v, "s", exported{Token: v})
	}
	assertNoCanary(t, "slog", buf.String())
}
