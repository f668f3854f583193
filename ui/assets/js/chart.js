// Line charts drawn as SVG: series over time, axes with readable ticks, a
// legend, a hover read-out; and the "PromQL" affordance every chart has.

import { h, s, fmtTime, copyText } from './util.js';

const PALETTE = ['#1a73e8', '#e8710a', '#188038', '#a142f4', '#d93025', '#12b5cb', '#f29900', '#5f6368'];

function niceStep(span, target) {
  const raw = span / Math.max(1, target);
  const p = 10 ** Math.floor(Math.log10(raw || 1));
  const m = raw / p;
  return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

/**
 * @param {{title: string, series: {name: string, points: [number, number][]}[],
 *          format: (v: number) => string, queries?: string[], grafana?: string,
 *          start: number, end: number}} c  times in unix seconds
 */
export function lineChart(c) {
  const W = 360;
  const H = 150;
  const m = { l: 48, r: 8, t: 8, b: 22 };
  const pts = c.series.flatMap((x) => x.points.filter((p) => Number.isFinite(p[1])));
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': c.title });
  const box = h('figure', { class: 'chart-box', 'data-chart': c.title },
    h('figcaption', {}, h('span', {}, c.title), promqlButton(c)),
    svg);
  if (!pts.length) {
    svg.append(s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'chart-empty' }, 'no data in this window'));
    return box;
  }
  const t0 = c.start;
  const t1 = Math.max(c.end, t0 + 1);
  let ymax = Math.max(...pts.map((p) => p[1]));
  if (!(ymax > 0)) ymax = 1;
  const ystep = niceStep(ymax, 4);
  ymax = Math.ceil((ymax * 1.05) / ystep) * ystep;
  const X = (t) => m.l + ((t - t0) / (t1 - t0)) * (W - m.l - m.r);
  const Y = (v) => H - m.b - (v / ymax) * (H - m.t - m.b);
  const axes = s('g', { class: 'axes' });
  for (let v = 0; v <= ymax + 1e-9; v += ystep) {
    axes.append(s('line', { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v), class: 'grid' }),
      s('text', { x: m.l - 4, y: Y(v) + 3, 'text-anchor': 'end' }, c.format(v)));
  }
  const tstep = niceStep(t1 - t0, 4);
  for (let t = Math.ceil(t0 / tstep) * tstep; t <= t1; t += tstep) {
    axes.append(s('text', { x: X(t), y: H - 6, 'text-anchor': 'middle' }, fmtTime(t * 1000).slice(0, 5)));
  }
  svg.append(axes);
  c.series.forEach((ser, i) => {
    const color = PALETTE[i % PALETTE.length];
    let d = '';
    let pen = false;
    let last = null;
    for (const [t, v] of ser.points) {
      if (!Number.isFinite(v)) { pen = false; continue; }
      // A gap longer than 3 steps breaks the line.
      if (pen && last !== null && t - last > 3 * (c.step || 15)) pen = false;
      d += `${pen ? 'L' : 'M'}${X(t).toFixed(1)},${Y(v).toFixed(1)}`;
      pen = true;
      last = t;
    }
    svg.append(s('path', { d, class: 'series', stroke: color, 'data-series': ser.name }));
  });
  const hover = s('g', { class: 'hover', visibility: 'hidden' });
  const hline = s('line', { y1: m.t, y2: H - m.b });
  const htext = s('text', { y: m.t + 10 });
  hover.append(hline, htext);
  svg.append(hover);
  svg.addEventListener('pointermove', (ev) => {
    const r = svg.getBoundingClientRect();
    const x = ((ev.clientX - r.left) / r.width) * W;
    const t = t0 + ((x - m.l) / (W - m.l - m.r)) * (t1 - t0);
    const vals = c.series.map((ser) => {
      let best = null;
      for (const p of ser.points) if (best === null || Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
      return best && Number.isFinite(best[1]) ? `${ser.name}: ${c.format(best[1])}` : null;
    }).filter(Boolean);
    hline.setAttribute('x1', x);
    hline.setAttribute('x2', x);
    htext.setAttribute('x', Math.min(x + 4, W - 120));
    htext.textContent = `${fmtTime(t * 1000)} ${vals.join('  ')}`;
    hover.setAttribute('visibility', 'visible');
  });
  svg.addEventListener('pointerleave', () => hover.setAttribute('visibility', 'hidden'));
  box.append(h('ul', { class: 'chart-legend' }, c.series.map((ser, i) =>
    h('li', {}, h('span', { class: 'swatch', style: { background: PALETTE[i % PALETTE.length] } }), ser.name))));
  return box;
}

/** "PromQL" button: shows the exact queries, copy, and open in Grafana. */
export function promqlButton(c) {
  const queries = (c.queries || []).filter(Boolean);
  if (!queries.length) return null;
  const details = h('details', { class: 'promql' },
    h('summary', { title: 'Show the PromQL behind this chart' }, 'PromQL'),
    queries.map((q) => h('div', { class: 'query' },
      h('code', {}, q),
      h('div', { class: 'query-actions' },
        h('button', { type: 'button', onclick: (ev) => { copyText(q); ev.target.textContent = 'Copied'; } }, 'Copy'),
        h('a', { href: grafanaExplore(c.grafana, q, c.range), target: '_blank', rel: 'noopener' }, 'Open in Grafana')))));
  return details;
}

export function grafanaExplore(base, expr, range = '1h') {
  const left = { datasource: 'meshlens-prometheus', queries: [{ refId: 'A', expr }], range: { from: `now-${range}`, to: 'now' } };
  return `${(base || 'http://localhost:3000').replace(/\/$/, '')}/explore?orgId=1&left=${encodeURIComponent(JSON.stringify(left))}`;
}
