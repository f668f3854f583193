// The side panel for a node (a service's RED charts by version, inbound and
// outbound; response codes; top operations; sampled traces) or an edge (its
// figures, responses with flags, charts from its own PromQL, traces).

import { api } from './api.js';
import { lineChart } from './chart.js';
import { summarize, traceItems } from './traces.js';
import { h, clear, fmtRate, fmtPct, fmtMs, note, parseDuration } from './util.js';

const pctFmt = (v) => fmtPct(v);
const rateFmt = (v) => fmtRate(v);
const msFmt = (v) => fmtMs(v);

function kv(rows) {
  return h('dl', { class: 'kv' }, rows.filter(Boolean).flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function flagList(f = {}) {
  const names = {
    circuit_breaker: 'circuit breaker (UO)', fault_injection: 'fault injection (FI/DI)', retries: 'retries exhausted (URX)',
    timeouts: 'timeouts (UT)', no_route: 'no route (NR)', mtls: 'mTLS', virtual: 'not instrumented', root: 'root / ingress',
  };
  const on = Object.entries(f).filter(([, v]) => v).map(([k]) => h('span', { class: `flag flag-${k}` }, names[k] || k));
  return on.length ? h('div', { class: 'flags' }, on) : null;
}

function responsesTable(responses) {
  if (!responses?.length) return h('p', { class: 'muted' }, 'No responses in this window.');
  return h('table', { class: 'responses' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Code'), h('th', {}, 'Flags'), h('th', {}, 'Rate'), h('th', {}, 'Requests'))),
    h('tbody', {}, responses.map((r) => h('tr', { class: /^5|^0/.test(r.code || '') ? 'bad' : '' },
      h('td', {}, r.code || '–'), h('td', {}, r.flags && r.flags !== '-' ? r.flags : ''),
      h('td', {}, `${fmtRate(r.rate)} rps`), h('td', {}, Math.round(r.requests ?? 0))))));
}

/** Every Zipkin service name ([] when they cannot be listed). */
async function allZipkinServices() {
  try {
    return await api.zipkinServices();
  } catch {
    return [];
  }
}

/** Zipkin service names for an app: Istio's `<app>.<namespace>` and the SDK's `<app>`. */
function zipkinNames(all, app, ns) {
  return all.filter((n) => n === app || n === `${app}.${ns}` || (!ns && n.startsWith(`${app}.`)));
}

/** Sampled traces of `names` in the window: failed first, then slowest. */
export async function traceList(app, names, windowSecs, filter) {
  const box = h('div', { class: 'trace-list' }, note('loading', 'Loading traces…'));
  (async () => {
    try {
      const lists = await Promise.all(names.map((n) =>
        api.traces({ serviceName: n, lookback: Math.round(windowSecs * 1000), endTs: Date.now(), limit: 100 })));
      const seen = new Set();
      const rows = [];
      for (const tr of lists.flat()) {
        if (!tr.length || seen.has(tr[0].traceId)) continue;
        if (filter && !filter(tr)) continue;
        seen.add(tr[0].traceId);
        rows.push(summarize(tr));
      }
      rows.sort((a, b) => Number(b.failed) - Number(a.failed) || b.dur - a.dur);
      const top = rows.slice(0, 20);
      clear(box, top.length
        ? traceItems(top)
        : note('empty', `No sampled traces for ${app} in this window.`));
    } catch (e) {
      clear(box, note('error', `Could not load traces: ${e.message}`));
    }
  })();
  return box;
}

async function redCharts(name, direction, win, grafana) {
  const red = await api.red(name, { direction, window: win });
  const { start, end, step } = red;
  const byVersion = (list) => (list || []).map((x) => ({ name: x.version || Object.values(x.labels || {}).join(',') || name, points: x.values }));
  const lat = ['p50', 'p90', 'p99'].flatMap((q) => (red.series[q] || []).map((x) => ({
    name: `${x.version || name} ${q}`, points: x.values,
  })));
  const common = { start, end, step, grafana, range: win };
  return h('div', { class: 'charts', 'data-direction': direction },
    lineChart({ ...common, title: `Request rate (${direction}, rps)`, series: byVersion(red.series.rate), format: rateFmt, queries: [red.queries.rate] }),
    lineChart({ ...common, title: `Error ratio (${direction}, 5xx)`, series: byVersion(red.series.error_ratio), format: pctFmt, queries: [red.queries.error_ratio] }),
    lineChart({ ...common, title: `Latency p50 / p90 / p99 (${direction})`, series: lat, format: msFmt, queries: [red.queries.p50, red.queries.p90, red.queries.p99] }));
}

async function rangeChart(title, queries, names, win, format, grafana) {
  const end = Date.now() / 1000;
  const secs = parseDuration(win) || 300;
  const start = end - secs;
  const step = Math.max(5, Math.round(secs / 60));
  const series = [];
  for (let i = 0; i < queries.length; i++) {
    if (!queries[i]) continue;
    try {
      const r = await api.promRange(queries[i], start, end, step);
      for (const x of r.data?.result || []) {
        series.push({ name: names[i], points: x.values.map(([t, v]) => [t, Number(v)]) });
      }
    } catch { /* an empty chart says so */ }
  }
  return lineChart({ title, series, format, queries, start, end, step, grafana, range: win });
}

async function topOperations(names, win) {
  if (!names.length) return null;
  const re = names.map((n) => n.replace(/[.*+?^${}()|[\]\\]/g, '\\\\$&')).join('|');
  const q = `topk(8, sum by (span_name) (rate(traces_spanmetrics_calls_total{service=~"${re}",span_kind="SPAN_KIND_SERVER"}[${win}])))`;
  try {
    const end = Date.now() / 1000;
    const r = await api.promRange(q, end - 1, end, 1);
    const rows = (r.data?.result || []).map((x) => ({ name: x.metric.span_name, rate: Number(x.values.at(-1)?.[1] ?? 0) }))
      .sort((a, b) => b.rate - a.rate);
    if (!rows.length) return null;
    return h('table', { class: 'ops' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Operation (server spans)'), h('th', {}, 'Rate'))),
      h('tbody', {}, rows.map((o) => h('tr', {}, h('td', {}, o.name), h('td', {}, `${fmtRate(o.rate)} rps`)))));
  } catch {
    return null;
  }
}

export async function renderPanel(el, topo, sel, ctx) {
  const { window: win, grafana } = ctx;
  const winSecs = parseDuration(win) || 300;
  const close = h('button', { type: 'button', class: 'close', 'aria-label': 'Close panel', onclick: ctx.onClose }, '×');
  if (sel.edge) {
    const e = topo?.edges.find((x) => x.id === sel.edge);
    if (!e) return clear(el, close, note('empty', 'This edge has no traffic in the current window.'));
    const src = topo.nodes.find((n) => n.id === e.source) || { name: e.source };
    const dst = topo.nodes.find((n) => n.id === e.target) || { name: e.target };
    const lat = e.latency_ms || {};
    clear(el, close,
      h('h2', {}, `${src.name}${src.version ? ` ${src.version}` : ''} → ${dst.name}${dst.version ? ` ${dst.version}` : ''}`),
      h('p', { class: `health health-${e.health}` }, e.health, e.idle ? ' (idle)' : ''),
      flagList(e.flags),
      kv([
        ['Request rate', `${fmtRate(e.rate)} rps (${Math.round(e.requests ?? 0)} requests)`],
        ['Share of caller', fmtPct(e.share)],
        ['Errors', `${fmtPct(e.error_ratio)} 5xx, ${fmtPct(e.error_ratio_4xx)} 4xx`],
        ['Latency', `p50 ${fmtMs(lat.p50)} · p95 ${fmtMs(lat.p95)} · p99 ${fmtMs(lat.p99)}`],
        e.mtls_share !== undefined && ['mTLS', fmtPct(e.mtls_share)],
        ['Figures from', e.figures_from || topo.source],
      ]),
      h('h3', {}, 'Responses'), responsesTable(e.responses),
      h('div', { class: 'charts' }, note('loading', 'Loading charts…')),
      h('h3', {}, 'Sampled traces (failed first, then slowest)'),
      h('div', { class: 'traces-slot' }));
    const q = e.queries || {};
    const charts = await Promise.all([
      rangeChart('Request rate (rps)', [q.rate], ['rate'], win, rateFmt, grafana),
      rangeChart('Error ratio (5xx)', [q.error_ratio], ['errors'], win, pctFmt, grafana),
      rangeChart('Latency p50 / p95 / p99', [q.p50, q.p95, q.p99], ['p50', 'p95', 'p99'], win, msFmt, grafana),
    ]);
    const slot = el.querySelector('.charts');
    if (slot) clear(slot, charts);
    const all = await allZipkinServices();
    const names = zipkinNames(all, dst.app || dst.service || dst.name, dst.namespace);
    const srcNames = zipkinNames(all, src.app || src.service || src.name, src.namespace);
    const filter = srcNames.length ? (tr) => tr.some((x) => srcNames.includes(x.localEndpoint?.serviceName)) : null;
    const list = await traceList(dst.name, names.length ? names : srcNames, winSecs, names.length ? filter : null);
    el.querySelector('.traces-slot')?.replaceChildren(list);
    return;
  }
  const n = topo?.nodes.find((x) => x.id === sel.node);
  if (!n) return clear(el, close, note('empty', 'This node has no traffic in the current window.'));
  const app = n.app || n.service || n.name;
  const inbound = topo.edges.filter((e) => e.target === n.id);
  const responses = new Map();
  for (const e of inbound) {
    for (const r of e.responses || []) {
      const k = `${r.code}|${r.flags}`;
      const cur = responses.get(k) || { code: r.code, flags: r.flags, rate: 0, requests: 0 };
      cur.rate += r.rate || 0;
      cur.requests += r.requests || 0;
      responses.set(k, cur);
    }
  }
  clear(el, close,
    h('h2', {}, n.name, n.version ? ` ${n.version}` : ''),
    h('p', { class: `health health-${n.health}` }, `${n.health} · ${n.node_type.replace('_', ' ')}${n.namespace ? ` · ${n.namespace}` : ''}`),
    flagList(n.flags),
    kv([
      ['Inbound', `${fmtRate(n.inbound?.rate)} rps, ${fmtPct(n.inbound?.error_ratio)} errors`],
      ['Outbound', `${fmtRate(n.outbound?.rate)} rps, ${fmtPct(n.outbound?.error_ratio)} errors`],
      ['Seen in', (n.seen_in || []).join(', ')],
    ]),
    h('p', {}, h('a', { href: `#/service/${encodeURIComponent(app)}?window=${win}` }, `Open the ${app} service page`)),
    h('h3', {}, 'Responses (inbound)'), responsesTable([...responses.values()].sort((a, b) => b.requests - a.requests)),
    h('div', { class: 'charts-slot' }, note('loading', 'Loading charts…')),
    h('div', { class: 'ops-slot' }),
    h('h3', {}, 'Sampled traces (failed first, then slowest)'),
    h('div', { class: 'traces-slot' }));
  await fillService(el, app, n.namespace, win, grafana, n.node_type !== 'virtual' && n.node_type !== 'unknown');
}

/** Charts (inbound and outbound), top operations and traces of a service. */
export async function fillService(el, app, ns, win, grafana, withCharts = true) {
  const winSecs = parseDuration(win) || 300;
  const slot = el.querySelector('.charts-slot');
  if (slot && withCharts) {
    try {
      const [inb, outb] = await Promise.all([redCharts(app, 'inbound', win, grafana), redCharts(app, 'outbound', win, grafana)]);
      clear(slot, h('h3', {}, 'Inbound, by version'), inb, h('h3', {}, 'Outbound, by version'), outb);
    } catch (e) {
      clear(slot, note(e.status === 404 ? 'empty' : 'error', `No RED charts for ${app}: ${e.message}`));
    }
  } else if (slot) {
    clear(slot);
  }
  const names = zipkinNames(await allZipkinServices(), app, ns);
  const ops = await topOperations(names, win);
  el.querySelector('.ops-slot')?.replaceChildren(...(ops ? [h('h3', {}, 'Top operations'), ops] : []));
  const list = await traceList(app, names, winSecs, null);
  el.querySelector('.traces-slot')?.replaceChildren(list);
}
