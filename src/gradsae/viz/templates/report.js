(function(){
  var errs = [];
  window.addEventListener('error', function(e){
    errs.push(String(e.message));
    var box = document.getElementById('js-errors');
    if (box) { box.textContent = 'script error: ' + errs.join('; '); }
    document.body.setAttribute('data-js-error', '1');
  });
  function colour(v, m){
    if (!m || !v) { return 'transparent'; }
    var a = Math.min(1, Math.abs(v) / m) * 0.85;
    return v > 0 ? 'rgba(220,50,32,' + a.toFixed(3) + ')' : 'rgba(30,100,220,' + a.toFixed(3) + ')';
  }
  var sections = document.querySelectorAll('section.example');
  Array.prototype.forEach.call(sections, function(sec){
    var el = sec.querySelector('script.ex-data');
    if (!el) { return; }
    var d = JSON.parse(el.textContent);
    var toks = sec.querySelectorAll('.tokens .t');
    var buttons = sec.querySelectorAll('button.lat');
    function show(i){
      var vals = d.values[i] || [];
      var m = 0;
      for (var j = 0; j < vals.length; j++) { m = Math.max(m, Math.abs(vals[j])); }
      Array.prototype.forEach.call(toks, function(t, j){
        var v = vals[j] || 0;
        t.style.background = colour(v, m);
        t.title = d.labels[j] + '  latent ' + d.latents[i] + ': g = ' + Number(v).toPrecision(3);
      });
      Array.prototype.forEach.call(buttons, function(b, k){
        if (k === i) { b.classList.add('on'); } else { b.classList.remove('on'); }
      });
    }
    Array.prototype.forEach.call(buttons, function(b){
      b.addEventListener('click', function(){ show(parseInt(b.getAttribute('data-i'), 10)); });
    });
    if (d.latents.length) { show(0); }
    var box = sec.querySelector('.tokens');
    if (box) { box.scrollTop = box.scrollHeight; }
  });
  document.body.setAttribute('data-ready', '1');
})();
