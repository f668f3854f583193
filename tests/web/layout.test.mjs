// Properties of the page's graph layout (ui/assets/js/layout.js), in Node:
//   node tests/web/layout.test.mjs
// Exits non-zero with the failed property.

import assert from 'node:assert/strict';
import { layout } from '../../ui/assets/js/layout.js';

const ids = (...xs) => xs.map((id) => ({ id }));
const E = (...pairs) => pairs.map(([source, target]) => ({ source, target }));

// 1. Left to right: every edge of a DAG goes to a later layer; roots on the left.
{
  const nodes = ids('gw', 'pp', 'details', 'r1', 'r2', 'r3', 'ratings');
  nodes[0].root = true;
  const edges = E(['gw', 'pp'], ['pp', 'details'], ['pp', 'r1'], ['pp', 'r2'], ['pp', 'r3'], ['r2', 'ratings'], ['r3', 'ratings']);
  const r = layout(nodes, edges);
  for (const e of edges) assert.ok(r.pos.get(e.source).x < r.pos.get(e.target).x, `${e.source} -> ${e.target} goes right`);
  assert.equal(r.pos.get('gw').x, 0, 'the ingress is in the first layer');
  assert.equal(r.crossings, 0, 'Bookinfo draws without crossings');
  // Nodes of one layer do not overlap.
  const byX = new Map();
  for (const [id, p] of r.pos) (byX.get(p.x) || byX.set(p.x, []).get(p.x)).push([id, p.y]);
  for (const list of byX.values()) {
    list.sort((a, b) => a[1] - b[1]);
    for (let i = 1; i < list.length; i++) assert.ok(list[i][1] - list[i - 1][1] >= 60, `${list[i - 1][0]} and ${list[i][0]} keep their distance`);
  }
  // Routes start and end at the nodes.
  edges.forEach((e, i) => {
    const pts = r.routes.get(i);
    assert.deepEqual([pts[0].x, pts[0].y], [r.pos.get(e.source).x, r.pos.get(e.source).y]);
    assert.deepEqual([pts.at(-1).x, pts.at(-1).y], [r.pos.get(e.target).x, r.pos.get(e.target).y]);
  });
  // 2. Stability: the same graph with the previous order lays out identically,
  //    and adding a node keeps the others' relative order in each layer.
  const again = layout(nodes, edges, { prevOrder: r.order });
  for (const [id, p] of r.pos) assert.deepEqual(again.pos.get(id), p, `${id} does not move`);
  const grown = layout([...nodes, { id: 'r4' }], [...edges, { source: 'pp', target: 'r4' }], { prevOrder: r.order });
  const order = (res, list) => list.slice().sort((a, b) => res.pos.get(a).y - res.pos.get(b).y);
  assert.deepEqual(order(grown, ['details', 'r1', 'r2', 'r3']), order(r, ['details', 'r1', 'r2', 'r3']), 'siblings keep their order');
}

// 3. Cycles are broken (retry loops, callbacks) and long edges get bends.
{
  const nodes = ids('a', 'b', 'c', 'd');
  const edges = E(['a', 'b'], ['b', 'c'], ['c', 'a'], ['a', 'd'], ['c', 'd']);
  const r = layout(nodes, edges);
  assert.equal(r.pos.size, 4);
  const long = edges.findIndex((e) => e.source === 'a' && e.target === 'd');
  const span = Math.abs(r.pos.get('d').x - r.pos.get('a').x) / 220;
  assert.equal(r.routes.get(long).length, span + 1, 'one point per layer crossed');
}

// 4. Crossing reduction works: a twisted bipartite graph is untwisted.
{
  const nodes = ids('s', 'a1', 'a2', 'a3', 'b1', 'b2', 'b3');
  nodes[0].root = true;
  const edges = E(['s', 'a1'], ['s', 'a2'], ['s', 'a3'], ['a1', 'b3'], ['a2', 'b2'], ['a3', 'b1']);
  const r = layout(nodes, edges, { prevOrder: new Map([['b1', 0], ['b2', 1], ['b3', 2]]) });
  assert.equal(r.crossings, 0, 'no crossings left');
}

// 5. Empty and single-node graphs.
{
  assert.equal(layout([], []).pos.size, 0);
  const r = layout(ids('alone'), []);
  assert.deepEqual(r.pos.get('alone'), { x: 0, y: 0, layer: 0 });
}
console.log('layout: all properties hold');
