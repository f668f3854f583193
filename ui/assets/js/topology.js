// The topology view: controls, the layered graph (SVG), zoom/pan, find and
// hide, legend; clicking a node or an edge opens the side panel.

import { api } from './api.js';
import { layout } from './layout.js';
import { h, s, clear, fmtRate, fmtPct, fmtMs, note } from './util.js';

const WINDOWS = ['1m', '5m', '15m', '30m', '1h', '3h', '6h', '12h', '24h'];
const REFRESH = ['off', '5s', '10s', '30s', '1m'];
const GRAPHS = [
  ['versionedApp', 'Versioned app'],
  ['app', 'App'],
  ['workload', 'Workload'],
  ['service', 'Service'],
];
const LABELS = [
  ['none', 'No edge labels'],
  ['rate', 'Request rate'],
  ['share', 'Request share %'],
  ['error', 'Error %'],
  ['p50', 'p50 latency'],
  ['p95', 'p95 latency'],
  ['p99', 'p99 latency'],
];
export const DEFAULTS = {
  graph: 'versionedApp', ns: '', window: '5m', refresh: '10s', source: 'auto',
  label: 'rate', animate: '0', find: '', hide: '',
};

const HEALTH = { healthy: '#2e9d57', degraded: '#e0a800', failing: '#d93025', idle: '#9aa0a6' };

/** Conditions like `name=reviews, ns=default, version=v2, error>5, rate>1`. */
export function parseConditions(text) {
  return String(text || '')
    .split(',')
    .map((t) => t.trim())
    .filter(Boolean)
    .map((t) => {
      const m = /^(name|ns|namespace|version|error|rate)\s*(=|>|<)\s*(.+)$/i.exec(t);
      if (!m) return { key: 'name', op: '~', value: t.toLowerCase() };
      return { key: m[1].toLowerCase().replace('namespace', 'ns'), op: m[2], value: m[3].trim().toLowerCase() };
    });
}

function nodeMatches(n, conds) {
  return conds.some((c) => {
    const rate = n.inbound?.rate ?? 0;
    switch (c.key) {
      case 'name': return c.op === '=' ? n.name.toLowerCase() === c.value : n.name.toLowerCase().includes(c.value);
      case 'ns': return (n.namespace || '').toLowerCase() === c.value;
      case 'version': return (n.version || '').toLowerCase() === c.value;
      case 'error': return cmp((n.inbound?.error_ratio ?? 0) * 100, c);
      case 'rate': return cmp(rate, c);
      default: return false;
    }
  });
}

function edgeMatches(e, conds) {
  return conds.some((c) => (c.key === 'error' ? cmp((e.error_ratio ?? 0) * 100, c) : c.key === 'rate' ? cmp(e.rate ?? 0, c) : false));
}

function cmp(v, c) {
  const x = Number(c.value);
  if (!Number.isFinite(x)) return false;
  return c.op === '>' ? v > x : c.op === '<' ? v < x : v === x;
}

export function edgeLabel(e, mode) {
  switch (mode) {
    case 'rate': return `${fmtRate(e.rate)} rps`;
    case 'share': return fmtPct(e.share);
    case 'error': return fmtPct(e.error_ratio);
    case 'p50': case 'p95': case 'p99': return fmtMs(e.latency_ms?.[mode]);
    default: return '';
  }
}

export class TopologyView {
  constructor(app) {
    this.app = app;
    this.layoutCache = null; // {key, result}
    this.prevOrder = new Map();
    this.timer = null;
    this.paused = false;
    this.data = null;
    this.view = null; // {x, y, k}
    this.el = h('section', { class: 'topology', 'aria-label': 'Service topology' });
  }

  get state() {
    return { ...DEFAULTS, ...this.app.params };
  }

  set(patch) {
    this.app.navigate('topology', { ...this.app.params, ...patch });
  }

  mount(root) {
    clear(root, this.el);
    this.render();
    this.load();
  }

  unmount() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  schedule() {
    clearTimeout(this.timer);
    const secs = { '5s': 5, '10s': 10, '30s': 30, '1m': 60 }[this.state.refresh];
    if (secs && !this.paused) this.timer = setTimeout(() => this.load(), secs * 1000);
  }

