// Rating page: answers live in localStorage under the page id; Export downloads them as JSON.
(function () {
  try {
    var data = JSON.parse(document.getElementById("rate-data").textContent);
    var storeKey = "gradsae-rate:" + data.page;
    var state = {};
    try { state = JSON.parse(localStorage.getItem(storeKey) || "{}") || {}; } catch (e) { state = {}; }
    state.ratings = state.ratings || {};
    var rater = document.getElementById("rater");
    function save() { localStorage.setItem(storeKey, JSON.stringify(state)); progress(); }
    function progress() {
      var n = 0;
      data.items.forEach(function (it) { if (state.ratings[it] && state.ratings[it].answer) n++; });
      document.getElementById("progress").textContent = String(n);
      data.items.forEach(function (it) {
        var el = document.getElementById(it);
        if (el) el.classList.toggle("rt-done", !!(state.ratings[it] && state.ratings[it].answer));
      });
    }
    function entry(item) { return state.ratings[item] || (state.ratings[item] = {answer: null, note: ""}); }
    rater.value = state.rater || "";
    rater.addEventListener("input", function () { state.rater = rater.value; save(); });
    Array.prototype.forEach.call(document.querySelectorAll("input[type=radio][data-item]"), function (r) {
      var e = state.ratings[r.getAttribute("data-item")];
      r.checked = !!(e && e.answer === r.value);
      r.addEventListener("change", function () { if (r.checked) { entry(r.getAttribute("data-item")).answer = r.value; save(); } });
    });
    Array.prototype.forEach.call(document.querySelectorAll("input.rt-note[data-item]"), function (t) {
      var e = state.ratings[t.getAttribute("data-item")];
      t.value = (e && e.note) || "";
      t.addEventListener("input", function () { entry(t.getAttribute("data-item")).note = t.value; save(); });
    });
    function exported() {
      var ratings = {};
      data.items.forEach(function (it) { var e = state.ratings[it]; if (e && (e.answer || e.note)) ratings[it] = {answer: e.answer, note: e.note || ""}; });
      return {schema: data.schema, page: data.page, rater: state.rater || "", exported: new Date().toISOString(),
              n_items: data.items.length, ratings: ratings};
    }
    document.getElementById("export").addEventListener("click", function () {
      var text = JSON.stringify(exported(), null, 1);
      document.getElementById("export-out").value = text;
      var a = document.createElement("a");
      a.href = URL.createObjectURL(new Blob([text], {type: "application/json"}));
      a.download = "ratings-" + data.page + (state.rater ? "-" + state.rater.replace(/[^A-Za-z0-9_-]/g, "_") : "") + ".json";
      document.body.appendChild(a); a.click(); a.remove();
    });
    progress();
    document.body.setAttribute("data-ready", "1");
  } catch (e) {
    document.body.setAttribute("data-js-error", "1");
    throw e;
  }
})();
