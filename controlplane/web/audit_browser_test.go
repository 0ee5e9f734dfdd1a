package web_test

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/chromedp/chromedp"
)

// axe-core is installed from npm by .ci/run (pinned there) into
// /opt/devpilot-axe; DEVPILOT_AXE names another axe.min.js. Under CI=true
// a missing axe fails the browser tests.
const axeDefault = "/opt/devpilot-axe/node_modules/axe-core/axe.min.js"

var (
	axeOnce sync.Once
	axeJS   string
	axeErr  error
)

func axeSource(t *testing.T) string {
	t.Helper()
	axeOnce.Do(func() {
		path := os.Getenv("DEVPILOT_AXE")
		if path == "" {
			path = axeDefault
		}
		b, err := os.ReadFile(path)
		if err != nil {
			axeErr = fmt.Errorf("axe-core not found at %s (.ci/run installs it: npm install --prefix /opt/devpilot-axe axe-core@<pinned>; or set DEVPILOT_AXE): %w", path, err)
			return
		}
		axeJS = string(b)
	})
	if axeErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(axeErr)
		}
		t.Skip(axeErr)
	}
	return axeJS
}

type axeViolation struct {
	ID     string   `json:"id"`
	Impact string   `json:"impact"`
	Help   string   `json:"help"`
	Nodes  []string `json:"nodes"`
}

type widthCheck struct {
	ScrollWidth int      `json:"sw"`
	InnerWidth  int      `json:"iw"`
	ClientWidth int      `json:"cw"` // innerWidth less a classic scrollbar
	Wide        []string `json:"wide"`
}

// checkPage is what every page must pass, as it is now: axe-core finds no
// violation, and at 390×844 (a phone) the page does not scroll sideways.
// It takes a screenshot at both sizes.
func (b *tab) checkPage(name string) {
	b.t.Helper()
	b.shot(name)
	for _, v := range b.axe(name) {
		b.t.Errorf("axe on %s: %s (%s): %s\n  %s", name, v.ID, v.Impact, v.Help, strings.Join(v.Nodes, "\n  "))
	}
	w := b.phoneWidth(name)
	if w.ScrollWidth > w.InnerWidth || w.ScrollWidth > w.ClientWidth {
		b.t.Errorf("%s scrolls sideways at 390 px: scrollWidth %d > innerWidth %d (clientWidth %d); too wide: %v",
			name, w.ScrollWidth, w.InnerWidth, w.ClientWidth, w.Wide)
	}
}

// axe runs axe-core on the open page and returns its violations.
func (b *tab) axe(name string) []axeViolation {
	b.t.Helper()
	src := axeSource(b.t)
	if !get(b, "axe loaded?", chromedp.Evaluate[bool](`typeof axe !== "undefined"`)) {
		get(b, "inject axe", chromedp.Evaluate[bool](src+";\ntrue"))
	}
	return get(b, "axe "+name, chromedp.Evaluate[[]axeViolation](`(() => {
		return axe.run(document, {resultTypes: ["violations"]}).then(r => r.violations.map(v => ({
			id: v.id, impact: v.impact || "", help: v.help,
			nodes: v.nodes.map(n => n.target.join(" ") + " — " + (n.failureSummary || "").replace(/\s+/g, " "))})));
	})()`, chromedp.EvalAwaitPromise))
}

// phoneWidth measures the open page at 390×844 (and screenshots it),
// then returns to the desktop size.
func (b *tab) phoneWidth(name string) widthCheck {
	b.t.Helper()
	b.run("phone viewport", chromedp.EmulateViewport(390, 844))
	w := get(b, "measure "+name, chromedp.Evaluate[widthCheck](`(() => ({
		sw: document.scrollingElement.scrollWidth, iw: window.innerWidth, cw: document.scrollingElement.clientWidth,
		wide: Array.from(document.querySelectorAll("body *")).filter(e => e.getBoundingClientRect().right > document.scrollingElement.clientWidth + 0.5)
			.slice(0, 8).map(e => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + (typeof e.className === "string" && e.className ? "." + e.className : "") +
				" right=" + Math.round(e.getBoundingClientRect().right))}))()`))
	b.shot(name + "-390")
	b.run("desktop viewport", chromedp.EmulateViewport(1280, 900))
	return w
}

// checksCanFail: the page checks see a page that breaks them, so their
// silence on the console's pages means something.
func (b *tab) checksCanFail() {
	b.t.Helper()
	b.run("bad page", chromedp.Navigate(`data:text/html,<html><body><img src="x.png"><div style="width:600px">wide</div></body></html>`))
	vs := b.axe("bad page")
	ids := []string{}
	for _, v := range vs {
		ids = append(ids, v.ID)
	}
	if !strings.Contains(strings.Join(ids, " "), "image-alt") {
		b.t.Errorf("axe missed an image without alt: %v", ids)
	}
	if w := b.phoneWidth("bad-page"); w.ScrollWidth <= w.InnerWidth || w.ScrollWidth <= w.ClientWidth {
		b.t.Errorf("a 600 px element did not widen the page at 390 px: %+v", w)
	}
}
