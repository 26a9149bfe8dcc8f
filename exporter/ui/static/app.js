// schedctl status page: auto-refresh and the live filter. No dependencies, no build step.
//
// Every few seconds (the body's data-refresh-seconds) the page fetches itself and swaps each
// element marked data-live for its newer version. Nothing else changes: a filter being typed,
// the scroll position and the URL (filter and page) stay as they were.
(function () {
  "use strict";

  var body = document.body;
  var seconds = Number(body.getAttribute("data-refresh-seconds") || "0");
  var status = document.getElementById("refresh-status");
  var latest = 0;
  var timer = null;

  function say(text, bad) {
    if (!status) return;
    status.textContent = text;
    status.className = bad ? "bad" : "";
  }

  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    var x = window.scrollX;
    var y = window.scrollY;
    var live = fresh.querySelectorAll("[data-live]");
    for (var i = 0; i < live.length; i++) {
      var old = document.getElementById(live[i].id);
      if (old) old.replaceWith(document.importNode(live[i], true));
    }
    if (fresh.title) document.title = fresh.title;
    window.scrollTo(x, y);
  }

  function refresh() {
    var seq = ++latest;
    var url = window.location.href;
    return fetch(url, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "X-Schedctl-Refresh": "1" },
    })
      .then(function (response) {
        if (seq !== latest) return;
        if (response.redirected && new URL(response.url).pathname === "/ui/sign-in") {
          window.location.reload(); // the session ended: show the sign-in form
          return;
        }
        return response.text().then(function (html) {
          if (seq !== latest || url !== window.location.href) return;
          if (!response.ok && response.status !== 404) {
            say("refresh failed: HTTP " + response.status, true);
            return;
          }
          swap(html);
          var count = Number(body.getAttribute("data-refreshes") || "0") + 1;
          body.setAttribute("data-refreshes", String(count));
          say("updated " + new Date().toLocaleTimeString(), false);
        });
      })
      .catch(function () {
        if (seq === latest) say("the exporter does not answer; retrying", true);
      });
  }

  function schedule() {
    if (timer !== null) window.clearInterval(timer);
    if (seconds > 0) timer = window.setInterval(refresh, seconds * 1000);
  }

  // The filter applies as it is typed or chosen, without reloading the page.
  var form = document.getElementById("filter");
  if (form) {
    var pending = null;
    var apply = function (push) {
      var params = new URLSearchParams();
      var data = new FormData(form);
      data.forEach(function (value, key) {
        if (String(value).trim() !== "") params.set(key, String(value).trim());
      });
      var query = params.toString();
      var url = window.location.pathname + (query ? "?" + query : "");
      if (url === window.location.pathname + window.location.search) return;
      if (push) window.history.pushState(null, "", url);
      else window.history.replaceState(null, "", url);
      refresh();
      schedule();
    };
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      apply(true);
    });
    form.addEventListener("input", function (event) {
      if (event.target && event.target.tagName === "SELECT") return;
      if (pending !== null) window.clearTimeout(pending);
      pending = window.setTimeout(function () { apply(false); }, 300);
    });
    form.addEventListener("change", function (event) {
      if (event.target && event.target.tagName === "SELECT") apply(true);
    });
    window.addEventListener("popstate", function () {
      var params = new URLSearchParams(window.location.search);
      var name = document.getElementById("filter-name");
      var badge = document.getElementById("filter-badge");
      if (name) name.value = params.get("q") || "";
      if (badge) badge.value = params.get("badge") || "";
      refresh();
    });
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && seconds > 0) refresh();
  });
  schedule();
})();
