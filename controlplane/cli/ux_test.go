package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"
)

// with copies vars and sets more.
func with(vars map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range vars {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// mustJSON fails unless s is exactly one JSON document, and decodes it.
func mustJSON(t *testing.T, what, s string, into any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	if err := dec.Decode(into); err != nil {
		t.Fatalf("%s: stdout is not JSON (%v):\n%s", what, err, s)
	}
	if dec.More() {
		t.Fatalf("%s: stdout holds more than one JSON document:\n%s", what, s)
	}
}

// signalWriter is a buffer that closes hit once it holds want.
type signalWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	hit  chan struct{}
	once sync.Once
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.hit) })
	}
	return n, err
}

func (w *signalWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestNamesOutputsAndExitCodes goes through the CLI as a new user would,
// with names instead of ids, and checks that scripts get what they need:
// JSON on stdout for every verb under -o json, the remote exit code from
// tasks run, 130 and the way back on Ctrl-C, refusals before destructive
// verbs.
func TestNamesOutputsAndExitCodes(t *testing.T) {
	_, v := startDev(t)
	if r := cli(t, v, v["DO_SIM_TOKEN"], "integrations", "connect", "--provider", "digitalocean", "--access-key", "my-do"); r.code != 0 {
		t.Fatalf("connect: %+v", r)
	}
	// Names where ids were asked for; an unknown one says where to look.
	if r := cli(t, v, "", "integrations", "test", "my-do"); r.code != 0 || !strings.Contains(r.stdout, "Credentials work.") {
		t.Errorf("integrations test NAME: %+v", r)
	}
	r := cli(t, v, "", "integrations", "show", "no-such")
	if r.code != 1 || !strings.Contains(r.stderr, "not_found") || !strings.Contains(r.stderr, "devpilot integrations list") {
		t.Errorf("unknown name: %+v", r)
	}

	// The catalog for one region: that region only, its sizes say yes/no.
	r = cli(t, v, "", "integrations", "catalog", "my-do", "--region", "nyc3", "-o", "json")
	var cat struct {
		Regions []struct{ ID string }
		Sizes   []struct {
			ID      string
			Regions []string
			SoldOut []string `json:"sold_out"`
		}
	}
	mustJSON(t, "catalog --region -o json", r.stdout, &cat)
	if len(cat.Regions) != 1 || cat.Regions[0].ID != "nyc3" || len(cat.Sizes) == 0 {
		t.Errorf("catalog --region nyc3: regions %+v, %d sizes", cat.Regions, len(cat.Sizes))
	}
	for _, s := range cat.Sizes {
		if len(s.Regions)+len(s.SoldOut) != 1 {
			t.Errorf("size %s in catalog --region nyc3: regions %v sold out %v", s.ID, s.Regions, s.SoldOut)
		}
	}
	r = cli(t, v, "", "integrations", "catalog", "my-do", "--region", "nyc3")
	if r.code != 0 || !strings.Contains(r.stdout, "AVAILABLE IN NYC3") || strings.Contains(r.stdout, " available ") || strings.Contains(r.stdout, "sfo3") {
		t.Errorf("catalog --region nyc3 table:\n%s", r.stdout)
	}
	if r := cli(t, v, "", "integrations", "catalog", "my-do", "--region", "mars1"); r.code != 2 || !strings.Contains(r.stderr, "nyc3") {
		t.Errorf("catalog --region mars1 must name the valid regions: %+v", r)
	}

	// create --wait under -o json: the steps on stderr, the server on stdout.
	r = cli(t, v, "", "servers", "create", "--integration", "my-do", "--name", "web-1", "--region", "nyc3", "--size", "s-1vcpu-1gb", "--wait", "-o", "json")
	var srv struct{ ID, Name, State string }
	mustJSON(t, "servers create --wait -o json", r.stdout, &srv)
	if r.code != 0 || srv.State != "online" || srv.Name != "web-1" || !strings.Contains(r.stderr, "✓ wait_agent") {
		t.Fatalf("servers create --wait -o json: %+v", r)
	}
	r = cli(t, v, "", "servers", "show", "web-1", "-o", "yaml")
	var ys struct{ ID, Name string }
	if err := yaml.Unmarshal([]byte(r.stdout), &ys); err != nil || ys.ID != srv.ID || strings.HasPrefix(strings.TrimSpace(r.stdout), "{") {
		t.Errorf("servers show -o yaml (%v): %s", err, r.stdout)
	}
	if r := cli(t, v, "", "servers", "list", "--format", "name,STATE", "--no-header"); r.code != 0 || !regexp.MustCompile(`^web-1\s+online\n$`).MatchString(r.stdout) {
		t.Errorf("servers list --format --no-header: %q", r.stdout)
	}
	if r := cli(t, v, "", "servers", "list", "--format", "NAME,COLOUR"); r.code != 2 || !strings.Contains(r.stderr, "ID,NAME,PROVIDER") {
		t.Errorf("--format with an unknown column must name the columns: %+v", r)
	}
	var none struct{ Servers []any }
	mustJSON(t, "servers list --state failed", cli(t, v, "", "servers", "list", "--state", "failed", "--json").stdout, &none)
	if len(none.Servers) != 0 {
		t.Errorf("servers list --state failed: %+v", none)
	}

	// tasks run: the remote exit code; -o json: the final task on stdout.
	if r := cli(t, v, "", "tasks", "run", "--server", "web-1", "--", "sh", "-c", "exit 3"); r.code != 3 {
		t.Errorf("tasks run -- sh -c 'exit 3': exit %d: %+v", r.code, r)
	}
	r = cli(t, v, "", "tasks", "run", "--server", "web-1", "-o", "json", "--", "sh", "-c", "echo out-line; exit 4")
	var task struct {
		ID       string
		State    string
		ExitCode *int `json:"exit_code"`
	}
	mustJSON(t, "tasks run -o json", r.stdout, &task)
	if r.code != 4 || task.ExitCode == nil || *task.ExitCode != 4 || !strings.Contains(r.stderr, "out-line") {
		t.Errorf("tasks run -o json: %+v", r)
	}
	r = cli(t, v, "", "tasks", "run", "--server", "web-1", "--detach", "--", "true")
	if r.code != 0 || !idPattern.MatchString(strings.TrimSpace(r.stdout)) {
		t.Errorf("tasks run --detach must print the id alone: %+v", r)
	}
	mustJSON(t, "tasks run --detach -o json", cli(t, v, "", "tasks", "run", "--server", "web-1", "--detach", "-o", "json", "--", "true").stdout, &task)
	if !idPattern.MatchString(task.ID) {
		t.Errorf("tasks run --detach -o json: %+v", task)
	}

	// Ctrl-C while attached: exit 130, the task goes on, and how to follow
	// or cancel it.
	ctx, cancel := context.WithCancel(context.Background())
	out := &signalWriter{want: "started-marker", hit: make(chan struct{})}
	var errb bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"tasks", "run", "--server", "web-1", "--", "sh", "-c", "echo started-marker; sleep 120"},
			Env{Stdin: strings.NewReader(""), Stdout: out, Stderr: &errb, Getenv: func(k string) string { return v[k] }})
	}()
	<-out.hit
	cancel()
	if code := <-done; code != 130 {
		t.Errorf("Ctrl-C: exit %d, want 130; stderr:\n%s", code, errb.String())
	}
	m := regexp.MustCompile(`devpilot tasks logs -f (task_[a-z2-7]+)`).FindStringSubmatch(errb.String())
	if m == nil || !strings.Contains(errb.String(), "goes on") || !strings.Contains(errb.String(), "devpilot tasks cancel "+m[1]) {
		t.Fatalf("Ctrl-C message:\n%s", errb.String())
	}
	var still struct{ State string }
	mustJSON(t, "tasks show", cli(t, v, "", "tasks", "show", m[1], "-o", "json").stdout, &still)
	if still.State != "running" && still.State != "sent" {
		t.Errorf("the task after Ctrl-C is %s, want it still running", still.State)
	}
	if r := cli(t, v, "", "tasks", "cancel", m[1]); r.code != 0 {
		t.Errorf("tasks cancel: %+v", r)
	}

	// deploy under -o json: progress on stderr, the deployment on stdout.
	plan := filepath.Join(t.TempDir(), "plan.yaml")
	if err := os.WriteFile(plan, []byte("steps:\n  - name: hello\n    kind: exec\n    argv: [echo, hello]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = cli(t, v, "", "deploy", "-f", plan, "--server", "web-1", "-o", "json", "--poll", "100ms")
	var dep struct{ ID, State string }
	mustJSON(t, "deploy -o json", r.stdout, &dep)
	if r.code != 0 || dep.State != "succeeded" || !strings.Contains(r.stderr, "Deployment "+dep.ID) {
		t.Errorf("deploy -o json: %+v", r)
	}

	// Every read verb prints one JSON document under -o json.
	for _, args := range [][]string{
		{"integrations", "list"}, {"integrations", "show", "my-do"}, {"integrations", "catalog", "my-do"},
		{"servers", "list"}, {"servers", "show", "web-1"}, {"tasks", "list"}, {"tasks", "logs", task.ID},
		{"tokens", "list"}, {"workspaces", "list"}, {"audit"}, {"version"}, {"context", "list"},
	} {
		r := cli(t, with(v, "HOME", t.TempDir()), "", append(args, "-o", "json")...)
		var any any
		mustJSON(t, strings.Join(args, " "), r.stdout, &any)
		if r.code != 0 {
			t.Errorf("%v -o json: %+v", args, r)
		}
	}

	// Destructive verbs ask; without a terminal they refuse unless --force.
	r = cli(t, v, "", "servers", "delete", "web-1", "--destroy")
	if r.code != 2 || !strings.Contains(r.stderr, "--force") {
		t.Errorf("servers delete --destroy without --force: %+v", r)
	}
	if r := cli(t, v, "", "tokens", "create", "--name", "robot"); r.code != 0 {
		t.Fatalf("tokens create: %+v", r)
	}
	for _, args := range [][]string{{"servers", "power-off", "web-1"}, {"servers", "resize", "web-1", "--size", "s-2vcpu-2gb"}, {"tokens", "revoke", "robot"}} {
		if r := cli(t, v, "", args...); r.code != 2 || !strings.Contains(r.stderr, "--force") {
			t.Errorf("%v without --force and no terminal: %+v", args, r)
		}
	}
	var no bytes.Buffer
	code := Main(context.Background(), []string{"integrations", "remove", "my-do"}, Env{Stdin: strings.NewReader(""), Stdout: &no, Stderr: &no,
		Getenv: func(k string) string { return v[k] }, Prompt: func(string) (string, error) { return "n\n", nil }})
	if code != 1 || !strings.Contains(no.String(), "not confirmed") {
		t.Errorf("integrations remove answered n: exit %d: %s", code, no.String())
	}
	if r := cli(t, v, "", "integrations", "show", "my-do"); r.code != 0 {
		t.Errorf("the integration must survive a refused remove: %+v", r)
	}

	// The same name twice (one per provider) is refused, listing both.
	for p, secret := range map[string]string{"digitalocean": v["DO_SIM_TOKEN"], "vultr": v["VULTR_SIM_KEY"]} {
		if r := cli(t, v, secret, "integrations", "connect", "--provider", p, "--access-key", "twin"); r.code != 0 {
			t.Fatalf("connect twin: %+v", r)
		}
	}
	r = cli(t, v, "", "integrations", "show", "twin")
	if r.code != 2 || strings.Count(r.stderr, "int_") != 2 || !strings.Contains(r.stderr, "give the id") {
		t.Errorf("an ambiguous name must be refused with the candidates: %+v", r)
	}

	t.Run("completion", func(t *testing.T) { testBashCompletion(t, v) })
}

// testBashCompletion loads `devpilot completion bash` into a real bash and
// completes a verb and a server name (asked of the API).
func testBashCompletion(t *testing.T, v map[string]string) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("bash is needed for the completion test:", err)
	}
	// What an interactive bash loads first (Debian's bash-completion,
	// installed by .ci/run): cobra's script uses its _get_comp_words_by_ref.
	const bashCompletion = "/usr/share/bash-completion/bash_completion"
	if _, err := os.Stat(bashCompletion); err != nil {
		t.Fatal("the bash-completion package is needed for the completion test (apt-get install bash-completion):", err)
	}
	bin := filepath.Join(t.TempDir(), "devpilot")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/devpilot/devpilot/cmd/devpilot").CombinedOutput(); err != nil {
		t.Fatalf("build devpilot: %v\n%s", err, out)
	}
	complete := func(words ...string) []string {
		t.Helper()
		line := strings.Join(words, " ")
		script := fmt.Sprintf(`source `+bashCompletion+` || exit 8
source <(devpilot completion bash) || exit 9
COMP_WORDS=(%s); COMP_CWORD=%d; COMP_LINE=%q; COMP_POINT=${#COMP_LINE}
__start_devpilot devpilot
printf '%%s\n' "${COMPREPLY[@]}"`, quoteWords(words), len(words)-1, line)
		cmd := exec.Command(bash, "--norc", "--noprofile", "-c", script)
		cmd.Env = []string{"PATH=" + filepath.Dir(bin) + ":" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
		for k, x := range v {
			cmd.Env = append(cmd.Env, k+"="+x)
		}
		var errb bytes.Buffer
		cmd.Stderr = &errb // compopt says it runs outside a completion: true, and harmless
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("bash completion of %q: %v\n%s%s", line, err, out, errb.String())
		}
		return strings.Fields(string(out))
	}
	if got := complete("devpilot", "ser"); !slicesEqual(got, []string{"serve", "servers"}) {
		t.Errorf("completing `devpilot ser`: %q", got)
	}
	if got := complete("devpilot", "servers", "re"); !slicesEqual(got, []string{"reboot", "rekey", "rename", "resize"}) {
		t.Errorf("completing `devpilot servers re`: %q", got)
	}
	if got := complete("devpilot", "servers", "show", "we"); !slicesEqual(got, []string{"web-1"}) {
		t.Errorf("completing a server name: %q", got)
	}
}

