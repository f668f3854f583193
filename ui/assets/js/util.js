// Small DOM and formatting helpers shared by every view.

const SVGNS = 'http://www.w3.org/2000/svg';

function put(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.setAttribute('class', v);
    else if (k === 'text') el.textContent = v;
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k in el && el.namespaceURI !== SVGNS && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An HTML element: h('div', {class: 'x', onclick: f}, child, ...). */
export const h = (tag, attrs, ...children) => put(document.createElement(tag), attrs, children);
/** An SVG element. */
export const s = (tag, attrs, ...children) => put(document.createElementNS(SVGNS, tag), attrs, children);

export function clear(el, ...children) {
  el.replaceChildren();
  return put(el, {}, children);
}

/** A Zipkin span that failed: an `error` tag, a 5xx, or OTel's ERROR status. */
export function isErrorSpan(span) {
  const t = span.tags || {};
  const code = Number(t['http.status_code'] || t['http.response.status_code'] || 0);
  return 'error' in t || code >= 500 || t['otel.status_code'] === 'ERROR';
}

export const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);

export function fmtRate(r) {
  r = num(r);
  if (r === null) return '–';
  if (r === 0) return '0';
  if (r >= 100) return r.toFixed(0);
  if (r >= 10) return r.toFixed(1);
  if (r >= 0.01) return r.toFixed(2);
  return r.toExponential(1);
}

export function fmtPct(x, digits = 1) {
  x = num(x);
  if (x === null) return '–';
  const p = x * 100;
  if (p > 0 && p < 0.1) return '<0.1%';
  return `${p.toFixed(p >= 10 || p === 0 ? 0 : digits)}%`;
}

export function fmtMs(ms) {
  ms = num(ms);
  if (ms === null) return '–';
  if (ms >= 1000) return `${(ms / 1000).toFixed(ms >= 10000 ? 0 : 2)} s`;
  if (ms >= 10) return `${ms.toFixed(0)} ms`;
  if (ms >= 1) return `${ms.toFixed(1)} ms`;
  return `${(ms * 1000).toFixed(0)} µs`;
}

/** Zipkin durations are microseconds. */
export const fmtUs = (us) => fmtMs(num(us) === null ? null : us / 1000);

export function fmtTime(unixMs) {
  const d = new Date(unixMs);
  return d.toLocaleTimeString([], { hour12: false });
}

export function fmtDateTime(unixMs) {
  const d = new Date(unixMs);
  return `${d.toLocaleDateString()} ${d.toLocaleTimeString([], { hour12: false })}`;
}

/** "5m" -> 300 (seconds). */
export function parseDuration(s) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(String(s || '').trim());
  if (!m) return null;
  const k = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 }[m[2]];
  return Number(m[1]) * k;
}

/** A stable colour per service name. */
export function serviceColor(name) {
  let x = 2166136261;
  for (const c of String(name)) x = Math.imul(x ^ c.charCodeAt(0), 16777619);
  const hue = ((x >>> 0) % 360);
  return `hsl(${hue} 55% 52%)`;
}

export function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  const ta = h('textarea', { style: { position: 'fixed', opacity: '0' } }, text);
  document.body.append(ta);
  ta.select();
  try { document.execCommand('copy'); } finally { ta.remove(); }
  return Promise.resolve();
}

/** A "loading / empty / error" placeholder. */
export function note(kind, text, ...extra) {
  return h('div', { class: `note note-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text, ...extra);
}
