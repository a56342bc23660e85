// A rendering job's "about N s left" counts down every second between the progress reports that
// bring a fresh figure, down to "finishing…".
//
// The figure is read from the text the server drew (the rendering partial of renders/queue.html,
// on the Render queue, a story's Renders tab and wherever else it is included) and counted on
// this browser's own clock from when it arrived, so a clock that is off changes nothing. A live
// update that draws the job again with the same text (something else changed: another job, a
// node) brings no fresh figure: the count goes on where it was. A changed text (new progress)
// starts again from its figure.
(function () {
  "use strict";
  // The last one of the line: a node's name earlier on it could say anything.
  var ETA = /about (\d+) s left(?![^]*about \d+ s left)/;
  var drawn = new WeakMap(); // a text node the server drew -> its count
  var counts = new Map(); // job element id -> its count, across swaps

  function countOf(text, jobId) {
    var before = counts.get(jobId);
    if (before && before.text === text.data) return before;
    return { text: text.data, left: Number(ETA.exec(text.data)[1]), since: performance.now() };
  }

  function show(text, count) {
    var left = Math.ceil(count.left - (performance.now() - count.since) / 1000);
    var said = count.text.replace(ETA, left > 0 ? "about " + left + " s left" : "finishing…");
    if (text.data !== said) text.data = said;
  }

  function tick() {
    var seen = new Map();
    document.querySelectorAll(".job.rendering > p").forEach(function (line) {
      var job = line.parentElement;
      var walker = document.createTreeWalker(line, NodeFilter.SHOW_TEXT);
      for (var text = walker.nextNode(); text; text = walker.nextNode()) {
        var count = drawn.get(text);
        if (!count) {
          if (!ETA.test(text.data)) continue;
          count = countOf(text, job.id);
          drawn.set(text, count);
        }
        seen.set(job.id, count);
        show(text, count);
      }
    });
    counts = seen; // jobs no longer shown are forgotten
  }

  document.addEventListener("DOMContentLoaded", tick);
  // A live update swaps the job in: shown at once as counted, not a second later as drawn.
  document.addEventListener("htmx:load", tick);
  setInterval(tick, 250);
})();