  async load() {
    const st = this.state;
    this.loading = true;
    this.updateStatus();
    try {
      const data = await api.topology({
        graphType: st.graph, namespaces: st.ns, window: st.window, source: st.source,
      });
      this.data = data;
      this.error = null;
      if (!this.namespaces) this.namespaces = new Set();
      for (const n of data.nodes) if (n.namespace) this.namespaces.add(n.namespace);
    } catch (e) {
      this.error = e;
    }
    this.loading = false;
    if (this.app.route !== 'topology') return;
    this.render();
    this.app.showPanel();
    this.schedule();
  }

  controls() {
    const st = this.state;
    const select = (label, key, options) =>
      h('label', {},
        h('span', { class: 'lbl' }, label),
        h('select', {
          'data-control': key,
          onchange: (ev) => this.set({ [key]: ev.target.value }),
        }, options.map(([v, t]) => h('option', { value: v, selected: st[key] === v }, t))));
    const nss = [['', 'All namespaces'], ...[...(this.namespaces || [])].sort().map((n) => [n, n])];
    const paused = this.paused;
    return h('div', { class: 'controls', role: 'toolbar', 'aria-label': 'Graph controls' },
      select('Graph', 'graph', GRAPHS),
      select('Namespace', 'ns', nss),
      select('Window', 'window', WINDOWS.map((w) => [w, `Last ${w}`])),
      select('Refresh', 'refresh', REFRESH.map((r) => [r, r === 'off' ? 'No refresh' : `Every ${r}`])),
      h('button', {
        type: 'button', 'data-control': 'pause', 'aria-pressed': String(paused),
        onclick: () => { this.paused = !this.paused; this.paused ? clearTimeout(this.timer) : this.load(); this.render(); },
      }, paused ? 'Resume' : 'Pause'),
      select('Source', 'source', [['auto', 'Auto'], ['spans', 'Spans'], ['mesh', 'Mesh metrics']]),
      select('Edge labels', 'label', LABELS),
      h('label', { class: 'check' },
        h('input', { type: 'checkbox', 'data-control': 'animate', checked: st.animate === '1', onchange: (ev) => this.set({ animate: ev.target.checked ? '1' : '0' }) }),
        'Animate traffic'),
      h('input', {
        type: 'search', placeholder: 'Find: reviews, version=v2, error>5', value: st.find, 'data-control': 'find', 'aria-label': 'Find nodes or edges',
        onchange: (ev) => this.set({ find: ev.target.value }),
      }),
      h('input', {
        type: 'search', placeholder: 'Hide: ns=istio-system, rate<0.1', value: st.hide, 'data-control': 'hide', 'aria-label': 'Hide nodes or edges',
        onchange: (ev) => this.set({ hide: ev.target.value }),
      }),
      h('button', { type: 'button', 'data-control': 'fit', onclick: () => { this.userZoomed = false; this.applyView(true); } }, 'Fit'),
      h('span', { class: 'status', 'aria-live': 'polite' }));
  }

  updateStatus() {
    const el = this.el.querySelector('.status');
    if (!el) return;
    if (this.loading) el.textContent = 'Loading…';
    else if (this.data) {
      const t = new Date(this.data.end * 1000).toLocaleTimeString([], { hour12: false });
      el.textContent = `${this.data.nodes.length} nodes, ${this.data.edges.length} edges · ${this.data.source}${this.data.mesh_metrics ? ` (${this.data.mesh_metrics})` : ''} · ${t}`;
    }
  }

