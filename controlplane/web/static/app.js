// Devpilot console: small progressive enhancements. Every page works
// without this file; it adds live updates and picker hints.
(function () {
  "use strict";

  // Live server detail: re-render the server's fragment every second while
  // it is changing, every five seconds otherwise.
  var live = document.querySelector("[data-live-url]");
  if (live) {
    var last = "";
    var poll = function () {
      fetch(live.getAttribute("data-live-url"), { credentials: "same-origin", cache: "no-store" })
        .then(function (r) {
          if (r.status === 401) { window.location.reload(); throw new Error("signed out"); }
          if (!r.ok) { throw new Error("status " + r.status); }
          return r.text();
        })
        .then(function (html) {
          if (html !== last) { live.innerHTML = html; last = html; }
          var bar = live.querySelector("[data-busy]");
          var busy = bar && bar.getAttribute("data-busy") === "true";
          setTimeout(poll, busy ? 1000 : 5000);
        })
        .catch(function () { setTimeout(poll, 5000); });
    };
    setTimeout(poll, 1000);
  }

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

  // Task logs: follow the task's server-sent events.
  var logs = document.querySelector("[data-logs-url]");
  if (logs && window.EventSource) {
    var out = logs.querySelector("pre");
    var state = document.getElementById("task-state");
    var es = new EventSource(logs.getAttribute("data-logs-url"));
    var append = function (text, cls) {
      var span = document.createElement("span");
      if (cls) { span.className = cls; }
      span.textContent = text;
      out.appendChild(span);
      out.scrollTop = out.scrollHeight;
    };
    es.addEventListener("log", function (e) {
      var m;
      try { m = JSON.parse(e.data); } catch (err) { append(e.data + "\n"); return; }
      append(m.text !== undefined ? m.text : (m.data || ""), m.stream === "stderr" ? "stderr" : "");
    });
    es.onmessage = function (e) { append(e.data + "\n"); };
    var finish = function (e) {
      var m = {};
      try { m = JSON.parse(e.data); } catch (err) { /* plain text */ }
      if (state && m.state) { state.textContent = m.state; state.className = "badge " + m.state; }
      logs.setAttribute("data-done", "true");
      es.close();
    };
    es.addEventListener("result", finish);
    es.addEventListener("end", finish);
    es.addEventListener("done", finish);
    es.onerror = function () { if (es.readyState === 2) { logs.setAttribute("data-done", "true"); } };
  }
})();
