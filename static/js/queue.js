// Drag a queued job onto another to put it just before that one. The server moves the row; the
// new order arrives over the live socket like any other change.
(function () {
  "use strict";
  var dragged = null;
  document.addEventListener("dragstart", function (e) {
    var row = e.target.closest && e.target.closest("#queued .job[draggable]");
    if (!row) return;
    dragged = row;
    row.classList.add("dragging");
    e.dataTransfer.effectAllowed = "move";
    e.dataTransfer.setData("text/plain", row.dataset.code);
  });
  document.addEventListener("dragend", function () {
    if (dragged) dragged.classList.remove("dragging");
    dragged = null;
  });
  document.addEventListener("dragover", function (e) {
    var over = e.target.closest && e.target.closest("#queued .job[draggable]");
    if (dragged && over && over !== dragged) e.preventDefault();
  });
  document.addEventListener("drop", function (e) {
    var target = e.target.closest && e.target.closest("#queued .job[draggable]");
    if (!dragged || !target || target === dragged) return;
    e.preventDefault();
    htmx.ajax("POST", dragged.dataset.move, {
      source: document.body, swap: "none", values: { before: target.dataset.code },
    });
  });
})();