func quoteWords(ws []string) string {
	q := make([]string, len(ws))
	for i, w := range ws {
		q[i] = fmt.Sprintf("%q", w)
	}
	return strings.Join(q, " ")
}

func slicesEqual(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }

// TestLoginAndContexts: devpilot login checks the token and saves it in a
// 0600 config; the CLI then works with no DEVPILOT_* at all; the token is
// never printed, whatever the verb or format.
func TestLoginAndContexts(t *testing.T) {
	_, v := startDev(t)
	home := t.TempDir()
	bare := map[string]string{"XDG_CONFIG_HOME": home} // nothing else: the context is all there is
	tok := v["DEVPILOT_TOKEN"]
	var outputs []string
	run := func(vars map[string]string, stdin string, args ...string) run {
		t.Helper()
		r := cli(t, vars, stdin, args...)
		outputs = append(outputs, r.stdout, r.stderr)
		return r
	}
	if r := run(bare, "dpt_wrong_token\n", "login", "--url", v["DEVPILOT_URL"], "--ca-cert", v["DEVPILOT_CA_CERT"], "--name", "dev"); r.code != 1 || !strings.Contains(r.stderr, "unauthorized") {
		t.Errorf("login with a bad token must fail: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(home, "devpilot", "config.yaml")); err == nil {
		t.Error("a failed login saved a config")
	}
	r := run(bare, tok+"\n", "login", "--url", v["DEVPILOT_URL"], "--ca-cert", v["DEVPILOT_CA_CERT"], "--name", "dev")
	if r.code != 0 || !strings.Contains(r.stdout, `context "dev"`) {
		t.Fatalf("login: %+v", r)
	}
	cfg := filepath.Join(home, "devpilot", "config.yaml")
	st, err := os.Stat(cfg)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config %s: %v, mode %v (want 0600)", cfg, err, st.Mode())
	}
	if r := run(bare, "", "integrations", "list"); r.code != 0 || !strings.HasPrefix(r.stdout, "ID") {
		t.Errorf("integrations list through the context: %+v", r)
	}
	// Sealed at rest: the config file holds no token, the keyring is 0600.
	if b, _ := os.ReadFile(cfg); strings.Contains(string(b), tok) || strings.Contains(string(b), strings.TrimPrefix(tok, "dpt_")) {
		t.Errorf("the config file holds the token in plaintext:\n%s", b)
	}
	kr := filepath.Join(home, "devpilot", "keyring.json")
	if st, err := os.Stat(kr); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("keyring %s: %v (want mode 0600)", kr, err)
	}
	for _, f := range []string{"table", "json", "yaml"} {
		if r := run(bare, "", "context", "list", "-o", f); r.code != 0 || !strings.Contains(r.stdout, "dev") {
			t.Errorf("context list -o %s: %+v", f, r)
		}
	}
	if r := run(bare, "", "servers", "list", "--context", "nope"); r.code != 1 || !strings.Contains(r.stderr, "devpilot context list") {
		t.Errorf("--context nope: %+v", r)
	}
	// A URL given another way never gets the context's token.
	if r := run(with(bare, "DEVPILOT_URL", "https://127.0.0.1:1"), "", "servers", "list"); r.code != 1 || !strings.Contains(r.stderr, "no API token") {
		t.Errorf("DEVPILOT_URL without a token must not use the context's: %+v", r)
	}
	// A token of another workspace: its context's verbs act there.
	if r := run(v, "", "workspaces", "create", "staging"); r.code != 0 {
		t.Fatalf("workspaces create: %+v", r)
	}
	r = run(v, "", "tokens", "create", "--workspace", "staging", "--role", "admin", "--name", "stg")
	stg := strings.TrimSpace(r.stdout)
	if r.code != 0 || stg == "" {
		t.Fatalf("tokens create --workspace staging: %+v", r)
	}
	if r := run(bare, stg, "login", "--url", v["DEVPILOT_URL"], "--ca-cert", v["DEVPILOT_CA_CERT"], "--name", "stg"); r.code != 0 {
		t.Fatalf("login stg: %+v", r)
	}
	if r := run(bare, "", "tokens", "list", "-o", "json"); r.code != 0 || !strings.Contains(r.stdout, `"stg"`) {
		t.Errorf("the staging context must act in staging: %+v", r)
	}
	if r := run(bare, "", "tokens", "list", "--workspace", "default"); r.code != 1 {
		t.Errorf("a staging token in default: %+v", r)
	}
	// Without its keyring a context says to log in again.
	if err := os.Rename(kr, kr+".away"); err != nil {
		t.Fatal(err)
	}
	if r := run(bare, "", "tokens", "list"); r.code != 1 || !strings.Contains(r.stderr, "devpilot login --url") {
		t.Errorf("a context without its keyring: %+v", r)
	}
	if err := os.Rename(kr+".away", kr); err != nil {
		t.Fatal(err)
	}
	if r := run(bare, "", "context", "use", "dev"); r.code != 0 {
		t.Errorf("context use: %+v", r)
	}
	if r := run(bare, "", "context", "remove", "dev"); r.code != 0 {
		t.Errorf("context remove: %+v", r)
	}
	if r := run(bare, "", "integrations", "list"); r.code != 1 || !strings.Contains(r.stderr, "devpilot login") {
		t.Errorf("after context remove: %+v", r)
	}
	b, _ := os.ReadFile(cfg)
	if strings.Contains(string(b), tok) {
		t.Error("context remove left the token in the config file")
	}
	for _, o := range outputs {
		if strings.Contains(o, tok) || strings.Contains(o, "dpt_wrong_token") || (stg != "" && strings.Contains(o, stg) && o != stg+"\n") {
			t.Fatalf("the token appears in the CLI's output:\n%s", o)
		}
	}
}

