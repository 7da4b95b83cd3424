// The console works without this script; with it, uploads show their progress.
// A form with data-progress is sent by XMLHttpRequest so that the bytes sent can be shown in its
// <progress> element; the page the server answers with then replaces this one, as a plain submit would.
// A button with data-navigate submits natively: its answer is a page with headers of its own (the
// evidence report's stricter policy), which replacing this document's content would not apply.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("form[data-progress]").forEach(function (form) {
    var bar = document.getElementById(form.dataset.progress);
    if (!bar) { return; }
    form.addEventListener("submit", function (event) {
      if (event.submitter && event.submitter.hasAttribute("data-navigate")) { return; }
      event.preventDefault();
      var request = new XMLHttpRequest();
      request.open("POST", form.action);
      bar.hidden = false;
      request.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) { bar.max = e.total; bar.value = e.loaded; }
      });
      request.addEventListener("load", function () {
        document.open();
        document.write(request.responseText);
        document.close();
        if (request.responseURL) { history.replaceState(null, "", request.responseURL); }
      });
      request.send(new FormData(form, event.submitter));
    });
  });
});
