// Every call the page makes: meshlens's own APIs, the Zipkin API and PromQL,
// all on the same origin (no external requests).

async function request(path, init) {
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new Error(`meshlens is not reachable (${e.message})`);
  }
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!r.ok) {
    const msg = (body && (body.error || body.message)) || text.slice(0, 300) || r.statusText;
    const err = new Error(`${r.status}: ${msg}`);
    err.status = r.status;
    throw err;
  }
  return body;
}

const qs = (params) => {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === '') continue;
    u.set(k, String(v));
  }
  const s = u.toString();
  return s ? `?${s}` : '';
};

export const api = {
  topology: (p) => request(`/api/topology${qs(p)}`),
  services: () => request('/api/services'),
  service: (name, p = {}) => request(`/api/services/${encodeURIComponent(name)}${qs(p)}`),
  red: (name, p) => request(`/api/services/${encodeURIComponent(name)}/red${qs(p)}`),
  zipkinServices: () => request('/api/v2/services'),
  spanNames: (service) => request(`/api/v2/spans${qs({ serviceName: service })}`),
  traces: (p) => request(`/api/v2/traces${qs(p)}`),
  trace: (id) => request(`/api/v2/trace/${encodeURIComponent(id)}`),
  traceExtras: (id) => request(`/api/traces/${encodeURIComponent(id)}/extras`),
  promRange: (query, start, end, step) =>
    request(`/api/v1/query_range${qs({ query, start, end, step })}`),
  demo: () => request('/api/demo/scenario'),
  setScenario: (scenario) =>
    request('/api/demo/scenario', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ scenario }),
    }),
};