// TestHelpVersionAndTypos: per-command help with examples, --version,
// short usage errors with a suggestion.
func TestHelpVersionAndTypos(t *testing.T) {
	t.Parallel()
	none := map[string]string{}
	if r := cli(t, none, "", "servers", "-h"); r.code != 0 || !strings.Contains(r.stdout, "reboot") || !strings.Contains(r.stdout, "Examples:") {
		t.Errorf("servers -h: %+v", r)
	}
	r := cli(t, none, "", "servers", "create", "-h")
	if r.code != 0 || !strings.Contains(r.stdout, "--integration string   integration name or id") || !strings.Contains(r.stdout, "devpilot servers create --integration my-do") {
		t.Errorf("servers create -h: %+v", r)
	}
	if r := cli(t, none, "", "--version"); r.code != 0 || !strings.HasPrefix(r.stdout, "devpilot ") {
		t.Errorf("--version: %+v", r)
	}
	r = cli(t, none, "", "servers", "create", "--integrtion", "x")
	if r.code != 2 || !strings.Contains(r.stderr, "did you mean --integration?") || !strings.Contains(r.stderr, "Run 'devpilot servers create --help'") ||
		strings.Count(r.stderr, "\n") > 3 {
		t.Errorf("a typo'd flag: %+v", r)
	}
	if r := cli(t, none, "", "servres"); r.code != 2 || !strings.Contains(r.stderr, "servers") {
		t.Errorf("a typo'd command: %+v", r)
	}
	if r := cli(t, none, "", "servers", "shwo", "x"); r.code != 2 || !strings.Contains(r.stderr, `did you mean "show"`) {
		t.Errorf("a typo'd verb: %+v", r)
	}
	// The Go flag package's single dash still works.
	if r := cli(t, map[string]string{}, "", "integrations", "list", "-data-dir", "/nonexistent/dir"); r.code != 1 || !strings.Contains(r.stderr, "/nonexistent/dir") {
		t.Errorf("-data-dir: %+v", r)
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if r := cli(t, none, "", "completion", shell); r.code != 0 || !strings.Contains(r.stdout, "devpilot") {
			t.Errorf("completion %s: exit %d", shell, r.code)
		}
	}
}

