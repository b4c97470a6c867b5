// Autocomplete for the search box: an ARIA 1.2 combobox with a listbox popup.
// Typing (debounced) asks /api/suggest; ArrowDown/ArrowUp move through the students,
// Enter opens the one chosen (without a choice, Enter submits the search), Escape closes.
// Suggestions are built with textContent, never innerHTML. Without this script the box is
// a plain search form.
(function () {
  'use strict';
  var input = document.getElementById('q');
  var list = document.getElementById('suggestions');
  var status = document.getElementById('suggest-status');
  if (!input || !list || !window.fetch) return;

  var DEBOUNCE_MS = 150;
  var MIN_CHARS = 2;
  var items = [];
  var active = -1;
  var timer = null;
  var controller = null;

  function setExpanded(open) {
    list.hidden = !open;
    input.setAttribute('aria-expanded', open ? 'true' : 'false');
    if (!open) {
      setActive(-1);
    }
  }

  function setActive(i) {
    var options = list.querySelectorAll('[role="option"]');
    for (var k = 0; k < options.length; k++) {
      options[k].setAttribute('aria-selected', k === i ? 'true' : 'false');
    }
    active = i;
    if (i >= 0 && options[i]) {
      input.setAttribute('aria-activedescendant', options[i].id);
      options[i].scrollIntoView({ block: 'nearest' });
    } else {
      input.removeAttribute('aria-activedescendant');
    }
  }

  function choose(i) {
    if (items[i]) {
      // Each suggestion names its document's page (`href`: a path on this origin).
      var href = items[i].href;
      if (typeof href === 'string' && href.charAt(0) === '/' && href.charAt(1) !== '/') {
        window.location.assign(href);
      }
    }
  }

  function render(data) {
    items = Array.isArray(data) ? data : [];
    list.textContent = '';
    items.forEach(function (s, i) {
      var li = document.createElement('li');
      li.id = 'suggestion-' + i;
      li.setAttribute('role', 'option');
      li.setAttribute('aria-selected', 'false');
      var name = document.createElement('span');
      name.className = 'suggestion-name';
      name.textContent = s.name;
      li.appendChild(name);
      if (s.detail) {
        var detail = document.createElement('span');
        detail.className = 'suggestion-detail';
        detail.textContent = s.detail;
        li.appendChild(detail);
      }
      // mousedown, not click: it comes before the input's blur closes the list.
      li.addEventListener('mousedown', function (e) {
        e.preventDefault();
        choose(i);
      });
      list.appendChild(li);
    });
    setActive(-1);
    setExpanded(items.length > 0);
    if (status) {
      // The page names its documents on the list (data-noun, data-plural).
      var noun = list.getAttribute('data-noun') || 'result';
      var plural = list.getAttribute('data-plural') || 'results';
      status.textContent = items.length === 0 ? 'No ' + plural + ' found' :
        items.length + ' ' + (items.length === 1 ? noun : plural) + ' found; use the arrow keys to choose';
    }
  }

  function lookup(q) {
    if (controller) controller.abort();
    controller = typeof AbortController === 'function' ? new AbortController() : null;
    fetch('/api/suggest?q=' + encodeURIComponent(q), {
      headers: { Accept: 'application/json' },
      signal: controller ? controller.signal : undefined
    }).then(function (r) {
      return r.ok ? r.json() : [];
    }).then(function (data) {
      // An answer for text no longer in the box is dropped.
      if (input.value.trim() === q) render(data);
    }).catch(function () { /* aborted or offline: the form still works */ });
  }

  input.addEventListener('input', function () {
    clearTimeout(timer);
    var q = input.value.trim();
    if (q.length < MIN_CHARS) {
      items = [];
      list.textContent = '';
      setExpanded(false);
      return;
    }
    timer = setTimeout(function () { lookup(q); }, DEBOUNCE_MS);
  });

  input.addEventListener('keydown', function (e) {
    var n = items.length;
    switch (e.key) {
      case 'ArrowDown':
        if (n === 0) return;
        e.preventDefault();
        if (list.hidden) setExpanded(true);
        setActive((active + 1) % n);
        break;
      case 'ArrowUp':
        if (n === 0) return;
        e.preventDefault();
        if (list.hidden) setExpanded(true);
        setActive(active <= 0 ? n - 1 : active - 1);
        break;
      case 'Enter':
        if (!list.hidden && active >= 0) {
          e.preventDefault();
          choose(active);
        }
        break;
      case 'Escape':
        if (!list.hidden) {
          e.preventDefault();
          setExpanded(false);
        }
        break;
    }
  });

  input.addEventListener('blur', function () { setExpanded(false); });
})();
