// A layered (Sugiyama-style) left-to-right layout, written for meshlens:
// 1. cycle breaking (DFS back edges reversed), 2. layering (longest path
// from the roots, roots pulled next to what they call), 3. dummy nodes on
// edges that span layers, 4. crossing reduction (barycenter sweeps, seeded
// with the previous order so a refresh does not reshuffle), 5. coordinates
// (each node pulled toward its neighbours' mean, then spread to keep gaps).

/**
 * @param {{id: string, root?: boolean}[]} nodes
 * @param {{source: string, target: string}[]} edges
 * @param {{layerGap?: number, nodeGap?: number, prevOrder?: Map<string, number>}} opts
 * @returns {{pos: Map<string, {x: number, y: number, layer: number}>,
 *            routes: Map<number, {x: number, y: number}[]>, width: number, height: number}}
 */
export function layout(nodes, edges, opts = {}) {
  const layerGap = opts.layerGap ?? 220;
  const nodeGap = opts.nodeGap ?? 84;
  const prev = opts.prevOrder ?? new Map();
  const n = nodes.length;
  const idx = new Map(nodes.map((v, i) => [v.id, i]));
  const E = edges
    .map((e, i) => ({ i, s: idx.get(e.source), t: idx.get(e.target) }))
    .filter((e) => e.s !== undefined && e.t !== undefined && e.s !== e.t);

  // 1. Cycle breaking: DFS from roots first (then by previous order); back
  //    edges are reversed for layering only.
  const out = Array.from({ length: n }, () => []);
  for (const e of E) out[e.s].push(e);
  const indeg = new Array(n).fill(0);
  for (const e of E) indeg[e.t]++;
  const startOrder = [...nodes.keys()].sort((a, b) => {
    const ra = (nodes[a].root ? 0 : 1) + (indeg[a] === 0 ? 0 : 2);
    const rb = (nodes[b].root ? 0 : 1) + (indeg[b] === 0 ? 0 : 2);
    return ra - rb || (prev.get(nodes[a].id) ?? 1e9) - (prev.get(nodes[b].id) ?? 1e9) || a - b;
  });
  const state = new Uint8Array(n); // 0 new, 1 on stack, 2 done
  const reversed = new Set();
  for (const r of startOrder) {
    if (state[r]) continue;
    const stack = [[r, 0]];
    state[r] = 1;
    while (stack.length) {
      const top = stack[stack.length - 1];
      const [v, k] = top;
      if (k < out[v].length) {
        top[1]++;
        const e = out[v][k];
        if (state[e.t] === 1) reversed.add(e.i);
        else if (state[e.t] === 0) {
          state[e.t] = 1;
          stack.push([e.t, 0]);
        }
      } else {
        state[v] = 2;
        stack.pop();
      }
    }
  }
  const dag = E.map((e) => (reversed.has(e.i) ? { ...e, s: e.t, t: e.s, rev: true } : e));

  // 2. Layering: longest path (Kahn's order), then sources pulled right up
  //    to just before their nearest successor.
  const succ = Array.from({ length: n }, () => []);
  const pred = Array.from({ length: n }, () => []);
  const din = new Array(n).fill(0);
  for (const e of dag) {
    succ[e.s].push(e.t);
    pred[e.t].push(e.s);
    din[e.t]++;
  }
  const layer = new Array(n).fill(0);
  const queue = [];
  for (let v = 0; v < n; v++) if (din[v] === 0) queue.push(v);
  for (let qi = 0; qi < queue.length; qi++) {
    const v = queue[qi];
    for (const w of succ[v]) {
      layer[w] = Math.max(layer[w], layer[v] + 1);
      if (--din[w] === 0) queue.push(w);
    }
  }
  for (let v = 0; v < n; v++) {
    if (pred[v].length === 0 && succ[v].length > 0 && !nodes[v].root) {
      layer[v] = Math.min(...succ[v].map((w) => layer[w])) - 1;
    }
  }
  const minLayer = Math.min(0, ...layer);
  for (let v = 0; v < n; v++) layer[v] -= minLayer;
  const nLayers = n ? Math.max(...layer) + 1 : 0;

  // 3. Dummy nodes: every DAG edge becomes a chain of unit-length hops.
  let total = n;
  const vLayer = [...layer];
  const chains = new Map(); // edge index -> [vertex ids along the chain]
  const up = [];
  const down = [];
  const link = (a, b) => {
    (down[a] ||= []).push(b);
    (up[b] ||= []).push(a);
  };
  for (const e of dag) {
    const chain = [e.s];
    for (let l = layer[e.s] + 1; l < layer[e.t]; l++) {
      vLayer.push(l);
      chain.push(total++);
    }
    chain.push(e.t);
    for (let k = 0; k + 1 < chain.length; k++) link(chain[k], chain[k + 1]);
    chains.set(e.i, e.rev ? chain.slice().reverse() : chain);
  }
  const layers = Array.from({ length: nLayers }, () => []);
  for (let v = 0; v < total; v++) layers[vLayer[v]].push(v);

  // 4. Crossing reduction, seeded with the previous order.
  const order = new Float64Array(total);
  for (const L of layers) {
    L.sort((a, b) => {
      const pa = a < n ? prev.get(nodes[a].id) : undefined;
      const pb = b < n ? prev.get(nodes[b].id) : undefined;
      return (pa ?? 1e9) - (pb ?? 1e9) || a - b;
    });
    L.forEach((v, i) => (order[v] = i));
  }
  const crossings = () => {
    let c = 0;
    for (let l = 0; l + 1 < nLayers; l++) {
      const segs = [];
      for (const v of layers[l]) for (const w of down[v] || []) segs.push([order[v], order[w]]);
      for (let i = 0; i < segs.length; i++) {
        for (let j = i + 1; j < segs.length; j++) {
          if ((segs[i][0] - segs[j][0]) * (segs[i][1] - segs[j][1]) < 0) c++;
        }
      }
    }
    return c;
  };
  const sweep = (l, nbrs) => {
    const L = layers[l];
    const bary = new Map();
    for (const v of L) {
      const ns = nbrs[v] || [];
      bary.set(v, ns.length ? ns.reduce((a, w) => a + order[w], 0) / ns.length : order[v]);
    }
    L.sort((a, b) => bary.get(a) - bary.get(b) || order[a] - order[b]);
    L.forEach((v, i) => (order[v] = i));
  };
  let best = crossings();
  let bestOrder = layers.map((L) => L.slice());
  for (let it = 0; it < 12 && best > 0; it++) {
    if (it % 2 === 0) for (let l = 1; l < nLayers; l++) sweep(l, up);
    else for (let l = nLayers - 2; l >= 0; l--) sweep(l, down);
    const c = crossings();
    if (c < best) {
      best = c;
      bestOrder = layers.map((L) => L.slice());
    }
  }
  bestOrder.forEach((L, l) => {
    layers[l] = L;
    L.forEach((v, i) => (order[v] = i));
  });

  // 5. Coordinates: start centred, then pull toward neighbours and spread.
  const y = new Float64Array(total);
  const gapOf = (v) => (v < n ? nodeGap : nodeGap * 0.35);
  for (const L of layers) {
    let acc = 0;
    L.forEach((v, i) => {
      if (i) acc += (gapOf(L[i - 1]) + gapOf(v)) / 2;
      y[v] = acc;
    });
    const mid = acc / 2;
    for (const v of L) y[v] -= mid;
  }
  const spread = (L) => {
    for (let i = 1; i < L.length; i++) {
      const min = y[L[i - 1]] + (gapOf(L[i - 1]) + gapOf(L[i])) / 2;
      if (y[L[i]] < min) y[L[i]] = min;
    }
    for (let i = L.length - 2; i >= 0; i--) {
      const max = y[L[i + 1]] - (gapOf(L[i + 1]) + gapOf(L[i])) / 2;
      if (y[L[i]] > max) y[L[i]] = (y[L[i]] + max) / 2;
    }
    for (let i = 1; i < L.length; i++) {
      const min = y[L[i - 1]] + (gapOf(L[i - 1]) + gapOf(L[i])) / 2;
      if (y[L[i]] < min) y[L[i]] = min;
    }
  };
  for (let it = 0; it < 8; it++) {
    const nb = it % 2 === 0 ? up : down;
    const seq = it % 2 === 0 ? layers : layers.slice().reverse();
    for (const L of seq) {
      for (const v of L) {
        const ns = nb[v] || [];
        if (ns.length) y[v] = (y[v] + ns.reduce((a, w) => a + y[w], 0) / ns.length) / 2;
      }
      spread(L);
    }
  }
  let minY = Infinity;
  let maxY = -Infinity;
  for (let v = 0; v < total; v++) {
    minY = Math.min(minY, y[v]);
    maxY = Math.max(maxY, y[v]);
  }
  if (!Number.isFinite(minY)) minY = maxY = 0;
  const pos = new Map();
  const P = (v) => ({ x: vLayer[v] * layerGap, y: y[v] - minY, layer: vLayer[v] });
  for (let v = 0; v < n; v++) pos.set(nodes[v].id, P(v));
  const routes = new Map();
  for (const [i, chain] of chains) routes.set(i, chain.map(P));
  return {
    pos,
    routes,
    width: Math.max(0, nLayers - 1) * layerGap,
    height: maxY - minY,
    crossings: best,
    order: new Map(nodes.map((v, i) => [v.id, order[i] + vLayer[i] * 10000])),
  };
}