// TestAttach: a command written as func(ctx, Env, args) gets its
// arguments untouched (flags and -h included) and reports like the rest.
func TestAttach(t *testing.T) {
	t.Parallel()
	var out, errb bytes.Buffer
	env := Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}
	root := newRoot(env)
	var got []string
	Attach(root, env, "frobnicate", "copy the database", func(ctx context.Context, env Env, args []string) error {
		got = args
		return usagef("frobnicate: --to is required")
	})
	root.SetArgs([]string{"frobnicate", "-h", "--to=x", "pos"})
	code := report(env, root.ExecuteContext(context.Background()))
	if code != 2 || strings.Join(got, " ") != "-h --to=x pos" || !strings.Contains(errb.String(), "--to is required") {
		t.Errorf("attached command: exit %d, args %q, stderr %q", code, got, errb.String())
	}
	var c *cobra.Command
	for _, x := range root.Commands() {
		if x.Name() == "frobnicate" {
			c = x
		}
	}
	if c == nil || c.Short != "copy the database" {
		t.Error("Attach did not add the command")
	}
}

// TestListsFollowNext: list verbs and name lookups read every page (the
// API's "next" links) and filter by name here too.
func TestListsFollowNext(t *testing.T) {
	t.Parallel()
	pages := map[string]string{
		"":   `{"servers":[{"id":"srv_aaaaaaaaaaaaaaaa","name":"web-1","state":"online"},{"id":"srv_bbbbbbbbbbbbbbbb","name":"web-3","state":"failed"}],"next":"/v1/workspaces/default/servers?cursor=p2"}`,
		"p2": `{"servers":[{"id":"srv_cccccccccccccccc","name":"web-3","state":"online"}],"next":""}`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer t0k" {
			w.WriteHeader(401)
			return
		}
		switch r.URL.Path {
		case "/v1/workspaces/default/servers":
			_, _ = w.Write([]byte(pages[r.URL.Query().Get("cursor")]))
		case "/v1/workspaces/default/servers/srv_cccccccccccccccc":
			_, _ = w.Write([]byte(`{"id":"srv_cccccccccccccccc","name":"web-3","state":"online","steps":[]}`))
		default:
			w.WriteHeader(404)
		}
	}))
	defer srv.Close()
	v := map[string]string{"DEVPILOT_URL": srv.URL, "DEVPILOT_TOKEN": "t0k"}
	var list struct{ Servers []struct{ Name string } }
	mustJSON(t, "servers list", cli(t, v, "", "servers", "list", "-o", "json").stdout, &list)
	if len(list.Servers) != 3 {
		t.Errorf("servers list read %d servers of 3 on two pages", len(list.Servers))
	}
	// The stand-in ignores ?state= and ?name=: the CLI filters anyway.
	mustJSON(t, "servers list --state", cli(t, v, "", "servers", "list", "--state", "online", "-o", "json").stdout, &list)
	if len(list.Servers) != 2 {
		t.Errorf("servers list --state online: %+v", list)
	}
	// web-3 on the second page is the live one of two: a failed server's
	// name can be taken again.
	if r := cli(t, v, "", "servers", "show", "web-3"); r.code != 0 || !strings.Contains(r.stdout, "srv_cccccccccccccccc") {
		t.Errorf("a name on the second page: %+v", r)
	}
}

