// Trace search: service, operation, tags, duration bounds, window, errors
// only; results with duration bars. Every field is in the URL.

import { api } from './api.js';
import { h, clear, fmtUs, fmtDateTime, note, parseDuration, serviceColor, isErrorSpan } from './util.js';

const WINDOWS = ['5m', '15m', '1h', '3h', '6h', '12h', '24h', '7d'];

export class TraceSearch {
  constructor(app) {
    this.app = app;
    this.el = h('section', { class: 'trace-search', 'aria-label': 'Trace search' });
  }

  async mount(root) {
    clear(root, this.el);
    const p = this.app.params;
    const form = h('form', { class: 'search-form', onsubmit: (ev) => { ev.preventDefault(); this.submit(form); } });
    const services = h('select', { name: 'service', 'aria-label': 'Service' }, h('option', { value: '' }, 'Any service'));
    const ops = h('select', { name: 'operation', 'aria-label': 'Operation' }, h('option', { value: '' }, 'Any operation'));
    const field = (label, input) => h('label', {}, h('span', { class: 'lbl' }, label), input);
    clear(form,
      field('Service', services),
      field('Operation', ops),
      field('Tags', h('input', { name: 'tags', value: p.tags || '', placeholder: 'http.status_code=500 and response_flags=UO' })),
      field('Min duration', h('input', { name: 'minDuration', value: p.minDuration || '', placeholder: '100ms', size: 7 })),
      field('Max duration', h('input', { name: 'maxDuration', value: p.maxDuration || '', placeholder: '5s', size: 7 })),
      field('Window', h('select', { name: 'window' }, WINDOWS.map((w) => h('option', { value: w, selected: (p.window || '1h') === w }, `Last ${w}`)))),
      field('Limit', h('input', { name: 'limit', type: 'number', min: 1, max: 1000, value: p.limit || 20, size: 4 })),
      h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'errors', checked: p.errors === '1' }), 'Errors only'),
      h('button', { type: 'submit' }, 'Search'));
    const results = h('div', { class: 'results' });
    clear(this.el, h('h2', {}, 'Traces'), form, results);
    this.results = results;
    try {
      const names = await api.zipkinServices();
      for (const n of names) services.append(h('option', { value: n, selected: p.service === n }, n));
      if (!names.length) results.append(note('empty', 'No spans yet: point your tracer at ', h('code', {}, `${location.origin}/api/v2/spans`), '.'));
    } catch (e) {
      results.append(note('error', `Could not load services: ${e.message}`));
    }
    const loadOps = async () => {
      clear(ops, h('option', { value: '' }, 'Any operation'));
      if (!services.value) return;
      try {
        for (const o of await api.spanNames(services.value)) ops.append(h('option', { value: o, selected: p.operation === o }, o));
      } catch { /* leave "any" */ }
    };
    services.addEventListener('change', loadOps);
    await loadOps();
    if (p.service || p.tags || p.run === '1') this.search();
  }

  submit(form) {
    const f = new FormData(form);
    const params = { run: '1' };
    for (const [k, v] of f.entries()) if (v !== '') params[k] = k === 'errors' ? '1' : String(v);
    this.app.navigate('traces', params);
  }

  async search() {
    const p = this.app.params;
    clear(this.results, note('loading', 'Searching…'));
    const toUs = (d) => {
      const secs = parseDuration(d);
      return secs === null ? undefined : Math.round(secs * 1e6);
    };
    const tags = [p.tags, p.errors === '1' ? 'error' : ''].filter(Boolean).join(' and ');
    try {
      const traces = await api.traces({
        serviceName: p.service, spanName: p.operation, annotationQuery: tags || undefined,
        minDuration: toUs(p.minDuration), maxDuration: toUs(p.maxDuration),
        endTs: Date.now(), lookback: Math.round((parseDuration(p.window || '1h') || 3600) * 1000), limit: p.limit || 20,
      });
      this.show(traces);
    } catch (e) {
      clear(this.results, note('error', `Search failed: ${e.message}`));
    }
  }

  show(traces) {
    if (!traces.length) return clear(this.results, note('empty', 'No traces match. Widen the window or drop a condition.'));
    clear(this.results, h('p', { class: 'muted' }, `${traces.length} traces`), traceItems(traces.map(summarize), true));
  }
}

/** One trace (its Zipkin spans) as a list row. */
export function summarize(tr) {
  const start = Math.min(...tr.map((x) => x.timestamp || Infinity));
  const end = Math.max(...tr.map((x) => (x.timestamp || 0) + (x.duration || 0)));
  const root = tr.find((x) => !x.parentId) || tr[0];
  const services = [...new Set(tr.map((x) => x.localEndpoint?.serviceName).filter(Boolean))];
  return { id: tr[0].traceId, start, dur: end - start, root, services, failed: tr.some(isErrorSpan), n: tr.length };
}

/** Trace rows with duration bars, each opening the trace view. */
export function traceItems(rows, withServices = false) {
  const max = Math.max(1, ...rows.map((r) => r.dur));
  return h('ol', { class: 'traces' }, rows.map((r) => h('li', { class: r.failed ? 'failed' : '' },
    h('a', { href: `#/trace/${r.id}`, 'data-trace': r.id },
      h('span', { class: 'trace-name' }, `${r.root.localEndpoint?.serviceName || ''}: ${r.root.name || ''}`),
      h('span', { class: 'bar' }, h('span', { style: { width: `${(100 * r.dur) / max}%` } })),
      h('span', { class: 'trace-dur' }, fmtUs(r.dur)),
      h('span', { class: 'trace-meta' }, `${r.n} spans · ${fmtDateTime(r.start / 1000)}${r.failed ? ' · error' : ''} `,
        withServices ? r.services.map((x) => h('span', { class: 'chip', style: { borderColor: serviceColor(x) } }, x)) : null)))));
}
