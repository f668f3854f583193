// Browser test of meshlens's web page: playwright-core driving headless
// Chromium against a running `meshlens demo`. Run by tests/web_ui.rs:
//   node tests/web/ui.mjs BASE_URL SCREENSHOT_DIR
// Env: MESHLENS_TEST_CHROMIUM (browser binary), MESHLENS_TEST_NODE_MODULES
// (a folder whose node_modules has playwright-core). Exits non-zero, with
// the failed step, on any failure; every step leaves a screenshot.

import { createRequire } from 'node:module';
import { mkdirSync } from 'node:fs';
import assert from 'node:assert/strict';

const require = createRequire(`${process.env.MESHLENS_TEST_NODE_MODULES}/`);
const { chromium } = require('playwright-core');
const [base, shots] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({ executablePath: process.env.MESHLENS_TEST_CHROMIUM, args: ['--no-sandbox'] });
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
page.on('request', (r) => {
  const u = r.url();
  if (!u.startsWith(base) && !u.startsWith('data:')) problems.push(`external request: ${u}`);
});

let n = 0;
async function step(name, fn) {
  n += 1;
  const file = `${shots}/${String(n).padStart(2, '0')}-${name}.png`;
  try {
    await fn();
  } catch (e) {
    await page.screenshot({ path: file.replace('.png', '-FAILED.png') }).catch(() => {});
    console.error(`step ${n} "${name}" failed: ${e.stack || e}`);
    await browser.close();
    process.exit(1);
  }
  await page.screenshot({ path: file });
  console.log(`ok ${n} ${name}`);
}

const nodeNames = () => page.$$eval('.node', (els) => els.map((e) => e.dataset.name));
const edgeIds = () => page.$$eval('.edge', (els) => els.map((e) => e.dataset.id));

await step('topology', async () => {
  await page.goto(`${base}/#/topology?refresh=5s`);
  // The demo has just started: the graph fills in over a refresh or two.
  await page.waitForFunction(() => {
    const names = [...document.querySelectorAll('.node')].map((e) => e.dataset.name);
    return ['istio-ingressgateway', 'productpage', 'details', 'ratings'].every((n) => names.includes(n))
      && names.filter((x) => x === 'reviews').length === 3;
  }, null, { timeout: 60000 });
  const names = await nodeNames();
  for (const want of ['istio-ingressgateway', 'productpage', 'details', 'reviews', 'ratings']) assert.ok(names.includes(want), `node ${want} in ${names}`);
  assert.equal(names.filter((x) => x === 'reviews').length, 3, 'three reviews versions');
  const edges = await edgeIds();
  assert.ok(edges.includes('default/app/productpage/v1->default/app/reviews/v2'), `edges ${edges}`);
  const labels = await page.$$eval('.edge-label text', (els) => els.map((e) => e.textContent));
  assert.ok(labels.length >= edges.length - 1 && labels.every((l) => / rps/.test(l)), `labels ${labels}`);
  // Stable layout: once the set of nodes stops growing (the demo has just
  // started), a refresh leaves every node where it was.
  const where = () => page.$$eval('.node', (els) => Object.fromEntries(els.map((e) => [e.dataset.id, e.getAttribute('transform')])));
  const nextRefresh = async () => {
    const stamp = await page.textContent('.status');
    await page.waitForFunction((s) => { const t = document.querySelector('.status')?.textContent; return t && t !== s && !t.startsWith('Loading'); }, stamp, { timeout: 30000 });
  };
  let compared = false;
  for (let i = 0; i < 6 && !compared; i++) {
    const before = await where();
    await nextRefresh();
    const after = await where();
    const keys = (o) => Object.keys(o).sort().join(' ');
    if (keys(before) !== keys(after)) continue;
    for (const id of Object.keys(before)) assert.equal(after[id], before[id], `${id} moved on refresh`);
    compared = true;
  }
  assert.ok(compared, 'the node set never settled over 6 refreshes');
});

await step('graph-type-and-window', async () => {
  await page.selectOption('select[data-control="graph"]', 'app');
  await page.waitForFunction(() => document.querySelectorAll('.node.type-app').length > 0 && !document.querySelector('.node.type-versioned_app'));
  assert.equal((await nodeNames()).filter((x) => x === 'reviews').length, 1, 'one reviews app node');
  assert.match(page.url(), /graph=app/);
  await page.selectOption('select[data-control="window"]', '15m');
  await page.waitForFunction(() => /window=15m/.test(location.hash) && document.querySelector('.status')?.textContent.includes('nodes'));
  await page.selectOption('select[data-control="label"]', 'p99');
  await page.waitForFunction(() => [...document.querySelectorAll('.edge-label text')].some((t) => /ms|µs| s/.test(t.textContent)));
  await page.selectOption('select[data-control="graph"]', 'versionedApp');
  await page.waitForSelector('.node.type-versioned_app');
});