// TestOutputFormats: YAML keeps strings strings; no colour unless asked.
func TestOutputFormats(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	o := &output{format: "yaml", w: &b}
	if err := o.raw([]byte(`{"name":"123","on":"yes","n":5,"list":[1,"x"]}`)); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := yaml.Unmarshal(b.Bytes(), &back); err != nil || back["name"] != "123" || back["on"] != "yes" || back["n"] != 5 {
		t.Errorf("YAML changed the values (%v):\n%s", err, b.String())
	}
	if strings.Contains(b.String(), "{") {
		t.Errorf("YAML in flow style:\n%s", b.String())
	}
	env := Env{Stdout: &b, Getenv: func(k string) string { return map[string]string{"NO_COLOR": "1"}[k] }, Color: true}
	if s := outFlags(newRoot(env).Flags(), env).paint("online"); s != "online" {
		t.Errorf("NO_COLOR: %q", s)
	}
	env.Getenv = func(string) string { return "" }
	if s := outFlags(newRoot(env).Flags(), env).paint("online"); !strings.Contains(s, "\x1b[32m") {
		t.Errorf("a terminal without NO_COLOR: %q", s)
	}
	env.Color = false
	if s := outFlags(newRoot(env).Flags(), env).paint("online"); s != "online" {
		t.Errorf("not a terminal: %q", s)
	}
}

