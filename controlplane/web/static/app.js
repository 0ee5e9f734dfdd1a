// Devpilot console: small progressive enhancements. Every page works
// without this file; it adds live updates, the chart readout and form
// hints.
(function () {
  "use strict";

  // Live parts: an element with data-live-url is re-read (and replaced)
  // when the console's event stream (data-events-url) says that what it
  // shows changed. One stream per page; the browser resumes it with
  // Last-Event-ID after a drop. Without EventSource, the part is re-read
  // every five seconds instead.
  var live = document.querySelector("[data-live-url]");
  var refresh = function () {};
  if (live) {
    var last = live.innerHTML, busy = false, again = false, deferred = false;
    live.addEventListener("focusout", function (e) {
      if (deferred && !(e.relatedTarget && live.contains(e.relatedTarget) && /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(e.relatedTarget.tagName))) {
        deferred = false;
        refresh();
      }
    });
    refresh = function () {
      if (busy) { again = true; return; }
      busy = true;
      fetch(live.getAttribute("data-live-url"), { credentials: "same-origin", cache: "no-store" })
        .then(function (r) {
          if (r.status === 401) { window.location.reload(); throw new Error("signed out"); }
          if (!r.ok) { throw new Error("status " + r.status); }
          return r.text();
        })
        .then(function (html) {
          // Someone typing in a form of the live part keeps what they
          // typed: the new version waits until they leave the form.
          var a = document.activeElement;
          if (html !== last && a && live.contains(a) && /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(a.tagName)) {
            deferred = true;
            return;
          }
          if (html !== last) {
            live.innerHTML = html;
            last = html;
            setupCharts(live);
            live.dispatchEvent(new CustomEvent("devpilot:updated", { bubbles: true }));
          }
        })
        .catch(function () { /* the next event or poll tries again */ })
        .then(function () {
          busy = false;
          live.setAttribute("data-refreshed", String(Date.now()));
          if (again) { again = false; refresh(); }
        });
    };
    var eventsURL = live.getAttribute("data-events-url");
    if (eventsURL && window.EventSource) {
      var es = new EventSource(eventsURL);
      es.addEventListener("ready", function () { live.setAttribute("data-stream", "open"); });
      es.addEventListener("change", refresh);
      es.addEventListener("reset", refresh);
      window.addEventListener("pagehide", function () { es.close(); });
    } else {
      setInterval(refresh, 5000);
    }
  }

  // Charts: hovering or the arrow keys show a sample's value.
  function setupCharts(root) {
    Array.prototype.forEach.call(root.querySelectorAll("figure.chart[data-readout]"), function (fig) {
      var raw = fig.getAttribute("data-readout");
      var svg = fig.querySelector("svg");
      var out = fig.querySelector(".readout");
      var cursor = fig.querySelector(".cursor");
      if (!raw || !svg || !out) { return; }
      var pts = raw.split(";").map(function (s) {
        var p = s.split(" ");
        return { x: parseFloat(p[0]), y: parseFloat(p[1]), text: p.slice(2).join(" ") };
      });
      var at = pts.length - 1;
      var show = function (i) {
        at = Math.max(0, Math.min(pts.length - 1, i));
        out.textContent = pts[at].text;
        if (cursor) {
          cursor.setAttribute("x1", pts[at].x); cursor.setAttribute("x2", pts[at].x);
          cursor.setAttribute("visibility", "visible");
        }
      };
      fig.tabIndex = 0;
      fig.setAttribute("aria-label", fig.querySelector("figcaption").textContent + " chart: arrow keys read the samples");
      svg.addEventListener("pointermove", function (e) {
        var box = svg.getBoundingClientRect();
        var x = (e.clientX - box.left) / box.width * 320;
        var best = 0;
        pts.forEach(function (p, i) { if (Math.abs(p.x - x) < Math.abs(pts[best].x - x)) { best = i; } });
        show(best);
      });
      fig.addEventListener("focus", function () { show(at); });
      fig.addEventListener("keydown", function (e) {
        var step = { ArrowLeft: -1, ArrowRight: 1, Home: -pts.length, End: pts.length }[e.key];
        if (step) { e.preventDefault(); show(at + step); }
      });
    });
  }
  setupCharts(document);

  // Size picker: sizes sold out or not offered in the chosen region are
  // marked and cannot be selected.
  var region = document.getElementById("region");
  var size = document.getElementById("size");
  if (region && size) {
    var base = {};
    Array.prototype.forEach.call(size.options, function (o) {
      base[o.value] = o.textContent.replace(/ \((sold out|not offered) in [^)]*\)$/, "");
    });
    var update = function () {
      var rg = region.value;
      Array.prototype.forEach.call(size.options, function (o) {
        var offered = (" " + o.getAttribute("data-regions") + " ").indexOf(" " + rg + " ") >= 0;
        var soldOut = (" " + o.getAttribute("data-soldout") + " ").indexOf(" " + rg + " ") >= 0;
        o.disabled = soldOut || !offered;
        o.textContent = base[o.value] + (soldOut ? " (sold out in " + rg + ")" : offered ? "" : " (not offered in " + rg + ")");
      });
      if (size.selectedOptions.length === 0 || size.selectedOptions[0].disabled) {
        var first = Array.prototype.find.call(size.options, function (o) { return !o.disabled; });
        size.value = first ? first.value : "";
      }
    };
    region.addEventListener("change", update);
    update();
  }

  // Choosing an integration loads its catalog.
  Array.prototype.forEach.call(document.querySelectorAll("select[data-autosubmit]"), function (s) {
    s.addEventListener("change", function () { if (s.value) { s.form.submit(); } });
  });

  // Task form: only the chosen kind's fields are shown (without the
  // script, both are, each labelled).
  var kinds = document.querySelectorAll("input[name=kind]");
  if (kinds.length) {
    var showKind = function () {
      Array.prototype.forEach.call(document.querySelectorAll("[data-kind]"), function (el) {
        var on = document.querySelector("input[name=kind]:checked");
        el.hidden = !on || el.getAttribute("data-kind") !== on.value;
      });
    };
    Array.prototype.forEach.call(kinds, function (k) { k.addEventListener("change", showKind); });
    showKind();
  }

  // Task logs: follow the task's output (the API's stream of it). When it
  // ends, the task's facts are re-read too.
  var logs = document.querySelector("[data-logs-url]");
  if (logs && window.EventSource) {
    var pre = logs.querySelector("pre");
    var les = new EventSource(logs.getAttribute("data-logs-url"));
    var append = function (text, cls) {
      var span = document.createElement("span");
      if (cls) { span.className = cls; }
      span.textContent = text;
      pre.appendChild(span);
      pre.scrollTop = pre.scrollHeight;
    };
    les.addEventListener("log", function (e) {
      var m;
      try { m = JSON.parse(e.data); } catch (err) { append(e.data + "\n"); return; }
      append(m.text !== undefined ? m.text : (m.data || ""), m.stream === "stderr" ? "stderr" : "");
    });
    les.onmessage = function (e) { append(e.data + "\n"); };
    var finish = function () {
      logs.setAttribute("data-done", "true");
      les.close();
      refresh();
    };
    les.addEventListener("result", finish);
    les.addEventListener("end", finish);
    les.addEventListener("done", finish);
    les.onerror = function () { if (les.readyState === 2) { logs.setAttribute("data-done", "true"); } };
  }
})();
