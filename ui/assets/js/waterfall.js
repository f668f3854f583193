// The trace view: a waterfall of span bars on a time axis, coloured by
// service (errors red), with collapsible subtrees, span details, the
// critical path, Zipkin-style clock-skew adjustment and a minimap to zoom.

import { api } from './api.js';
import { h, s, clear, fmtUs, fmtDateTime, note, serviceColor, isErrorSpan as isError } from './util.js';

/** Spans to a tree. Zipkin shared spans (client and server halves with one
 * id) become two rows, the server half under its client half; children of
 * that id hang under the server half (its app made the calls). */
export function buildTree(spans) {
  const rows = spans.map((x, i) => ({ span: x, key: `${x.id}:${x.shared ? 's' : x.kind === 'SERVER' ? 'S' : i}`, children: [], start: x.timestamp || 0, dur: x.duration || 0 }));
  const byId = new Map();
  for (const r of rows) {
    const e = byId.get(r.span.id) || {};
    if (r.span.shared || (r.span.kind === 'SERVER' && e.client)) e.server = r;
    else if (!e.client) e.client = r;
    else e.server ||= r;
    byId.set(r.span.id, e);
  }
  const roots = [];
  for (const r of rows) {
    const e = byId.get(r.span.id);
    let parent = null;
    if (e.server === r && e.client && e.client !== r) parent = e.client;
    else if (r.span.parentId && byId.has(r.span.parentId)) {
      const p = byId.get(r.span.parentId);
      parent = p.server || p.client;
    }
    if (parent && parent !== r) parent.children.push(r);
    else roots.push(r);
  }
  const sortRec = (list) => {
    list.sort((a, b) => a.start - b.start);
    for (const r of list) sortRec(r.children);
  };
  sortRec(roots);
  return roots;
}

/** Zipkin's clock-skew correction: a server half on another host that does
 * not fit inside its client half is moved (with its subtree) to sit in the
 * middle of it. */
export function adjustSkew(roots) {
  const shift = (r, d) => {
    r.start += d;
    r.skew = (r.skew || 0) + d;
    for (const c of r.children) shift(c, d);
  };
  const visit = (r) => {
    for (const c of r.children) {
      const sameId = c.span.id === r.span.id;
      const otherHost = (c.span.localEndpoint?.ipv4 || c.span.localEndpoint?.serviceName) !== (r.span.localEndpoint?.ipv4 || r.span.localEndpoint?.serviceName);
      if (sameId && otherHost && c.dur <= r.dur && (c.start < r.start || c.start + c.dur > r.start + r.dur)) {
        shift(c, r.start + (r.dur - c.dur) / 2 - c.start);
      }
      visit(c);
    }
  };
  roots.forEach(visit);
}

/** The critical path: from each span's end, walk back through the child
 * that finished last before the current point. */
export function markCritical(roots) {
  const walk = (r) => {
    r.critical = true;
    let t = r.start + r.dur;
    const kids = r.children.slice().sort((a, b) => b.start + b.dur - (a.start + a.dur));
    for (const c of kids) {
      if (c.start + c.dur <= t + 1) {
        walk(c);
        t = c.start;
      }
    }
  };
  const main = roots.slice().sort((a, b) => b.dur - a.dur)[0];
  if (main) walk(main);
}

export class TraceView {
  constructor(app) {
    this.app = app;
    this.el = h('section', { class: 'trace-view', 'aria-label': 'Trace' });
    this.collapsed = new Set();
    this.range = null;
  }

  async mount(root, id) {
    clear(root, this.el);
    clear(this.el, note('loading', `Loading trace ${id}…`));
    try {
      this.spans = await api.trace(id);
    } catch (e) {
      clear(this.el, h('h2', {}, `Trace ${id}`), note(e.status === 404 ? 'empty' : 'error',
        e.status === 404 ? `No trace ${id}: it may have expired or never arrived.` : `Could not load trace ${id}: ${e.message}`));
      return;
    }
    this.id = id;
    // Links and event attributes, which the Zipkin model cannot carry.
    this.extras = new Map();
    try {
      for (const x of (await api.traceExtras(id)).spans) this.extras.set(x.id, x);
    } catch { /* the details just lack them */ }
    this.roots = buildTree(this.spans);
    adjustSkew(this.roots);
    markCritical(this.roots);
    const all = [];
    const flat = (r) => { all.push(r); r.children.forEach(flat); };
    this.roots.forEach(flat);
    this.all = all;
    this.t0 = Math.min(...all.map((r) => r.start));
    this.t1 = Math.max(...all.map((r) => r.start + r.dur));
    this.render();
  }

