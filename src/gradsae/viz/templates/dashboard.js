// Search: filter the cards by latent number or by token text (promoted tokens and top tokens).
(function () {
  try {
    var index = JSON.parse(document.getElementById("index").textContent);
    var text = {};
    index.forEach(function (e) { text[e.l] = (e.l + " " + e.t).toLowerCase(); });
    var cards = Array.prototype.slice.call(document.querySelectorAll("#cards > .gd-card"));
    var q = document.getElementById("q"), count = document.getElementById("count");
    function apply() {
      var s = q.value.trim().toLowerCase(), n = 0;
      cards.forEach(function (c) {
        var l = c.getAttribute("data-latent");
        var hit = !s || (/^\d+$/.test(s) ? l === s : (text[l] || "").indexOf(s) >= 0);
        c.classList.toggle("gd-hidden", !hit);
        if (hit) n++;
      });
      count.textContent = String(n);
    }
    q.addEventListener("input", apply);
    var m = /[#&]q=([^&]*)/.exec(location.hash);
    if (m) { q.value = decodeURIComponent(m[1]); apply(); }
    document.body.setAttribute("data-ready", "1");
  } catch (e) {
    document.body.setAttribute("data-js-error", "1");
    throw e;
  }
})();
