// deployer-web: live updates of a run page through its event stream (Server-Sent Events).
// The page works without this script; with it, cells, counters and the run state change in
// place, and nothing reloads.
(function () {
  "use strict";
  var body = document.body;
  var url = body && body.getAttribute("data-events");
  if (!url || !window.EventSource) {
    return;
  }
  var cells = {};
  var list = document.querySelectorAll(".cell[data-stage][data-host]");
  for (var i = 0; i < list.length; i++) {
    cells[list[i].getAttribute("data-stage") + "\n" + list[i].getAttribute("data-host")] = list[i];
  }
  var hostRows = {};
  var rows = document.querySelectorAll("tr.host[data-run-host]");
  for (var j = 0; j < rows.length; j++) {
    hostRows[rows[j].getAttribute("data-run-host")] = rows[j];
  }
  function text(id, value) {
    var el = document.getElementById(id);
    if (el) {
      el.textContent = value;
    }
    return el;
  }
  function setState(el, prefix, state) {
    el.setAttribute("data-state", state);
    el.className = el.className.replace(new RegExp("\\b" + prefix + "[a-z_]+\\b", "g"), "").trim() +
      " " + prefix + state;
  }
  function apply(d) {
    var runState = document.getElementById("run-state");
    if (runState) {
      runState.textContent = d.state;
      setState(runState, "st-", d.state.toLowerCase());
      runState.setAttribute("data-state", d.state);
    }
    var progress = text("progress", d.progress.done + "/" + d.progress.total);
    if (progress) {
      progress.setAttribute("data-done", d.progress.done);
      progress.setAttribute("data-total", d.progress.total);
    }
    text("eta", d.finished || !d.eta ? "\u2014" : d.eta);
    text("counts", d.counts_text);
    (d.cells || []).forEach(function (c) {
      var el = cells[c.stage + "\n" + c.host];
      if (el) {
        setState(el, "s-", c.state);
        el.title = c.host + ": " + c.state;
      }
    });
    (d.stages || []).forEach(function (s) {
      var row = document.querySelector("tr.stage[data-stage=\"" + s.index + "\"]");
      if (row) {
        row.setAttribute("data-state", s.state);
        var p = row.querySelector(".stage-progress");
        if (p) {
          p.textContent = s.done + "/" + s.total;
        }
      }
    });
    (d.hosts || []).forEach(function (h) {
      var row = hostRows[h.host];
      if (row) {
        row.setAttribute("data-host-state", h.state);
        var cell = row.querySelector(".host-state");
        if (cell) {
          cell.textContent = h.state;
        }
      }
    });
    var cancelled = document.getElementById("cancel-requested");
    if (cancelled && d.cancel_requested) {
      cancelled.textContent = "cancel requested by " + d.cancel_requested.by + " at " + d.cancel_requested.at;
      cancelled.hidden = false;
    }
    var work = document.getElementById("work-status");
    if (work && "work" in d) {
      while (work.firstChild) {
        work.removeChild(work.firstChild);
      }
      var w = d.work;
      work.hidden = !w;
      if (w) {
        var para = function (cls, text) {
          var p = document.createElement("p");
          p.className = cls;
          p.textContent = text;
          work.appendChild(p);
        };
        (w.waiting || []).forEach(function (line) { para("notice waiting", "waiting: " + line); });
        if (w.stopped) {
          para("notice stopped", "stopped: " + w.stopped);
        }
        var claimed = 0;
        (w.claimed || []).forEach(function (c) { claimed += c.entries; });
        para("work-counts", "work: " + w.pending + " pending · " + claimed + " claimed · " + w.ended + " ended" +
          (w.aborting ? " · aborting: nothing new is claimed" : ""));
        var ul = document.createElement("ul");
        ul.className = "workers";
        (w.claimed || []).forEach(function (c) {
          var li = document.createElement("li");
          li.setAttribute("data-worker", c.worker);
          var code = document.createElement("code");
          code.textContent = c.worker;
          li.appendChild(code);
          li.appendChild(document.createTextNode(": " + c.entries + " claimed"));
          ul.appendChild(li);
        });
        work.appendChild(ul);
      }
    }
    var cancel = document.getElementById("cancel-form");
    if (cancel && (d.finished || d.cancel_requested)) {
      cancel.hidden = true;
    }
    var stillPending = {};
    (d.approvals_pending || []).forEach(function (s) { stillPending[s] = true; });
    var decided = document.querySelectorAll(".approval[data-step][data-state=\"pending\"]");
    for (var m = 0; m < decided.length; m++) {
      if (!stillPending[decided[m].getAttribute("data-step")]) {
        decided[m].setAttribute("data-state", "decided");
        var f = decided[m].querySelector("form.approve");
        if (f) {
          f.hidden = true;
        }
      }
    }
    var notice = document.getElementById("approvals-notice");
    if (notice) {
      var shown = {};
      var forms = document.querySelectorAll(".approval[data-step]");
      for (var k = 0; k < forms.length; k++) {
        shown[forms[k].getAttribute("data-step")] = true;
      }
      var fresh = (d.approvals_pending || []).filter(function (s) { return !shown[s]; });
      notice.textContent = fresh.length ? "waiting for approval: " + fresh.join(", ") + " (reload to decide)" : "";
      notice.hidden = fresh.length === 0;
    }
  }
  var source = new EventSource(url);
  source.onopen = function () {
    body.setAttribute("data-live", "on");
  };
  source.addEventListener("update", function (e) {
    var d = JSON.parse(e.data);
    apply(d);
    if (d.finished) {
      source.close();
      body.setAttribute("data-live", "done");
    }
  });
  source.addEventListener("approvals", function (e) {
    // The approvals page: new ones are announced, decided ones lose their buttons.
    var shown = document.querySelectorAll(".approval[data-run][data-step]");
    var present = {};
    for (var i = 0; i < shown.length; i++) {
      present[shown[i].getAttribute("data-run") + "\n" + shown[i].getAttribute("data-step")] = shown[i];
    }
    var pending = {};
    var fresh = [];
    JSON.parse(e.data).pending.forEach(function (a) {
      var key = a.run + "\n" + a.step;
      pending[key] = true;
      if (!present[key]) {
        fresh.push(a.step);
      }
    });
    Object.keys(present).forEach(function (key) {
      var el = present[key];
      if (!pending[key] && el.getAttribute("data-state") === "pending") {
        el.setAttribute("data-state", "decided");
        var form = el.querySelector("form.approve");
        if (form) {
          form.hidden = true;
        }
      }
    });
    var notice = document.getElementById("approvals-notice");
    if (notice) {
      notice.textContent = fresh.length ? "new approvals waiting: " + fresh.join(", ") + " (reload to decide)" : "";
      notice.hidden = fresh.length === 0;
    }
  });
  source.addEventListener("problem", function (e) {
    body.setAttribute("data-live", "problem");
    var notice = document.getElementById("approvals-notice");
    if (notice) {
      notice.textContent = JSON.parse(e.data).error;
      notice.hidden = false;
    }
  });
})();