  render() {
    const st = this.state;
    const body = h('div', { class: 'graph-wrap' });
    clear(this.el, this.controls(), body, this.legend());
    this.updateStatus();
    if (this.error && !this.data) {
      body.append(note('error', `Could not load the topology: ${this.error.message}`));
      return;
    }
    if (!this.data) {
      body.append(note('loading', 'Loading the topology…'));
      return;
    }
    if (this.error) body.append(note('error', `Refresh failed (showing the previous graph): ${this.error.message}`));
    const hide = parseConditions(st.hide);
    const find = parseConditions(st.find);
    let nodes = this.data.nodes.filter((n) => !(hide.length && nodeMatches(n, hide)));
    const keep = new Set(nodes.map((n) => n.id));
    const edges = this.data.edges.filter((e) => keep.has(e.source) && keep.has(e.target) && !(hide.length && edgeMatches(e, hide)));
    if (!nodes.length) {
      body.append(note('empty', 'No traffic in this window yet: point your tracer at ',
        h('code', {}, `${location.origin.replace(/:\d+$/, ':9411')}/api/v2/spans`),
        ' or scrape your sidecars (see the README).'));
      return;
    }
    const t0 = performance.now();
    const key = JSON.stringify([nodes.map((n) => n.id), edges.map((e) => e.id)]);
    let lay = this.layoutCache?.key === key ? this.layoutCache.result : null;
    if (!lay) {
      lay = layout(nodes.map((n) => ({ id: n.id, root: n.flags?.root || n.node_type === 'unknown' })), edges, { prevOrder: this.prevOrder });
      this.layoutCache = { key, result: lay };
      this.prevOrder = lay.order;
    }
    this.lastLayoutMs = performance.now() - t0;
    const maxRate = Math.max(1e-9, ...edges.map((e) => e.rate || 0));
    const svg = s('svg', { class: 'graph', role: 'group', 'aria-label': 'Topology graph', tabindex: '-1' });
    const defs = s('defs', {}, Object.entries(HEALTH).map(([k, c]) =>
      s('marker', { id: `arrow-${k}`, viewBox: '0 0 10 10', refX: '9', refY: '5', markerUnits: 'userSpaceOnUse', markerWidth: '11', markerHeight: '11', orient: 'auto-start-reverse' },
        s('path', { d: 'M0,0 L10,5 L0,10 z', fill: c }))));
    const vp = s('g', { class: 'viewport' });
    svg.append(defs, vp);
    const gEdges = s('g', { class: 'edges' });
    const gLabels = s('g', { class: 'edge-labels' });
    const gNodes = s('g', { class: 'nodes' });
    vp.append(gEdges, gLabels, gNodes);
    const R = 18;
    const selected = this.app.params.edge || this.app.params.node;
    edges.forEach((e, i) => {
      const pts = lay.routes.get(i);
      if (!pts) return;
      const a = { ...pts[0], x: pts[0].x + R + 2 };
      const b = { ...pts[pts.length - 1], x: pts[pts.length - 1].x - R - 4 };
      const all = [a, ...pts.slice(1, -1), b];
      let d = `M${a.x},${a.y}`;
      for (let k = 1; k < all.length; k++) {
        const p = all[k - 1];
        const q = all[k];
        const mx = (p.x + q.x) / 2;
        d += ` C${mx},${p.y} ${mx},${q.y} ${q.x},${q.y}`;
      }
      const health = e.idle ? 'idle' : e.health || 'healthy';
      const w = 1.2 + 5 * Math.sqrt((e.rate || 0) / maxRate);
      const found = find.length && edgeMatches(e, find);
      const title = `${e.source} → ${e.target}: ${fmtRate(e.rate)} rps, ${fmtPct(e.error_ratio)} errors, p99 ${fmtMs(e.latency_ms?.p99)}`;
      const g = s('g', {
        class: `edge health-${health}${found ? ' found' : ''}${selected === e.id ? ' selected' : ''}${st.animate === '1' ? ' animated' : ''}`,
        'data-id': e.id, 'data-source': e.source, 'data-target': e.target, tabindex: '0', role: 'button', 'aria-label': title,
        onclick: () => this.app.select({ edge: e.id }),
        onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); this.app.select({ edge: e.id }); } },
      },
      s('title', {}, title),
      s('path', { class: 'hit', d }),
      s('path', { class: 'line', d, stroke: HEALTH[health], 'stroke-width': w.toFixed(2), 'marker-end': `url(#arrow-${health})` }));
      gEdges.append(g);
      const ef = e.flags || {};
      const marks = [ef.circuit_breaker && 'CB', ef.fault_injection && 'FI', ef.retries && 'RETRY', ef.timeouts && 'TIMEOUT', ef.no_route && 'NR']
        .filter(Boolean).join(' ');
      const text = [edgeLabel(e, st.label), marks].filter(Boolean).join(' · ');
      if (text) {
        const mid = all[Math.floor(all.length / 2)];
        const prevPt = all[Math.floor(all.length / 2) - 1] || mid;
        const lx = all.length % 2 === 0 ? (mid.x + prevPt.x) / 2 : mid.x;
        const ly = all.length % 2 === 0 ? (mid.y + prevPt.y) / 2 : mid.y;
        const label = s('g', { class: `edge-label health-${health}`, 'data-edge': e.id, transform: `translate(${lx},${ly - 6})` },
          s('rect', { x: -(text.length * 3.4 + 4), y: -9, width: text.length * 6.8 + 8, height: 14, rx: 3 }),
          s('text', { 'text-anchor': 'middle', y: 2 }, text));
        gLabels.append(label);
      }
    });
    for (const n of nodes) {
      const p = lay.pos.get(n.id);
      const health = n.health || 'healthy';
      const found = find.length && nodeMatches(n, find);
      const label = n.node_type === 'versioned_app' && n.version ? `${n.name} ${n.version}` : n.name;
      const sub = n.namespace && n.namespace !== 'default' ? n.namespace : '';
      const title = `${label}${n.namespace ? ` (${n.namespace})` : ''}: ${health}; in ${fmtRate(n.inbound?.rate)} rps, ${fmtPct(n.inbound?.error_ratio)} errors`;
      const g = s('g', {
        class: `node type-${n.node_type} health-${health}${found ? ' found' : ''}${selected === n.id ? ' selected' : ''}`,
        transform: `translate(${p.x},${p.y})`, 'data-id': n.id, 'data-name': n.name, tabindex: '0', role: 'button', 'aria-label': title,
        onclick: () => this.app.select({ node: n.id }),
        onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); this.app.select({ node: n.id }); } },
      }, s('title', {}, title), nodeShape(n, R, HEALTH[health]));
      g.append(s('text', { class: 'name', y: R + 14, 'text-anchor': 'middle' }, label));
      if (sub) g.append(s('text', { class: 'ns', y: R + 26, 'text-anchor': 'middle' }, sub));
      const badges = nodeBadges(n);
      badges.forEach((b, i) => {
        const x = -((badges.length - 1) * 15) + i * 30;
        g.append(s('g', { class: `badge badge-${b.key}`, transform: `translate(${x},${-R - 9})` },
          s('title', {}, b.title),
          s('rect', { x: -14, y: -7, width: 28, height: 13, rx: 6 }),
          s('text', { 'text-anchor': 'middle', y: 3 }, b.text)));
      });
      gNodes.append(g);
    }
    body.append(svg);
    this.svg = svg;
    this.vp = vp;
    this.bounds = { w: lay.width, h: lay.height };
    this.enableZoom(svg);
    this.resizer?.disconnect();
    this.resizer = new ResizeObserver(() => this.applyView(!this.userZoomed));
    this.resizer.observe(svg);
    requestAnimationFrame(() => this.applyView(!this.userZoomed));
  }

  legend() {
    const item = (cls, text) => h('li', {}, h('span', { class: `swatch ${cls}` }), text);
    return h('details', { class: 'legend' },
      h('summary', {}, 'Legend'),
      h('ul', {},
        item('health-healthy', 'healthy'), item('health-degraded', 'degraded (errors above 0.1 %)'),
        item('health-failing', 'failing (errors above 20 %)'), item('health-idle', 'idle (no requests in the window)'),
        h('li', {}, h('b', {}, 'CB'), ' circuit breaker tripped (UO seen)'),
        h('li', {}, h('b', {}, 'FI'), ' fault injection (FI/DI seen)'),
        h('li', {}, h('b', {}, 'mTLS'), ' mutual TLS'),
        h('li', {}, h('b', {}, 'VIRT'), ' not instrumented (named by its callers)'),
        h('li', {}, h('b', {}, 'ROOT'), ' ingress / where traffic enters'),
        h('li', {}, 'Shapes: ● workload / versioned app, ▢ app, ▲ service, ◆ outside the mesh; edge width ∝ request rate')));
  }

  enableZoom(svg) {
    let drag = null;
    svg.addEventListener('wheel', (ev) => {
      ev.preventDefault();
      const v = this.view || { x: 0, y: 0, k: 1 };
      const r = svg.getBoundingClientRect();
      const mx = ev.clientX - r.left;
      const my = ev.clientY - r.top;
      const k = Math.min(4, Math.max(0.1, v.k * Math.exp(-ev.deltaY * 0.0015)));
      this.view = { k, x: mx - ((mx - v.x) * k) / v.k, y: my - ((my - v.y) * k) / v.k };
      this.userZoomed = true;
      this.applyView(false);
    }, { passive: false });
    svg.addEventListener('pointerdown', (ev) => {
      if (ev.target.closest('.node, .edge')) return;
      drag = { x: ev.clientX, y: ev.clientY, v: this.view || { x: 0, y: 0, k: 1 } };
      svg.setPointerCapture(ev.pointerId);
    });
    svg.addEventListener('pointermove', (ev) => {
      if (!drag) return;
      this.view = { k: drag.v.k, x: drag.v.x + ev.clientX - drag.x, y: drag.v.y + ev.clientY - drag.y };
      this.userZoomed = true;
      this.applyView(false);
    });
    svg.addEventListener('pointerup', () => { drag = null; });
  }

  applyView(fit) {
    if (!this.svg) return;
    const r = this.svg.getBoundingClientRect();
    if (fit || !this.view) {
      // Room for the labels under and the badges above the outer nodes.
      const padX = 120;
      const padY = 60;
      const w = this.bounds.w + 2 * padX;
      const hgt = this.bounds.h + 2 * padY;
      const k = Math.min(1.6, Math.max(0.1, Math.min(r.width / w, r.height / hgt)));
      this.view = { k, x: (r.width - this.bounds.w * k) / 2, y: (r.height - this.bounds.h * k) / 2 };
    }
    const v = this.view;
    this.vp.setAttribute('transform', `translate(${v.x.toFixed(1)},${v.y.toFixed(1)}) scale(${v.k.toFixed(4)})`);
  }

  /** The node or edge with this id in the current data. */
  find(id) {
    return this.data?.nodes.find((n) => n.id === id) || this.data?.edges.find((e) => e.id === id);
  }
}

