// lockgate inbox: live updates (server-sent events), deliberate decisions, local times.
// No build step, no inline script (the Content-Security-Policy allows scripts from this origin only).
(function () {
  "use strict";
  var live = document.getElementById("live");
  function announce(text) {
    // A polite live region, written once per change: screen readers read the change, not the page.
    if (live && text && live.textContent !== text) { live.textContent = text; }
  }

  // Times: the viewer's own zone beside UTC (the server renders UTC).
  function localTimes(root) {
    var nodes = (root || document).querySelectorAll("time[data-local]");
    for (var i = 0; i < nodes.length; i++) {
      var t = nodes[i];
      if (t.getAttribute("data-done")) { continue; }
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) { continue; }
      var span = document.createElement("span");
      span.className = "local muted";
      span.textContent = " · your time: " + d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short" });
      t.parentNode.insertBefore(span, t.nextSibling);
      t.setAttribute("data-done", "1");
    }
  }
  localTimes();

  // Countdown: every second, from the expiry the server rendered.
  function left(iso) {
    var s = Math.floor((new Date(iso).getTime() - Date.now()) / 1000);
    if (!(s > 0)) { return "expired"; }
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return h ? h + "h" + two(m) + "m left" : m + "m" + two(sec) + "s left";
  }
  function tick() {
    var nodes = document.querySelectorAll("[data-expires]");
    for (var i = 0; i < nodes.length; i++) {
      var text = left(nodes[i].getAttribute("data-expires"));
      if (nodes[i].textContent !== text) { nodes[i].textContent = text; }
    }
  }
  setInterval(tick, 1000);

  // Deciding: no single-key act. Reject needs a reason; production or irreversible approvals need a
  // reason and the confirmation box (the server refuses them otherwise, too).
  var form = document.getElementById("decide");
  var reasonKey = form ? "lockgate-reason:" + location.pathname : null;
  if (form) {
    var reason = document.getElementById("reason");
    var error = document.getElementById("form-error");
    // A typed reason survives a sign-in that expired meanwhile (same tab only).
    if (reason && window.sessionStorage) {
      var kept = sessionStorage.getItem(reasonKey);
      if (kept && !reason.value) { reason.value = kept; }
      reason.addEventListener("input", function () { sessionStorage.setItem(reasonKey, reason.value); });
    }
    form.addEventListener("submit", function (ev) {
      var button = ev.submitter;
      var value = button ? button.value : "";
      if (value === "reject" && reason && !reason.value.trim()) {
        ev.preventDefault();
        error.textContent = "A rejection says why: write a reason first.";
        error.hidden = false;
        reason.focus();
        return;
      }
      if (window.sessionStorage) { sessionStorage.removeItem(reasonKey); }
    });
  }

  // Live: server-sent events update the card's quorum, state and approvers, and add or drop queue
  // rows, without re-rendering anything that has focus.
  var card = document.querySelector("[data-live]");
  if (card && window.EventSource) {
    var es = new EventSource(card.getAttribute("data-live"));
    es.addEventListener("card", function (ev) {
      var d = JSON.parse(ev.data);
      var q = document.querySelector("[data-testid=quorum]");
      if (q && d.quorum && q.textContent !== d.quorum) { q.textContent = d.quorum; announce("Approvals: " + d.quorum); }
      var st = document.querySelector("[data-testid=state]");
      if (st && d.state && st.textContent !== d.state) { st.textContent = d.state; }
      if (d.closed) {
        announce("This request is closed: " + d.closed + ". Reload to see who decided.");
        var banner = document.getElementById("closed-banner");
        if (!banner) {
          banner = document.createElement("p");
          banner.id = "closed-banner";
          banner.className = "notice";
          banner.setAttribute("data-testid", "closed-live");
          card.insertBefore(banner, card.firstChild.nextSibling);
        }
        banner.textContent = "This request is closed: " + d.closed + ". ";
        var a = document.createElement("a");
        a.href = location.pathname;
        a.textContent = "See who decided";
        banner.appendChild(a);
        var buttons = document.querySelectorAll("#decide button");
        for (var i = 0; i < buttons.length; i++) { buttons[i].disabled = true; }
        es.close();
      }
    });
  }
  var queue = document.querySelector("[data-queue-events]");
  if (queue && window.EventSource) {
    var qs = new EventSource(queue.getAttribute("data-queue-events"));
    qs.addEventListener("queue", function (ev) {
      var d = JSON.parse(ev.data);
      var list = queue.querySelector("ul.queue");
      if (!list && !d.rows.length) { return; }
      if (!list) {
        list = document.createElement("ul");
        list.className = "queue";
        var empty = queue.querySelector("[data-testid=empty]");
        if (empty) { empty.remove(); }
        queue.appendChild(list);
      }
      var seen = {};
      for (var i = 0; i < d.rows.length; i++) {
        var r = d.rows[i];
        var key = r.run_id + "/" + r.request_id;
        seen[key] = true;
        var li = list.querySelector('li[data-key="' + CSS.escape(key) + '"]');
        if (!li) {
          var tpl = document.createElement("template");
          tpl.innerHTML = r.html;  // rendered (and escaped) by the server's template
          li = tpl.content.firstElementChild;
          list.appendChild(li);
          announce("New request: " + r.tool + " for " + r.agent);
          localTimes(li);
        } else {
          var badge = li.querySelector("[data-testid=row-quorum]");
          if (badge && badge.textContent !== r.quorum) { badge.textContent = r.quorum; }
        }
      }
      var rows = list.querySelectorAll("li[data-key]");
      for (var j = 0; j < rows.length; j++) {
        var k = rows[j].getAttribute("data-key");
        if (!seen[k] && !rows[j].contains(document.activeElement)) {
          rows[j].classList.add("gone");
          rows[j].querySelector("a").setAttribute("aria-disabled", "true");
          var note = rows[j].querySelector(".gone-note");
          if (!note) {
            note = document.createElement("span");
            note.className = "gone-note muted";
            note.textContent = "no longer waiting";
            rows[j].querySelector("a").appendChild(note);
          }
        }
      }
    });
  }

  // Session: warn a minute before the Vault token (and so the session) ends; a typed reason is kept.
  var expires = document.body.getAttribute("data-session-expires");
  if (expires) {
    var warnAt = new Date(expires).getTime() - 120000;
    var warn = function () {
      var box = document.getElementById("session-warning");
      if (box) { box.hidden = false; announce(box.textContent); }
    };
    var wait = warnAt - Date.now();
    if (wait <= 0) { warn(); } else if (wait < 2147483647) { setTimeout(warn, wait); }
  }
})();
