// edgefleet console: live regions and the login link. Everything works
// without this script except live updates (reload instead).
'use strict';
(function () {
  // A login link carries the token in the fragment (#token=...), which
  // never reaches a server log: fill the form, forget the fragment, log in.
  var form = document.getElementById('login-form');
  if (form && location.hash.indexOf('#token=') === 0) {
    var tok = decodeURIComponent(location.hash.slice('#token='.length));
    history.replaceState(null, '', location.pathname + location.search);
    document.getElementById('token').value = tok;
    form.submit();
  }

  // Live regions: ask every poll interval whether the region changed
  // (If-None-Match: a 304 costs the server one render and no bytes), and
  // swap it in when it did. Hidden tabs do not poll.
  var every = parseInt(document.body.getAttribute('data-poll'), 10) || 2000;
  // Once a form is sent (a logout, an action) or the page goes away, stop
  // polling: a poll answered 401 after a logout must not send the browser
  // to another page than the one the form leads to.
  var leaving = false;
  document.addEventListener('submit', function () { leaving = true; });
  window.addEventListener('pagehide', function () { leaving = true; });
  document.querySelectorAll('[data-live]').forEach(function (el) {
    var url = el.getAttribute('data-live');
    var etag = el.getAttribute('data-etag') || '';
    var stopped = false;
    function tick() {
      if (stopped || leaving) { return; }
      if (document.hidden) { setTimeout(tick, every); return; }
      var headers = {};
      if (etag) { headers['If-None-Match'] = etag; }
      fetch(url, { headers: headers, cache: 'no-store', credentials: 'same-origin' }).then(function (res) {
        if (leaving) { return; }
        if (res.status === 200) {
          etag = res.headers.get('ETag') || '';
          return res.text().then(function (html) {
            var focused = document.activeElement && el.contains(document.activeElement) ? document.activeElement.id : '';
            el.innerHTML = html;
            el.setAttribute('data-etag', etag);
            el.setAttribute('data-updated', String(Date.now()));
            if (focused && document.getElementById(focused)) { document.getElementById(focused).focus(); }
          });
        }
        if (res.status === 401) {
          stopped = true;
          location.href = '/ui/login?next=' + encodeURIComponent(location.pathname + location.search);
        }
      }).catch(function () { /* the server is away: try again next time */ }).then(function () {
        setTimeout(tick, every);
      });
    }
    setTimeout(tick, every);
  });
})();