function nodeShape(n, R, color) {
  const common = { class: 'shape', stroke: color };
  switch (n.node_type) {
    case 'app': return s('rect', { ...common, x: -R, y: -R * 0.8, width: 2 * R, height: 1.6 * R, rx: 6 });
    case 'service': return s('path', { ...common, d: `M0,${-R} L${R},${R * 0.8} L${-R},${R * 0.8} z` });
    case 'unknown': return s('path', { ...common, d: `M0,${-R} L${R},0 L0,${R} L${-R},0 z` });
    case 'virtual': return s('circle', { ...common, r: R, 'stroke-dasharray': '4 3' });
    default: return s('circle', { ...common, r: R });
  }
}

function nodeBadges(n) {
  const f = n.flags || {};
  const b = [];
  if (f.circuit_breaker) b.push({ key: 'cb', text: 'CB', title: 'circuit breaker tripped (UO)' });
  if (f.fault_injection) b.push({ key: 'fi', text: 'FI', title: 'fault injection (FI/DI)' });
  if (f.mtls) b.push({ key: 'mtls', text: 'mTLS', title: 'mutual TLS' });
  if (f.virtual || n.node_type === 'virtual') b.push({ key: 'virtual', text: 'VIRT', title: 'not instrumented: named by its callers' });
  if (f.root || n.node_type === 'unknown') b.push({ key: 'root', text: 'ROOT', title: 'traffic enters the mesh here' });
  return b;
}

