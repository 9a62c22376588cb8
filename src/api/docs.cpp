// API documentation (contract §12.3): GET /api/docs-json serves the OpenAPI document generated
// from the route table (api/openapi.cpp), GET /api/docs a self-contained HTML page (no external
// assets) that renders it. Both are public and not rate limited.
#include <mutex>
#include <string>

#include <boost/json/serialize.hpp>

#include "api/context.hpp"
#include "api/openapi.hpp"
#include "api/routes.hpp"
#include "api/services.hpp"
#include "http/router.hpp"

namespace statetrack::api {

namespace {

using boost::asio::awaitable;

// The document depends only on the (immutable after start) route table and the version, so
// it is rendered once per (router, version) and then served from memory.
std::string openapi_text(const http::router& router, const std::string& version) {
  static std::mutex mu;
  static const http::router* cached_router = nullptr;
  static std::size_t cached_routes = 0;
  static std::string cached_version;
  static std::string cached_text;
  std::lock_guard lock(mu);
  if (cached_text.empty() || cached_router != &router || cached_routes != router.routes().size() ||
      cached_version != version) {
    cached_text = boost::json::serialize(build_openapi(router, version));
    cached_router = &router;
    cached_routes = router.routes().size();
    cached_version = version;
  }
  return cached_text;
}

// GET /api/docs-json -> 200 OpenAPI 3.0.3 document
awaitable<void> get_docs_json(context& ctx) {
  ctx.reply(openapi_text(ctx.svc.router, ctx.svc.version));
  co_return;
}

constexpr std::string_view docs_html = R"html(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>statetrack API</title>
<style>
:root { --bg:#f6f7f8; --fg:#1d2329; --muted:#5c6670; --line:#dde2e6; --card:#fff; --code:#f1f3f5;
  --get:#1f7a44; --post:#1c5fb8; --put:#a86400; --delete:#b3261e; --patch:#6a3fb5; --other:#555; }
@media (prefers-color-scheme: dark) {
  :root { --bg:#15181b; --fg:#e4e7ea; --muted:#9aa4ad; --line:#2c3237; --card:#1c2024; --code:#23282d; }
}
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg); color:var(--fg); }
header { padding:20px 28px; border-bottom:1px solid var(--line); background:var(--card); }
header h1 { margin:0 0 6px; font-size:22px; }
.version { font-size:12px; color:var(--muted); margin-left:8px; font-weight:normal; }
.desc { white-space:pre-wrap; color:var(--muted); max-width:920px; margin:0; }
main { padding:16px 28px 60px; max-width:1120px; }
#filter { width:100%; max-width:440px; padding:6px 10px; border:1px solid var(--line); border-radius:6px; background:var(--card); color:var(--fg); font:inherit; }
h2 { margin:28px 0 2px; font-size:18px; }
.tagdesc { color:var(--muted); margin:0 0 8px; }
details.op, details.comp { background:var(--card); border:1px solid var(--line); border-radius:6px; margin:6px 0; }
details > summary { cursor:pointer; padding:8px 12px; display:flex; gap:12px; align-items:center; list-style:none; }
details > summary::-webkit-details-marker { display:none; }
.method { font:bold 11px ui-monospace,SFMono-Regular,Menlo,monospace; color:#fff; border-radius:4px; padding:3px 0; width:62px; text-align:center; flex:none; text-transform:uppercase; }
.m-get { background:var(--get); } .m-post { background:var(--post); } .m-put { background:var(--put); }
.m-delete { background:var(--delete); } .m-patch { background:var(--patch); } .m-other { background:var(--other); }
.path, code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12.5px; }
.path { font-weight:600; font-size:13.5px; }
.summary { color:var(--muted); flex:1; }
.lock { font-size:11px; color:var(--muted); border:1px solid var(--line); border-radius:10px; padding:0 7px; white-space:nowrap; }
.body { padding:4px 14px 14px; border-top:1px solid var(--line); }
h4 { margin:14px 0 6px; font-size:12px; text-transform:uppercase; letter-spacing:.05em; color:var(--muted); }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:12px; color:var(--muted); font-weight:600; }
.type { color:var(--post); font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12px; }
.req { color:var(--delete); font-size:11px; margin-left:4px; }
.enum { color:var(--put); font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12px; }
.note { color:var(--muted); }
.schema { background:var(--code); border-radius:6px; padding:8px 10px; overflow-x:auto; margin:4px 0; }
.schema ul { list-style:none; margin:0; padding-left:18px; border-left:1px dotted var(--line); }
.schema > ul { padding-left:0; border-left:none; }
.schema li { margin:2px 0; }
.status { font-weight:bold; font-family:ui-monospace,SFMono-Regular,Menlo,monospace; }
.muted { color:var(--muted); }
.error { color:var(--delete); }
.hidden { display:none; }
</style>
</head>
<body>
<header>
<h1 id="title">statetrack API<span class="version" id="version"></span></h1>
<p class="desc" id="desc"></p>
</header>
<main>
<input id="filter" type="search" placeholder="Filter by path, summary, tag or operation id" aria-label="Filter operations">
<div id="ops"><p class="muted">Loading the OpenAPI document&hellip;</p></div>
<h2 id="schemas-title" class="hidden">Schemas</h2>
<div id="schemas"></div>
</main>
<script>
(function () {
  'use strict';
  var spec = null;
  var METHODS = ['get', 'head', 'post', 'put', 'patch', 'delete', 'options'];

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function add(parent) {
    for (var i = 1; i < arguments.length; i++) if (arguments[i]) parent.appendChild(arguments[i]);
    return parent;
  }
  function refName(ref) { return String(ref).replace(/^#\/components\/schemas\//, ''); }
  function resolve(ref) {
    if (typeof ref !== 'string' || ref.charAt(0) !== '#') return null;
    var cur = spec;
    var parts = ref.slice(2).split('/');
    for (var i = 0; i < parts.length && cur; i++) {
      cur = cur[parts[i].replace(/~1/g, '/').replace(/~0/g, '~')];
    }
    return cur || null;
  }
  function typeLabel(s) {
    if (!s) return 'any';
    if (s.$ref) return refName(s.$ref);
    if (s.oneOf) return s.oneOf.map(typeLabel).join(' | ');
    var t = s.type || 'any';
    if (t === 'array') t = typeLabel(s.items) + '[]';
    else if (s.format) t += ' (' + s.format + ')';
    if (s.nullable) t += ' | null';
    return t;
  }
  function constraints(s) {
    var out = [];
    if (!s) return out;
    if (s.minimum !== undefined) out.push('\u2265 ' + s.minimum);
    if (s.maximum !== undefined) out.push('\u2264 ' + s.maximum);
    if (s.minLength !== undefined) out.push('min length ' + s.minLength);
    if (s.minItems !== undefined) out.push('min items ' + s.minItems);
    if (s.uniqueItems) out.push('unique items');
    if (s.pattern) out.push('pattern ' + s.pattern);
    if (s.additionalProperties === false) out.push('no other properties');
    return out;
  }
  // The schema that holds an object's properties, following $ref and array items.
  function expandable(s, seen) {
    var guard = 0;
    while (s && guard++ < 20) {
      if (s.$ref) {
        var name = refName(s.$ref);
        if (seen.indexOf(name) >= 0) return null;
        seen = seen.concat([name]);
        s = resolve(s.$ref);
        continue;
      }
      if (s.type === 'array' && s.items) { s = s.items; continue; }
      if (s.properties || (s.additionalProperties && typeof s.additionalProperties === 'object')) {
        return { schema: s, seen: seen };
      }
      return null;
    }
    return null;
  }
  function enumOf(s, seen) {
    while (s && s.$ref && seen.indexOf(refName(s.$ref)) < 0) s = resolve(s.$ref);
    if (s && s.type === 'array' && s.items) return enumOf(s.items, seen);
    return s && s.enum ? s.enum : null;
  }
  function describe(li, s, seen) {
    add(li, el('span', 'type', typeLabel(s)));
    var en = enumOf(s, seen);
    if (en) add(li, el('span', 'enum', ' \u2208 {' + en.map(function (v) { return JSON.stringify(v); }).join(', ') + '}'));
    var c = constraints(s);
    if (c.length) add(li, el('span', 'note', ' \u2014 ' + c.join(', ')));
    var d = s && (s.description || (s.$ref && (resolve(s.$ref) || {}).description));
    if (d && !(s.$ref && expandable(s, seen))) add(li, el('span', 'note', ' \u2014 ' + d));
  }
  function renderProps(s, seen) {
    var ul = el('ul');
    var required = s.required || [];
    var props = s.properties || {};
    Object.keys(props).forEach(function (name) {
      var p = props[name];
      var li = el('li');
      add(li, el('code', null, name));
      if (required.indexOf(name) >= 0) add(li, el('span', 'req', 'required'));
      add(li, document.createTextNode(' '));
      describe(li, p, seen);
      var inner = expandable(p, seen);
      if (inner) add(li, renderProps(inner.schema, inner.seen));
      ul.appendChild(li);
    });
    if (s.additionalProperties && typeof s.additionalProperties === 'object') {
      var li = el('li');
      add(li, el('code', 'note', '<any key>'), document.createTextNode(' '));
      describe(li, s.additionalProperties, seen);
      ul.appendChild(li);
    }
    return ul;
  }
  function renderSchema(s) {
    var box = el('div', 'schema');
    var head = el('div');
    describe(head, s, []);
    box.appendChild(head);
    var inner = expandable(s, []);
    if (inner) box.appendChild(renderProps(inner.schema, inner.seen));
    return box;
  }
  function renderContent(parent, content) {
    Object.keys(content || {}).forEach(function (mt) {
      add(parent, el('div', 'muted mono', mt));
      add(parent, renderSchema(content[mt].schema));
    });
  }
  function renderOperation(path, method, op) {
    var d = el('details', 'op');
    d.id = op.operationId || (method + ' ' + path);
    var sum = el('summary');
    var m = METHODS.indexOf(method) >= 0 && method !== 'head' && method !== 'options' ? method : 'other';
    add(sum, el('span', 'method m-' + m, method), el('span', 'path', path), el('span', 'summary', op.summary || ''));
    if (op.security && op.security.length) add(sum, el('span', 'lock', 'API key'));
    d.appendChild(sum);
    d.dataset.search = [method, path, op.summary, op.operationId, (op.tags || []).join(' ')].join(' ').toLowerCase();
    var built = false;
    d.addEventListener('toggle', function () {
      if (!d.open || built) return;
      built = true;
      var body = el('div', 'body');
      add(body, el('p', 'note', op.description || ''));
      add(body, el('div', 'muted', 'operationId: ' + (op.operationId || '\u2014')));
      if (op.security && op.security.length) {
        add(body, el('div', 'muted', 'Security: ' + op.security.map(function (o) { return Object.keys(o).join(' + '); }).join(' or ')));
      }
      if (op.parameters && op.parameters.length) {
        add(body, el('h4', null, 'Parameters'));
        var t = el('table');
        var hr = el('tr');
        ['Name', 'In', 'Type', 'Description'].forEach(function (h) { hr.appendChild(el('th', null, h)); });
        t.appendChild(hr);
        op.parameters.forEach(function (p) {
          if (p.$ref) p = resolve(p.$ref) || p;
          var tr = el('tr');
          var nameCell = add(el('td'), el('code', null, p.name));
          if (p.required) add(nameCell, el('span', 'req', 'required'));
          var typeCell = el('td');
          describe(typeCell, p.schema, []);
          add(tr, nameCell, el('td', 'muted', p['in']), typeCell, el('td', null, p.description || ''));
          t.appendChild(tr);
        });
        body.appendChild(t);
      }
      if (op.requestBody) {
        add(body, el('h4', null, 'Request body' + (op.requestBody.required ? ' (required)' : ' (optional)')));
        renderContent(body, op.requestBody.content);
      }
      add(body, el('h4', null, 'Responses'));
      var rt = el('table');
      Object.keys(op.responses || {}).forEach(function (code) {
        var r = op.responses[code];
        var tr = el('tr');
        var cell = el('td');
        add(cell, el('div', null, r.description || ''));
        renderContent(cell, r.content);
        add(tr, el('td', 'status', code), cell);
        rt.appendChild(tr);
      });
      body.appendChild(rt);
      d.appendChild(body);
    });
    return d;
  }
  function render() {
    var info = spec.info || {};
    document.title = (info.title || 'API') + ' ' + (info.version || '');
    document.getElementById('title').firstChild.textContent = info.title || 'API';
    document.getElementById('version').textContent = 'v' + (info.version || '?') + ' \u00b7 OpenAPI ' + (spec.openapi || '?');
    document.getElementById('desc').textContent = info.description || '';
    var groups = {};
    var order = (spec.tags || []).map(function (t) { return t.name; });
    var tagDesc = {};
    (spec.tags || []).forEach(function (t) { tagDesc[t.name] = t.description || ''; });
    Object.keys(spec.paths || {}).forEach(function (path) {
      var item = spec.paths[path];
      METHODS.forEach(function (method) {
        if (!item[method]) return;
        var op = item[method];
        var tag = (op.tags && op.tags[0]) || 'other';
        if (order.indexOf(tag) < 0) order.push(tag);
        (groups[tag] = groups[tag] || []).push(renderOperation(path, method, op));
      });
    });
    var ops = document.getElementById('ops');
    ops.textContent = '';
    order.forEach(function (tag) {
      if (!groups[tag]) return;
      var sec = el('section', 'tag');
      add(sec, el('h2', null, tag + ' (' + groups[tag].length + ')'));
      if (tagDesc[tag]) add(sec, el('p', 'tagdesc', tagDesc[tag]));
      groups[tag].forEach(function (d) { sec.appendChild(d); });
      ops.appendChild(sec);
    });
    var comps = (spec.components && spec.components.schemas) || {};
    var holder = document.getElementById('schemas');
    Object.keys(comps).forEach(function (name) {
      var d = el('details', 'comp');
      d.id = 'schema-' + name;
      add(d, add(el('summary'), el('span', 'path', name), el('span', 'summary', comps[name].description || '')));
      d.dataset.search = ('schema ' + name + ' ' + (comps[name].description || '')).toLowerCase();
      var built = false;
      d.addEventListener('toggle', function () {
        if (!d.open || built) return;
        built = true;
        add(d, add(el('div', 'body'), renderSchema({ $ref: '#/components/schemas/' + name })));
      });
      holder.appendChild(d);
    });
    document.getElementById('schemas-title').classList.remove('hidden');
    var target = decodeURIComponent(location.hash.slice(1));
    if (target) {
      var t = document.getElementById(target);
      if (t && t.tagName === 'DETAILS') { t.open = true; t.scrollIntoView(); }
    }
  }
  document.getElementById('filter').addEventListener('input', function (ev) {
    var q = ev.target.value.trim().toLowerCase();
    document.querySelectorAll('details.op, details.comp').forEach(function (d) {
      d.classList.toggle('hidden', q !== '' && d.dataset.search.indexOf(q) < 0);
    });
    document.querySelectorAll('section.tag').forEach(function (s) {
      s.classList.toggle('hidden', s.querySelectorAll('details.op:not(.hidden)').length === 0);
    });
  });
  // /api/docs -> /api/docs-json, also behind a path prefix or with a trailing slash.
  var url = location.pathname.replace(/\/+$/, '') + '-json';
  fetch(url, { headers: { Accept: 'application/json' } })
    .then(function (r) {
      if (!r.ok) throw new Error('HTTP ' + r.status + ' from ' + url);
      return r.json();
    })
    .then(function (doc) { spec = doc; render(); })
    .catch(function (e) {
      var ops = document.getElementById('ops');
      ops.textContent = '';
      ops.appendChild(el('p', 'error', 'Could not load the OpenAPI document: ' + e.message));
    });
})();
</script>
</body>
</html>
)html";

// GET /api/docs -> 200 HTML page that renders /api/docs-json
awaitable<void> get_docs(context& ctx) {
  ctx.res.content_type = "text/html; charset=utf-8";
  ctx.res.set_header("Content-Security-Policy",
                     "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                     "connect-src 'self'; base-uri 'none'; form-action 'none'; "
                     "frame-ancestors 'none'");
  ctx.res.set_header("Cache-Control", "no-cache");
  ctx.reply(std::string(docs_html));
  co_return;
}

}  // namespace

void register_docs_routes(http::router& r) {
  auto add = [&r](const char* pattern, const char* name, http::handler_fn fn, const char* summary) {
    http::route rt;
    rt.verb = http::method::get;
    rt.pattern = pattern;
    rt.name = name;
    rt.handler = fn;
    rt.limit = http::limit_class::none;
    rt.authenticated = false;
    rt.doc.summary = summary;
    rt.doc.tag = "docs";
    r.add(std::move(rt));
  };
  add("/api/docs", "get_docs", get_docs, "API documentation page (HTML)");
  add("/api/docs-json", "get_docs_json", get_docs_json, "OpenAPI 3.0.3 document");
}

}  // namespace statetrack::api
