// Live updates without a reload: every data-live milliseconds, fetch this
// page with ?partial=1 (the server renders only the live region) and swap it
// in. Skipped while the tab is hidden. No framework, no CDN.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !live.dataset.live) return;
  var every = parseInt(live.dataset.live, 10) || 3000;
  var stamp = document.getElementById("updated");
  function url() {
    var u = new URL(window.location.href);
    u.searchParams.set("partial", "1");
    return u.toString();
  }
  function tick() {
    if (document.hidden) return;
    fetch(url(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.redirected || r.status === 401) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null) return;
        live.innerHTML = html;
        live.dataset.updates = String((parseInt(live.dataset.updates || "0", 10) || 0) + 1);
        if (stamp) stamp.textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
      })
      .catch(function () { if (stamp) stamp.textContent = "console unreachable; retrying"; });
  }
  setInterval(tick, every);
})();
