// meshlens's web page: a hash router over the topology, service, trace
// search and trace views. The URL carries all state, so every view is a
// deep link. Nothing here talks to anything but this meshlens.

import { api } from './api.js';
import { TopologyView } from './topology.js';
import { renderPanel, fillService } from './panel.js';
import { TraceSearch } from './traces.js';
import { TraceView } from './waterfall.js';
import { h, clear, note } from './util.js';

class App {
  constructor() {
    this.main = document.getElementById('main');
    this.panel = document.getElementById('panel');
    this.params = {};
    this.route = '';
    this.topology = new TopologyView(this);
    this.grafana = localStorage.getItem('meshlens.grafana') || 'http://localhost:3000';
    const g = document.querySelector('#settings input[name="grafana"]');
    g.value = this.grafana;
    g.addEventListener('change', () => {
      this.grafana = g.value.trim() || 'http://localhost:3000';
      localStorage.setItem('meshlens.grafana', this.grafana);
      this.panelKey = null;
      if (this.route === 'topology') this.showPanel();
    });
    window.addEventListener('hashchange', () => this.onRoute());
    document.getElementById('trace-id-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const id = ev.target.elements.traceId.value.trim().toLowerCase();
      if (/^[0-9a-f]{1,32}$/.test(id)) location.hash = `#/trace/${id}`;
      else ev.target.elements.traceId.setCustomValidity('A trace id is 16 or 32 hex digits');
      ev.target.reportValidity();
    });
    document.getElementById('trace-id-form').elements.traceId.addEventListener('input', (ev) => ev.target.setCustomValidity(''));
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && !this.panel.hidden) this.select({});
    });
    this.demoControl();
    this.onRoute();
  }

  /** Parses `#/<view>[/<arg>][?k=v&...]`. */
  parse() {
    const hash = location.hash.replace(/^#\/?/, '');
    const [path, query = ''] = hash.split('?');
    const [view, ...rest] = path.split('/');
    return { view: view || 'topology', arg: decodeURIComponent(rest.join('/')), params: Object.fromEntries(new URLSearchParams(query)) };
  }

  navigate(view, params = {}, arg = '') {
    const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== '')).toString();
    const next = `#/${view}${arg ? `/${encodeURIComponent(arg)}` : ''}${q ? `?${q}` : ''}`;
    if (location.hash === next) this.onRoute();
    else location.hash = next;
  }

  /** Opens the side panel on a node or an edge (or closes it). */
  select(sel) {
    const p = { ...this.params };
    delete p.node;
    delete p.edge;
    this.navigate('topology', { ...p, ...sel });
  }

  onRoute() {
    const { view, arg, params } = this.parse();
    const prevView = this.route;
    const prevParams = this.params;
    this.params = params;
    this.route = view;
    for (const a of document.querySelectorAll('nav a[data-view]')) a.setAttribute('aria-current', a.dataset.view === view ? 'page' : 'false');
    if (view !== 'topology') this.topology.unmount();
    switch (view) {
      case 'topology': {
        const onlySelection = prevView === 'topology' && ['graph', 'ns', 'window', 'source'].every((k) => (prevParams[k] || '') === (params[k] || ''));
        document.title = 'meshlens · topology';
        if (onlySelection) this.topology.render();
        else this.topology.mount(this.main);
        this.showPanel();
        break;
      }
      case 'service':
        document.title = `meshlens · ${arg}`;
        this.hidePanel();
        this.servicePage(arg);
        break;
      case 'traces':
        document.title = 'meshlens · traces';
        this.hidePanel();
        new TraceSearch(this).mount(this.main);
        break;
      case 'trace':
        document.title = `meshlens · trace ${arg}`;
        this.hidePanel();
        new TraceView(this).mount(this.main, arg);
        break;
      default:
        clear(this.main, note('error', `No page "${view}". `, h('a', { href: '#/topology' }, 'Go to the topology')));
    }
  }

  async showPanel() {
    const sel = { node: this.params.node, edge: this.params.edge };
    if (!sel.node && !sel.edge) return this.hidePanel();
    this.panel.hidden = false;
    document.body.classList.add('with-panel');
    if (!this.topology.data) {
      // TopologyView.load() calls showPanel again once its data (or error) arrives.
      clear(this.panel, this.topology.error
        ? note('error', `Could not load the topology: ${this.topology.error.message}`)
        : note('loading', 'Loading…'));
      return;
    }
    const key = JSON.stringify([sel, this.params.window, this.topology.data.end]);
    if (this.panelKey === key) return;
    this.panelKey = key;
    await renderPanel(this.panel, this.topology.data, sel, {
      window: this.params.window || '5m', grafana: this.grafana, onClose: () => this.select({}),
    });
  }

  hidePanel() {
    this.panel.hidden = true;
    this.panelKey = null;
    document.body.classList.remove('with-panel');
  }

  async servicePage(name) {
    const win = this.params.window || '1h';
    const head = h('header', {},
      h('h2', {}, name),
      h('label', {}, 'Window ', h('select', { onchange: (ev) => this.navigate('service', { window: ev.target.value }, name) },
        ['5m', '15m', '1h', '3h', '6h', '24h'].map((w) => h('option', { value: w, selected: w === win }, `Last ${w}`)))),
      ' ', h('a', { href: '#/topology' }, 'Back to the topology'));
    const el = h('section', { class: 'service-page' }, head, h('div', { class: 'neighbours' }),
      h('div', { class: 'charts-slot' }, note('loading', 'Loading charts…')), h('div', { class: 'ops-slot' }),
      h('h3', {}, 'Sampled traces (failed first, then slowest)'), h('div', { class: 'traces-slot' }));
    clear(this.main, el);
    let ns = '';
    try {
      const svc = await api.service(name, { window: win });
      ns = svc.namespaces?.[0] || '';
      const link = (x) => h('li', {}, h('a', { href: `#/service/${encodeURIComponent(x.name)}?window=${win}` }, x.name), ` ${x.rate?.toFixed?.(2) ?? '–'} rps`);
      el.querySelector('.neighbours').replaceChildren(
        h('p', { class: 'muted' }, `versions ${svc.versions?.join(', ') || '–'} · workloads ${svc.workloads?.join(', ') || '–'} · seen in ${svc.seen_in?.join(', ') || '–'}`),
        h('div', { class: 'cols' },
          h('div', {}, h('h3', {}, 'Called by'), h('ul', {}, (svc.inbound || []).map(link))),
          h('div', {}, h('h3', {}, 'Calls'), h('ul', {}, (svc.outbound || []).map(link)))));
    } catch (e) {
      el.querySelector('.neighbours').replaceChildren(note(e.status === 404 ? 'empty' : 'error', e.status === 404 ? `No service ${name} in the last ${win}.` : e.message));
    }
    await fillService(el, name, ns, win, this.grafana, true);
  }

  /** Under `meshlens demo`: a scenario switch in the header. */
  async demoControl() {
    const slot = document.getElementById('demo');
    try {
      const st = await api.demo();
      const sel = h('select', { 'aria-label': 'Demo scenario', 'data-control': 'scenario' },
        st.scenarios.map((x) => h('option', { value: x.name, selected: x.name === st.scenario, title: x.description }, x.name)));
      sel.addEventListener('change', async () => {
        try {
          await api.setScenario(sel.value);
          slot.querySelector('.demo-msg').textContent = 'switched';
        } catch (e) {
          slot.querySelector('.demo-msg').textContent = e.message;
        }
      });
      clear(slot, h('label', {}, 'Demo scenario ', sel), h('span', { class: 'demo-msg', 'aria-live': 'polite' }));
      slot.hidden = false;
    } catch {
      slot.hidden = true; // not a demo
    }
  }
}

window.meshlens = new App();
