// lockgate inbox: live queue (poll the server-rendered fragment) and keyboard shortcuts on a card.
// No build step, no inline script (the Content-Security-Policy allows scripts from this origin only).
(function () {
  "use strict";
  var queue = document.querySelector("[data-poll]");
  if (queue) {
    var refresh = function () {
      fetch(queue.getAttribute("data-poll"), { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { if (r.status === 401) { window.location.href = "/login"; return null; } return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null && html !== undefined) { queue.innerHTML = html; } })
        .catch(function () {});
    };
    setInterval(refresh, 2000);
  }
  var form = document.getElementById("decide");
  document.addEventListener("keydown", function (ev) {
    if (!form || ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
    var tag = (ev.target && ev.target.tagName) || "";
    if (tag === "TEXTAREA" || tag === "INPUT" || tag === "SELECT") { return; }
    var button = null;
    if (ev.key === "a") { button = document.getElementById("approve"); }
    if (ev.key === "r") {
      var reason = document.getElementById("reason");
      if (reason && !reason.value.trim()) { ev.preventDefault(); reason.focus(); return; }  // a rejection says why
      button = document.getElementById("reject");
    }
    if (button) { ev.preventDefault(); form.requestSubmit(button); }
  });
})();