  render() {
    const { t0, t1 } = this;
    const [v0, v1] = this.range || [t0, t1];
    const span = Math.max(1, v1 - v0);
    const services = [...new Set(this.spans.map((x) => x.localEndpoint?.serviceName).filter(Boolean))];
    const errors = this.all.filter((r) => isError(r.span)).length;
    const rows = [];
    const walk = (r, depth) => {
      rows.push([r, depth]);
      if (!this.collapsed.has(r.key)) r.children.forEach((c) => walk(c, depth + 1));
    };
    this.roots.forEach((r) => walk(r, 0));
    const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => h('span', { style: { left: `${f * 100}%` } }, fmtUs(v0 - t0 + f * span)));
    const list = h('div', { class: 'waterfall', role: 'tree', 'aria-label': 'Spans' },
      h('div', { class: 'wf-axis' }, h('span', { class: 'wf-label' }, 'Service / span'), h('span', { class: 'wf-ticks' }, ticks)),
      rows.map(([r, depth]) => {
        const x = r.span;
        const svc = x.localEndpoint?.serviceName || '?';
        const left = ((r.start - v0) / span) * 100;
        const width = Math.max(0.3, (r.dur / span) * 100);
        const err = isError(x);
        const open = !this.collapsed.has(r.key);
        return h('div', {
          class: `wf-row${err ? ' error' : ''}${r.critical ? ' critical' : ''}${this.selected === r.key ? ' selected' : ''}`,
          role: 'treeitem', 'aria-expanded': r.children.length ? String(open) : null, tabindex: '0', 'data-span': x.id, 'data-key': r.key,
          onclick: () => { this.selected = r.key; this.render(); },
          onkeydown: (ev) => {
            if (ev.key === 'Enter') { this.selected = r.key; this.render(); }
            if (ev.key === 'ArrowLeft' && r.children.length) { this.collapsed.add(r.key); this.render(); }
            if (ev.key === 'ArrowRight') { this.collapsed.delete(r.key); this.render(); }
          },
        },
        h('span', { class: 'wf-label', style: { paddingLeft: `${depth * 14}px` } },
          r.children.length
            ? h('button', { type: 'button', class: 'toggle', 'aria-label': open ? 'Collapse' : 'Expand', onclick: (ev) => { ev.stopPropagation(); open ? this.collapsed.add(r.key) : this.collapsed.delete(r.key); this.render(); } }, open ? '▾' : '▸')
            : h('span', { class: 'toggle-space' }),
          h('span', { class: 'svc', style: { color: serviceColor(svc) } }, svc), ' ', h('span', { class: 'op' }, x.name || ''),
          x.kind ? h('span', { class: 'kind' }, x.kind.toLowerCase()) : null),
        h('span', { class: 'wf-track' },
          h('span', { class: 'wf-bar', style: { left: `${left}%`, width: `${width}%`, background: err ? '#d93025' : serviceColor(svc) }, title: `${svc}: ${x.name} ${fmtUs(r.dur)}` }),
          h('span', { class: 'wf-dur', style: { left: `${Math.min(left + width, 88)}%` } }, fmtUs(r.dur), r.skew ? ' (skew adjusted)' : '')));
      }));
    const sel = this.all.find((r) => r.key === this.selected);
    clear(this.el,
      h('header', { class: 'trace-head' },
        h('h2', {}, `Trace ${this.id}`),
        h('p', { class: 'muted' }, `${fmtDateTime(t0 / 1000)} · ${fmtUs(t1 - t0)} · ${this.spans.length} spans · ${services.length} services${errors ? ` · ${errors} with errors` : ''} · critical path outlined`),
        h('div', { class: 'trace-actions' },
          h('button', { type: 'button', onclick: () => { this.collapsed.clear(); this.render(); } }, 'Expand all'),
          h('button', { type: 'button', onclick: () => { for (const r of this.all) if (r.children.length) this.collapsed.add(r.key); this.render(); } }, 'Collapse all'),
          this.range ? h('button', { type: 'button', onclick: () => { this.range = null; this.render(); } }, 'Reset zoom') : null)),
      this.minimap(),
      list,
      sel ? this.detail(sel) : h('p', { class: 'muted' }, 'Select a span for its tags, annotations and endpoints.'));
  }

  minimap() {
    const W = 1000;
    const rowH = Math.max(1, Math.min(4, 60 / this.all.length));
    const H = Math.max(20, this.all.length * rowH);
    const span = Math.max(1, this.t1 - this.t0);
    const svg = s('svg', { class: 'minimap', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', 'aria-label': 'Minimap: drag to zoom' });
    this.all.forEach((r, i) => svg.append(s('rect', {
      x: ((r.start - this.t0) / span) * W, y: i * rowH, width: Math.max(1, (r.dur / span) * W), height: Math.max(1, rowH - 0.5),
      fill: isError(r.span) ? '#d93025' : serviceColor(r.span.localEndpoint?.serviceName || ''),
    })));
    if (this.range) {
      const [a, b] = this.range;
      svg.append(s('rect', { class: 'brush', x: ((a - this.t0) / span) * W, y: 0, width: ((b - a) / span) * W, height: H }));
    }
    let start = null;
    const toT = (ev) => {
      const r = svg.getBoundingClientRect();
      return this.t0 + Math.min(1, Math.max(0, (ev.clientX - r.left) / r.width)) * span;
    };
    svg.addEventListener('pointerdown', (ev) => { start = toT(ev); svg.setPointerCapture(ev.pointerId); });
    svg.addEventListener('pointerup', (ev) => {
      if (start === null) return;
      const end = toT(ev);
      const [a, b] = [Math.min(start, end), Math.max(start, end)];
      start = null;
      this.range = b - a > span / 200 ? [a, b] : null;
      this.render();
    });
    return svg;
  }

  detail(r) {
    const x = r.span;
    const extra = this.extras?.get(x.id);
    const rows = (obj) => Object.entries(obj || {}).sort(([a], [b]) => a.localeCompare(b));
    const ep = (e) => (e ? [e.serviceName, e.ipv4 || e.ipv6, e.port].filter(Boolean).join(' ') : '–');
    // OTLP resource attributes arrive as tags (as the Collector's Zipkin
    // exporter writes them); their semantic-convention namespaces say which.
    const isResource = (k) => /^(service|k8s|telemetry|host|process|container|cloud|os|deployment|faas)\./.test(k) && !/^service\.(address|port)$/.test(k);
    const resource = rows(x.tags).filter(([k]) => isResource(k));
    const tags = rows(x.tags).filter(([k]) => !isResource(k));
    return h('aside', { class: 'span-detail', 'aria-label': 'Span details' },
      h('h3', {}, `${x.localEndpoint?.serviceName || ''}: ${x.name || ''}`),
      h('dl', { class: 'kv' },
        h('dt', {}, 'Span id'), h('dd', {}, x.id), h('dt', {}, 'Parent'), h('dd', {}, x.parentId || '–'),
        h('dt', {}, 'Kind'), h('dd', {}, x.kind || '–'), h('dt', {}, 'Start'), h('dd', {}, `+${fmtUs(r.start - this.t0)}${r.skew ? ` (moved ${fmtUs(r.skew)} for clock skew)` : ''}`),
        h('dt', {}, 'Duration'), h('dd', {}, fmtUs(r.dur)), h('dt', {}, 'Local'), h('dd', {}, ep(x.localEndpoint)),
        h('dt', {}, 'Remote'), h('dd', {}, ep(x.remoteEndpoint)), h('dt', {}, 'Shared'), h('dd', {}, x.shared ? 'yes (server half of a shared span)' : 'no')),
      h('h4', {}, 'Tags'),
      tags.length ? h('table', { class: 'tags' }, tags.map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, String(v))))) : h('p', { class: 'muted' }, 'none'),
      h('h4', {}, 'Annotations / events'),
      x.annotations?.length
        ? h('table', { class: 'tags' }, x.annotations.map((a) => {
          const ev = extra?.events.find((e) => e.timestamp === a.timestamp && e.name === a.value);
          return h('tr', {}, h('th', {}, `+${fmtUs(a.timestamp - this.t0)}`), h('td', {}, a.value,
            ev?.attributes ? h('code', { class: 'attrs' }, ` ${JSON.stringify(ev.attributes)}`) : null));
        }))
        : h('p', { class: 'muted' }, 'none'),
      extra?.links?.length
        ? [h('h4', {}, 'Links'), h('table', { class: 'tags' }, extra.links.map((l) => h('tr', {},
          h('th', {}, h('a', { href: `#/trace/${l.traceId}` }, `${l.traceId} / ${l.spanId}`)),
          h('td', {}, l.attributes ? h('code', {}, JSON.stringify(l.attributes)) : '', l.traceState ? ` tracestate ${l.traceState}` : ''))))]
        : null,
      resource.length ? [h('h4', {}, 'Resource'), h('table', { class: 'tags' }, resource.map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, String(v)))))] : null);
  }
}