// TestLegacyHelpers: the pre-cobra helpers a plain-function command uses
// still parse as before: -flag and --flag, flags after arguments,
// DEVPILOT_* defaults, -h.
func TestLegacyHelpers(t *testing.T) {
	t.Parallel()
	env := Env{Stdin: strings.NewReader(""), Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{},
		Getenv: func(k string) string {
			return map[string]string{"DEVPILOT_WORKSPACE": "from-env", "DEVPILOT_TO": "f.tar"}[k]
		}}
	v := newVerb(env, "backup list")
	pos, err := v.parse([]string{"first", "-json", "second"})
	if err != nil || strings.Join(pos, " ") != "first second" || !v.json() || !v.out.json || *v.ws != "from-env" {
		t.Errorf("newVerb parse: %q %v json=%v ws=%q", pos, err, v.json(), *v.ws)
	}
	if w := newVerb(env, "backup list"); w.parseErr([]string{"-o", "json"}) != nil || !w.out.json {
		t.Error("-o json must set out.json for code from before cobra")
	}
	if _, err := newVerb(env, "backup list").parse([]string{"--bogus"}); report(env, err) != 2 {
		t.Errorf("unknown flag: %v", err)
	}
	// start and startOne connect once parsed: here to a data dir that is not there.
	w := newVerbWith(env, "backup show", verbFlags{json: true, workspace: "workspace slug"})
	if _, _, err := w.startOne([]string{"one", "--data-dir", "/nonexistent/dd"}, "archive"); err == nil || !strings.Contains(err.Error(), "/nonexistent/dd") {
		t.Errorf("startOne: %v", err)
	}
	if _, _, err := newVerb(env, "backup list").start([]string{"--data-dir=/nonexistent/dd"}); err == nil || !strings.Contains(err.Error(), "/nonexistent/dd") {
		t.Errorf("start: %v", err)
	}
	if _, err := newVerb(env, "backup show").parseOne([]string{"a", "b"}, "archive"); report(env, err) != 2 {
		t.Errorf("parseOne with two: %v", err)
	}
	fs := newFlags("backup", env)
	to := fs.String("to", "", "archive")
	pos, err = parse(fs, env, []string{"x", "-to", "g.tar"})
	if err != nil || *to != "g.tar" || strings.Join(pos, " ") != "x" {
		t.Errorf("parse: %q %v to=%q", pos, err, *to)
	}
	if _, err := parse(newFlags("backup", env), env, []string{"-h"}); report(env, err) != 0 {
		t.Errorf("-h: %v", err)
	}
}

func (v *verb) parseErr(args []string) error {
	_, err := v.parse(args)
	return err
}
