// The live-connection indicator: what the page's socket (htmx ws extension) is doing right now.
(function () {
  "use strict";
  // htmx reconnects by itself only after these close codes; anything else is final.
  var RETRIED = [1006, 1011, 1012, 1013];
  // After the server went away, try again soon and then every second or so, however long it
  // stays away (htmx's default doubles the wait up to a minute): the page is live again within
  // moments of the server's return. The jitter spreads a restart's many pages over a second.
  htmx.config.wsReconnectDelay = function (retries) {
    return Math.min(250 * Math.pow(2, retries), 1000) * (0.5 + Math.random() / 2);
  };
  var LABELS = {
    connecting: "connecting…",
    connected: "live",
    reconnecting: "reconnecting…",
    offline: "offline",
  };

  function show(state, title) {
    var el = document.getElementById("live-status");
    if (!el) return;
    el.dataset.state = state;
    el.textContent = LABELS[state];
    el.title = title || "Live updates: " + LABELS[state];
  }

  document.addEventListener("htmx:wsConnecting", function () {
    var el = document.getElementById("live-status");
    show(el && el.dataset.state === "connected" ? "reconnecting" : (el && el.dataset.state) || "connecting");
  });
  document.addEventListener("htmx:wsOpen", function () { show("connected"); });
  document.addEventListener("htmx:wsClose", function (evt) {
    var code = evt.detail && evt.detail.event ? evt.detail.event.code : 0;
    if (code === 4401) {
      show("offline", "Your session has ended: reload the page to log in again.");
    } else if (RETRIED.indexOf(code) >= 0 && navigator.onLine) {
      show("reconnecting", "The server went away; trying again.");
    } else if (!navigator.onLine) {
      show("offline", "This computer is offline.");
    } else {
      show("offline", "Live updates stopped (code " + code + "): reload the page.");
    }
  });
  window.addEventListener("offline", function () { show("offline", "This computer is offline."); });
  // A pushed element that is the same as the one the page shows is not swapped in: swapping it
  // would only throw away what the user is doing with it (a button being pressed, a selection).
  document.addEventListener("htmx:oobBeforeSwap", function (e) {
    var fresh = e.detail.fragment && e.detail.fragment.firstElementChild;
    if (fresh && e.detail.target && fresh.isEqualNode(e.detail.target)) e.detail.shouldSwap = false;
  });
  // An answer's out-of-band parts (an action's message) are looked for under the element that
  // asked: when a live update replaced that element (a form in a re-rendered list) while the
  // answer was on its way, htmx finds nothing there. The page still has the part: it goes there.
  document.addEventListener("htmx:oobErrorNoTarget", function (e) {
    var part = e.detail.content;
    var target = part && part.id && document.getElementById(part.id);
    if (target) htmx.swap(target, part.outerHTML, { swapStyle: "outerHTML" });
  });
})();
