// StoryDetail: the tab follows the story, live updates keep open what the user opened, and a
// refused action's reason is shown. A file of its own (no inline script: the page's content
// security policy allows scripts from this server only, and no eval, so no htmx trigger filters).
(function () {
  "use strict";
  // The tab is idle unless the user is typing in it or watching one of its videos.
  function idle(tab) {
    var active = document.activeElement;
    if (active && tab.contains(active) && active.matches("input, textarea, select")) return false;
    return !Array.prototype.some.call(tab.querySelectorAll("video"), function (v) { return !v.paused; });
  }
  // #story-tab asks for itself again on "story:changed": when the socket brings news of the story,
  // and every 2 s while the story's renders are under way (data-in-flight; render jobs tell only
  // the render queue's topics).
  function follow() {
    var tab = document.getElementById("story-tab");
    if (tab && idle(tab)) htmx.trigger(tab, "story:changed");
  }
  document.addEventListener("htmx:wsAfterMessage", follow);
  // The tab sends what it shows (as the server last described it); the server answers 204, and
  // nothing is swapped, when the tab would come back the same.
  var shown = {};
  document.addEventListener("htmx:configRequest", function (e) {
    if (e.detail.elt.id === "story-tab" && shown[e.detail.path]) e.detail.headers["X-Story-Tab"] = shown[e.detail.path];
  });
  document.addEventListener("htmx:afterRequest", function (e) {
    var digest = e.detail.xhr && e.detail.xhr.getResponseHeader("X-Story-Tab");
    if (digest && e.detail.elt.id === "story-tab") shown[e.detail.requestConfig.path] = digest;
  });
  setInterval(function () {
    var tab = document.getElementById("story-tab");
    if (tab && tab.dataset.inFlight) follow();
  }, 2000);
  // The tab asking for itself again keeps open what the user opened in it (an editor, a log).
  var reopen = [];
  document.addEventListener("htmx:beforeSwap", function (e) {
    if (e.detail.target && e.detail.target.id === "story-tab") {
      reopen = Array.prototype.map.call(e.detail.target.querySelectorAll("details[id][open]"), function (d) { return d.id; });
    }
  });
  document.addEventListener("htmx:afterSwap", function () {
    reopen.forEach(function (id) {
      var fresh = document.getElementById(id);
      if (fresh) fresh.open = true;
    });
    reopen = [];
  });
  // A live update keeps open what the user opened: logs, earlier versions.
  document.addEventListener("htmx:oobBeforeSwap", function (e) {
    document.querySelectorAll("details[id][open]").forEach(function (old) {
      var fresh = e.detail.fragment.querySelector("#" + CSS.escape(old.id));
      if (fresh) fresh.open = true;
    });
  });
  // The re-run question names the steps the chosen one runs again (each option carries its own).
  document.addEventListener("change", function (e) {
    var select = e.target.closest && e.target.closest("form.rerun select[name=step]");
    var option = select && select.selectedOptions[0];
    if (option) select.form.setAttribute("hx-confirm", option.dataset.confirm || "");
  });
  // A correction by hand that makes other steps run again says which, and asks first.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) e.preventDefault();
  });
  // A refused action answers 400 or 404 with the reason in #messages: show it.
  document.addEventListener("htmx:beforeSwap", function (e) {
    if (e.detail.requestConfig.verb === "post" && [400, 404].indexOf(e.detail.xhr.status) >= 0) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });
})();
