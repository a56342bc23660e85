// Finished renders: a video's thumbnail plays the video (muted, looping) while the pointer is on
// it, and any thumbnail opens its render full size in a lightbox; Escape, the close button or a
// click beside it closes it. Links of class "lightbox" still open the file where this script does
// not run. Delegated from the document: rows swapped in live work the same.
(function () {
  "use strict";
  var dialog = null;

  function lightbox() {
    if (dialog) return dialog;
    dialog = document.createElement("dialog");
    dialog.className = "lightbox-dialog";
    dialog.id = "lightbox";
    dialog.addEventListener("click", function (e) {
      if (e.target === dialog || e.target.closest(".lightbox-close")) dialog.close();
    });
    dialog.addEventListener("close", function () { dialog.replaceChildren(); });
    document.body.appendChild(dialog);
    return dialog;
  }

  document.addEventListener("click", function (e) {
    var link = e.target.closest && e.target.closest("a.lightbox");
    if (!link || e.ctrlKey || e.metaKey || e.shiftKey) return;
    e.preventDefault();
    var box = lightbox();
    var media;
    if (link.dataset.kind === "video") {
      media = document.createElement("video");
      media.controls = true;
      media.autoplay = true;
      media.loop = true;
    } else {
      media = document.createElement("img");
      media.alt = link.dataset.caption || "";
    }
    media.src = link.href;
    var caption = document.createElement("p");
    caption.className = "small";
    caption.textContent = link.dataset.caption || "";
    var close = document.createElement("button");
    close.type = "button";
    close.className = "lightbox-close";
    close.textContent = "Close";
    box.replaceChildren(media, caption, close);
    box.showModal();
  });

  function hover(e, entering) {
    var link = e.target.closest && e.target.closest("a.lightbox[data-kind=video]");
    if (!link || (e.relatedTarget && link.contains(e.relatedTarget))) return;
    var playing = link.querySelector("video.hover-play");
    if (entering && !playing) {
      var video = document.createElement("video");
      video.className = "hover-play thumb";
      video.muted = true;
      video.loop = true;
      video.autoplay = true;
      video.playsInline = true;
      video.src = link.href;
      link.appendChild(video);
      link.classList.add("playing");
    } else if (!entering && playing) {
      playing.remove();
      link.classList.remove("playing");
    }
  }
  document.addEventListener("mouseover", function (e) { hover(e, true); });
  document.addEventListener("mouseout", function (e) { hover(e, false); });
})();