await step('reviews-panel', async () => {
  await page.locator('.node[data-name="reviews"]').first().click();
  await page.waitForSelector('#panel h2');
  assert.match(await page.textContent('#panel h2'), /reviews/);
  await page.waitForSelector('#panel .chart-box svg path.series', { timeout: 30000 });
  const charts = await page.$$eval('#panel .chart-box', (els) => els.map((e) => e.dataset.chart));
  assert.ok(charts.some((c) => c.startsWith('Request rate')) && charts.some((c) => c.startsWith('Latency')), `charts ${charts}`);
  await page.waitForSelector('#panel ol.traces li a', { timeout: 30000 });
  // Every chart offers its PromQL.
  await page.locator('#panel .promql summary').first().click();
  assert.match(await page.locator('#panel .promql code').first().textContent(), /istio_requests_total|traces_/);
});

await step('trace-waterfall', async () => {
  const href = await page.locator('#panel ol.traces li a').first().getAttribute('href');
  await page.goto(`${base}/${href}`);
  await page.waitForSelector('.wf-row', { timeout: 30000 });
  const rows = await page.locator('.wf-row').count();
  assert.ok(rows >= 4, `rows ${rows}`);
  const services = await page.$$eval('.wf-row .svc', (els) => [...new Set(els.map((e) => e.textContent))]);
  assert.ok(services.some((s) => s.startsWith('reviews')), `services ${services}`);
  await page.locator('.wf-row').nth(1).click();
  await page.waitForSelector('.span-detail table.tags');
  // Collapse the root: only it stays.
  await page.locator('.wf-row .toggle').first().click();
  assert.equal(await page.locator('.wf-row').count(), 1);
  await page.locator('.wf-row .toggle').first().click();
});

await step('trace-search', async () => {
  await page.goto(`${base}/#/traces?service=productpage.default&run=1&window=15m`);
  await page.waitForSelector('ol.traces li', { timeout: 30000 });
  const id = await page.locator('ol.traces li a').first().getAttribute('data-trace');
  await page.fill('#trace-id-form input', id);
  await page.click('#trace-id-form button');
  await page.waitForSelector('.wf-row');
  assert.match(page.url(), new RegExp(`#/trace/${id}`));
});

await step('fault-injection', async () => {
  await page.goto(`${base}/#/topology?window=1m&refresh=5s&label=error`);
  await page.waitForSelector('select[data-control="scenario"]');
  await page.selectOption('select[data-control="scenario"]', 'fault-abort');
  const edge = '.edge[data-target="default/service/ratings"]';
  await page.waitForSelector(`${edge}.health-failing`, { timeout: 60000 });
  const label = await page.locator(`.edge-label[data-edge$="->default/service/ratings"] text`).first().textContent();
  assert.match(label, /FI/);
  assert.match(label, /%/);
  await page.waitForSelector('.node[data-id="default/service/ratings"] .badge-fi', { timeout: 30000 }).catch(async () => {
    // The badge may sit on the caller (reviews v2) when the target is a service node.
    await page.waitForSelector('.node .badge-fi', { timeout: 5000 });
  });
  await page.selectOption('select[data-control="scenario"]', 'round-robin');
});

await step('deep-link', async () => {
  const url = `${base}/#/topology?graph=app&window=30m&label=share&node=default%2Fapp%2Fdetails`;
  const p2 = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await p2.goto(url);
  await p2.waitForSelector('#panel h2', { timeout: 30000 });
  assert.match(await p2.textContent('#panel h2'), /details/);
  assert.equal(await p2.$eval('select[data-control="graph"]', (e) => e.value), 'app');
  assert.equal(await p2.$eval('select[data-control="window"]', (e) => e.value), '30m');
  assert.equal(await p2.$eval('select[data-control="label"]', (e) => e.value), 'share');
  await p2.waitForSelector('.node.selected[data-name="details"]');
  // Keyboard: Escape closes the panel.
  await p2.keyboard.press('Escape');
  await p2.waitForFunction(() => document.getElementById('panel').hidden);
  await p2.screenshot({ path: `${shots}/deep-link-restored.png` });
  await p2.close();
});

await step('empty-and-errors', async () => {
  const before = problems.length;
  await page.goto(`${base}/#/trace/00000000000000000000000000000bad`);
  await page.waitForSelector('.note-empty');
  // The browser logs the expected 404 of that lookup; nothing else may appear.
  const extra = problems.splice(before);
  assert.ok(extra.every((p) => /status of 404/.test(p)), `unexpected: ${extra}`);
  await page.goto(`${base}/#/nowhere`);
  await page.waitForSelector('.note-error');
});

await browser.close();
assert.deepEqual(problems, [], 'the page logged errors or made external requests');
console.log(`all ${n} steps passed; screenshots in ${shots}`);
