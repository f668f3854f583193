// Web page performance (issue 7): first paint of the topology view for a
// 100-node / 300-edge graph in headless Chromium, and our layout's time,
// against dagre (npm; the usual JS layered-layout package) laying out the
// same graph in the same run.
//
//   node bench/ui_bench.mjs http://127.0.0.1:9411 [runs]
//
// Needs a running meshlens (any: /api/topology is answered here with the
// synthetic graph), MESHLENS_TEST_CHROMIUM and MESHLENS_TEST_NODE_MODULES
// (with playwright-core and dagre installed).

import { createRequire } from 'node:module';
import { layout } from '../ui/assets/js/layout.js';

const require = createRequire(`${process.env.MESHLENS_TEST_NODE_MODULES}/`);
const { chromium } = require('playwright-core');
const dagre = require('dagre');
const [base, runsArg] = process.argv.slice(2);
const runs = Number(runsArg || 7);

// A deterministic mesh: 100 services in 7 layers, 300 calls (mostly to the
// next layer, some skipping layers, a few back edges).
function graph() {
  let x = 42;
  const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const nodes = [];
  const layers = [1, 8, 18, 24, 22, 17, 10];
  layers.forEach((count, l) => {
    for (let i = 0; i < count; i++) {
      const name = l === 0 ? 'istio-ingressgateway' : `svc-${l}-${i}`;
      nodes.push({
        id: `default/app/${name}/v1`, name, node_type: 'versioned_app', namespace: 'default', app: name, version: 'v1',
        inbound: { rate: 10 * rnd(), error_ratio: rnd() < 0.1 ? 0.05 : 0 }, outbound: { rate: 1, error_ratio: 0 },
        health: rnd() < 0.1 ? 'degraded' : 'healthy', flags: { mtls: true, root: l === 0, circuit_breaker: rnd() < 0.03, fault_injection: false, virtual: false },
        seen_in: ['mesh'], layer: l,
      });
    }
  });
  const byLayer = (l) => nodes.filter((n) => n.layer === l);
  const edges = new Map();
  while (edges.size < 300) {
    const s = nodes[Math.floor(rnd() * (nodes.length - 10))];
    const r = rnd();
    const dl = r < 0.75 ? 1 : r < 0.93 ? 2 : -1;
    const cand = byLayer(s.layer + dl);
    if (!cand.length) continue;
    const t = cand[Math.floor(rnd() * cand.length)];
    const id = `${s.id}->${t.id}`;
    if (s === t || edges.has(id)) continue;
    edges.set(id, {
      id, source: s.id, target: t.id, protocol: 'http', rate: 50 * rnd(), requests: 1000, share: 0.3, error_ratio: rnd() < 0.05 ? 0.2 : 0,
      error_ratio_4xx: 0, latency_ms: { p50: 3, p95: 20, p99: 40 }, responses: [], flags: {}, health: 'healthy', idle: false, queries: {},
    });
  }
  return { source: 'mesh', graph: 'versioned_app', start: 0, end: Date.now() / 1000, window_seconds: 300, exact: false, warnings: [], nodes, edges: [...edges.values()] };
}

/** Crossings of the drawn edges: pairs of polyline segments that intersect
 * (shared endpoints excluded), the same measure for both layouts. */
function crossingsOf(polylines) {
  const segs = [];
  polylines.forEach((pts, i) => {
    for (let k = 0; k + 1 < pts.length; k++) segs.push([i, pts[k], pts[k + 1]]);
  });
  const orient = (a, b, c) => Math.sign((b.x - a.x) * (c.y - a.y) - (b.y - a.y) * (c.x - a.x));
  const same = (a, b) => Math.abs(a.x - b.x) < 1e-6 && Math.abs(a.y - b.y) < 1e-6;
  let n = 0;
  for (let i = 0; i < segs.length; i++) {
    for (let j = i + 1; j < segs.length; j++) {
      const [ei, a, b] = segs[i];
      const [ej, c, d] = segs[j];
      if (ei === ej || same(a, c) || same(a, d) || same(b, c) || same(b, d)) continue;
      if (orient(a, b, c) * orient(a, b, d) < 0 && orient(c, d, a) * orient(c, d, b) < 0) n++;
    }
  }
  return n;
}

const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const topo = graph();

// Layout alone, in Node (V8, as in Chromium): ours vs dagre.
const ours = [];
const theirs = [];
let crossings = 0;
let dagreCrossings = 0;
for (let i = 0; i < runs; i++) {
  let t = performance.now();
  const r = layout(topo.nodes.map((n) => ({ id: n.id, root: n.flags.root })), topo.edges);
  ours.push(performance.now() - t);
  crossings = crossingsOf(topo.edges.map((e, k) => r.routes.get(k) || []));
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: 'LR', nodesep: 50, ranksep: 180 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of topo.nodes) g.setNode(n.id, { width: 40, height: 40 });
  for (const e of topo.edges) g.setEdge(e.source, e.target);
  t = performance.now();
  dagre.layout(g);
  theirs.push(performance.now() - t);
  dagreCrossings = crossingsOf(topo.edges.map((e) => g.edge(e.source, e.target).points));
}

// First paint in headless Chromium: navigation start to the 100 nodes drawn
// (the frame after they are in the DOM).
const browser = await chromium.launch({ executablePath: process.env.MESHLENS_TEST_CHROMIUM, args: ['--no-sandbox'] });
const paint = [];
const inPage = [];
for (let i = 0; i < runs; i++) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.route('**/api/topology*', (route) => route.fulfill({ contentType: 'application/json', body: JSON.stringify(topo) }));
  await page.route('**/api/demo/scenario', (route) => route.fulfill({ status: 404, body: '{}' }));
  await page.goto(`${base}/#/topology?refresh=off`);
  await page.waitForFunction(() => document.querySelectorAll('.node').length === 100 && document.querySelectorAll('.edge').length === 300);
  paint.push(await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r(performance.now())))));
  inPage.push(await page.evaluate(() => window.meshlens.topology.lastLayoutMs));
  await page.close();
}
await browser.close();
const f = (xs) => `median ${median(xs).toFixed(1)} ms (min ${Math.min(...xs).toFixed(1)}, max ${Math.max(...xs).toFixed(1)})`;
console.log(`graph: ${topo.nodes.length} nodes, ${topo.edges.length} edges; ${runs} runs`);
console.log(`first paint of the graph in Chromium: ${f(paint)}`);
console.log(`our layout inside the page:          ${f(inPage)}`);
console.log(`our layout in node:                  ${f(ours)}; ${crossings} edge crossings`);
console.log(`dagre 0.8.5 layout in node:          ${f(theirs)}; ${dagreCrossings} edge crossings; time ratio dagre/ours ${(median(theirs) / median(ours)).toFixed(1)}x`);
