// kiln monitor: plain JavaScript, no build step. Reads the hub's API with the
// token from localStorage and follows /v1/events/ws, resuming from the last
// event's cursor after a reconnect. Every value from the server is put into
// the page as text (never as HTML).
'use strict';

const PAGE_SIZE = 50;          // jobs per page: the list is always paged
const MACHINES_EVERY_MS = 5000; // machine cards refresh
const CHART_EVERY_MS = 2000;    // queue depth samples
const CHART_POINTS = 150;       // samples kept (5 minutes)
const REFRESH_DELAY_MS = 300;   // events coalesce into one table refresh

const state = {
  token: localStorage.getItem('kiln.token') || '',
  role: null,
  cursor: '',        // the last event's cursor, for resuming
  socket: null,
  retryMs: 500,
  pageCursors: [''], // cursors of the pages seen, to go back to the first
  nextCursor: null,
  machines: [],
  samples: [],       // [{t, pending, running}]
  jobRows: new Map(),
  refreshTimer: null,
  jobSource: null,
};

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'style') node.style.cssText = v; // CSSOM: allowed by the page's CSP
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function showError(message) {
  const box = $('#error');
  box.textContent = message || '';
  box.hidden = !message;
}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = 'Bearer ' + state.token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const msg = (data.error && data.error.message) || res.status + ' ' + res.statusText;
    const err = new Error(msg);
    err.status = res.status;
    throw err;
  }
  return data;
}

const isAdmin = () => state.role === 'admin';
const canSubmit = () => state.role === 'admin' || state.role === 'submit';
const fmtTime = (ms) => (ms ? new Date(Number(ms)).toLocaleTimeString() : '');
const pct = (v) => Math.max(0, Math.min(100, Number(v) || 0));

// ---- machines ---------------------------------------------------------------

function meter(value, max, label) {
  const p = max > 0 ? (100 * value) / max : 0;
  return el('div', { class: 'meter', title: label }, el('span', { style: `width:${pct(p)}%` }));
}

// A worker service's boot phase, from its supervisor state.
function bootPhase(svc) {
  if (!svc.name.startsWith('worker-')) return null;
  if (svc.state === 'starting') return 'booting';
  if (svc.state === 'running' && !svc.ready) return 'warming up';
  return null;
}

function serviceItem(machine, svc) {
  const phase = bootPhase(svc);
  const restart = isAdmin() && machine.state !== 'offline'
    ? el('button', { class: 'restart', 'data-service': svc.name, onclick: () => restartService(machine.id, svc.name) }, 'restart')
    : null;
  return el('li', { 'data-service': svc.name },
    el('span', {}, svc.name, ' ', el('span', { class: 'badge ' + (phase ? 'booting' : svc.state) }, phase || svc.state)),
    el('span', { class: 'muted' }, `${svc.restarts || 0} restart${svc.restarts === 1 ? '' : 's'}`), restart);
}

function gpuItem(gpu) {
  const used = gpu.memory_used_mb || 0, total = gpu.memory_total_mb || 0;
  const util = gpu.utilization_pct >= 0 ? `${gpu.utilization_pct}%` : 'n/a';
  return el('li', {}, el('span', {}, `GPU ${gpu.index} ${gpu.name}`),
    meter(used, total, `${used} / ${total} MB`), el('span', { class: 'muted' }, `${Math.round(used / 1024)}/${Math.round(total / 1024)} GB · ${util}`));
}

function machineCard(m) {
  const wake = isAdmin() && m.state === 'offline' && m.wake
    ? el('button', { onclick: () => wakeMachine(m.id) }, 'wake') : null;
  const specs = m.specs || {};
  return el('article', { class: 'card machine', 'data-id': m.id, 'data-state': m.state },
    el('h3', {}, el('span', {}, m.id), el('span', { class: 'badge ' + m.state }, m.state)),
    el('div', { class: 'muted' }, [m.machine_type, m.agent_state, specs.cpus ? `${specs.cpus} CPUs` : null,
      `${(m.current_jobs || []).length} running`].filter(Boolean).join(' · ')),
    el('ul', {}, (m.gpus || []).map(gpuItem)),
    el('ul', {}, (m.services || []).map((s) => serviceItem(m, s))),
    wake);
}

// fetched: a GET /v1/machines already under way (the first render starts
// it beside the other requests).
async function loadMachines(fetched) {
  const data = await (fetched || api('GET', '/v1/machines'));
  state.machines = data.machines || [];
  const cards = $('#machines');
  cards.replaceChildren(...state.machines.map(machineCard));
  $('#machine-count').textContent = `${state.machines.length}`;
  const select = $('#machine-select'), chosen = select.value;
  select.replaceChildren(el('option', { value: '' }, 'any capable machine'),
    ...state.machines.map((m) => el('option', { value: m.id, 'data-state': m.state }, `${m.id} (${m.state})`)));
  select.value = chosen;
  updateOfflineRow();
}

async function wakeMachine(id) {
  try { await api('POST', `/v1/machines/${encodeURIComponent(id)}/wake`); showError(''); } catch (e) { showError(e.message); }
}

async function restartService(id, name) {
  try {
    await api('POST', `/v1/machines/${encodeURIComponent(id)}/services/${encodeURIComponent(name)}/restart`);
    showError('');
    loadMachines();
  } catch (e) { showError(e.message); }
}

// ---- jobs table --------------------------------------------------------------

function jobRow(job) {
  const cancel = canSubmit() && ['pending', 'delayed', 'running'].includes(job.state)
    ? el('button', { class: 'danger', onclick: (ev) => { ev.preventDefault(); cancelJob(job.id); } }, 'cancel') : null;
  const row = el('tr', { 'data-job': job.id, 'data-state': job.state },
    el('td', {}, el('a', { href: '#/job/' + encodeURIComponent(job.id) }, job.id)),
    el('td', {}, el('span', { class: 'badge ' + job.state }, job.state)),
    el('td', {}, el('progress', { max: 100, value: pct(job.progress) }), ' ',
      el('span', { class: 'muted message' }, job.progress_message || '')),
    el('td', {}, job.priority ?? ''), el('td', {}, job.worker || ''),
    el('td', {}, fmtTime(job.created_at)), el('td', {}, cancel));
  return row;
}

function jobQuery(cursor) {
  const form = new FormData($('#filters'));
  const q = new URLSearchParams({ limit: PAGE_SIZE });
  for (const k of ['service', 'state']) if (form.get(k)) q.set(k, form.get(k));
  if (cursor) q.set('cursor', cursor);
  return '/v1/jobs?' + q;
}

async function loadJobs(fetched) {
  const cursor = state.pageCursors[state.pageCursors.length - 1];
  const data = await (fetched || api('GET', jobQuery(cursor)));
  state.jobRows = new Map();
  const rows = (data.jobs || []).map((job) => { const r = jobRow(job); state.jobRows.set(job.id, r); return r; });
  $('#jobs tbody').replaceChildren(...rows);
  state.nextCursor = data.next_cursor || null;
  $('#next-page').disabled = !state.nextCursor;
}

function scheduleRefresh() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    loadJobs().catch((e) => showError(e.message));
  }, REFRESH_DELAY_MS);
}

async function cancelJob(id) {
  try { await api('DELETE', `/v1/jobs/${encodeURIComponent(id)}`); scheduleRefresh(); } catch (e) { showError(e.message); }
}

// ---- queue depth chart -------------------------------------------------------

async function sampleQueues() {
  const data = await api('GET', '/v1/queues');
  const queues = data.queues || [];
  const sum = (k) => queues.reduce((a, q) => a + (Number(q[k]) || 0), 0);
  state.samples.push({ t: Date.now(), pending: sum('pending') + sum('delayed'), running: sum('running') });
  if (state.samples.length > CHART_POINTS) state.samples.shift();
  const names = queues.map((q) => q.service);
  for (const id of ['#services', '#filter-service']) {
    const list = $(id), known = new Set([...list.options].map((o) => o.value));
    for (const n of names) if (!known.has(n)) list.append(el('option', { value: n }, n));
  }
  drawChart();
}

function drawChart() {
  const canvas = $('#chart'), ctx = canvas.getContext('2d');
  const w = canvas.width, h = canvas.height, pad = 24;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...state.samples.map((s) => Math.max(s.pending, s.running)));
  ctx.strokeStyle = '#dde1e7'; ctx.fillStyle = '#6b7280'; ctx.font = '11px sans-serif';
  ctx.beginPath(); ctx.moveTo(pad, 4); ctx.lineTo(pad, h - pad); ctx.lineTo(w - 4, h - pad); ctx.stroke();
  ctx.fillText(String(max), 2, 12); ctx.fillText('0', 2, h - pad);
  const series = [['pending', '#b45309'], ['running', '#2563eb']];
  const step = (w - pad - 8) / Math.max(1, CHART_POINTS - 1);
  for (const [key, color] of series) {
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    state.samples.forEach((s, i) => {
      const x = pad + i * step, y = h - pad - ((h - pad - 8) * s[key]) / max;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  const last = state.samples[state.samples.length - 1] || { pending: 0, running: 0 };
  $('#legend').replaceChildren(...series.map(([k, c]) => el('span', { style: `color:${c}` }, `■ ${k} ${last[k]}`)));
}

// ---- submit ------------------------------------------------------------------

function updateOfflineRow() {
  const opt = $('#machine-select').selectedOptions[0];
  $('#offline-row').hidden = !(opt && opt.dataset.state === 'offline');
}

async function submitJob(ev) {
  ev.preventDefault();
  const form = new FormData(ev.target), out = $('#submit-result');
  let payload;
  try { payload = JSON.parse(form.get('payload') || '{}'); } catch (e) { out.textContent = 'payload: ' + e.message; return; }
  const spec = { service: form.get('service'), payload, priority: Number(form.get('priority') || 0) };
  if (form.get('machine')) spec.machine = form.get('machine');
  if (form.get('machine') && !$('#offline-row').hidden && form.get('on_offline')) spec.on_offline = form.get('on_offline');
  try {
    const res = await api('POST', '/v1/jobs', spec);
    out.textContent = 'submitted ';
    out.append(el('a', { href: '#/job/' + encodeURIComponent(res.id), id: 'submitted-job', 'data-job': res.id }, res.id));
    scheduleRefresh();
  } catch (e) { out.textContent = e.message; }
}

// ---- live events ---------------------------------------------------------------

function onEvent(ev) {
  if (ev.cursor) state.cursor = ev.cursor;
  const row = ev.job && state.jobRows.get(ev.job);
  if (row && ev.type === 'progress' && ev.progress !== undefined) {
    row.querySelector('progress').value = pct(ev.progress);
    if (ev.message) row.querySelector('.message').textContent = ev.message;
  }
  if (ev.type !== 'progress') scheduleRefresh();
}

function connect() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const q = new URLSearchParams();
  if (state.token) q.set('access_token', state.token);
  if (state.cursor) q.set('since', state.cursor);
  const socket = new WebSocket(`${proto}//${location.host}/v1/events/ws?${q}`);
  state.socket = socket;
  socket.onopen = () => { state.retryMs = 500; setLive(true); };
  socket.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { /* not an event */ } };
  socket.onclose = () => {
    if (state.socket !== socket) return;
    setLive(false);
    setTimeout(connect, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, 10000);
    scheduleRefresh(); // catch up on anything the table missed
  };
}

function setLive(on) {
  const b = $('#live');
  b.textContent = on ? 'live' : 'offline';
  b.className = 'badge ' + (on ? 'online' : 'offline');
}

// ---- job page ------------------------------------------------------------------

function summaryRows(job) {
  const fields = ['state', 'service', 'priority', 'attempts', 'max_attempts', 'worker', 'progress',
    'progress_message', 'error', 'created_at', 'started_at', 'finished_at'];
  const rows = [];
  for (const f of fields) {
    if (job[f] === undefined || job[f] === null || job[f] === '') continue;
    rows.push(el('b', {}, f), el('span', { 'data-field': f }, f.endsWith('_at') ? fmtTime(job[f]) : job[f]));
  }
  for (const f of ['payload', 'result']) {
    if (job[f] !== undefined && job[f] !== null) rows.push(el('b', {}, f), el('pre', {}, JSON.stringify(job[f], null, 2)));
  }
  return rows;
}

// The waiting explanation: a string, or the hub's explanation object
// (summary, workers and machines with can_run/reason, offline_matches).
function waitingOf(job) {
  const w = job.waiting;
  return !w || (typeof w === 'object' && w.waiting === false) ? null : w;
}

function waitingBox(waiting) {
  if (!waiting) return [];
  if (typeof waiting === 'string') return [waiting];
  const parts = [el('b', {}, waiting.summary || 'waiting')];
  if ((waiting.offline_matches || []).length) parts.push(el('div', {}, `would run on (offline): ${waiting.offline_matches.join(', ')}`));
  for (const w of waiting.workers || []) if (!w.can_run) parts.push(el('div', {}, `worker ${w.id}: ${w.reason}`));
  for (const m of waiting.machines || []) parts.push(el('div', {}, `machine ${m.id} (${m.state}): ${m.can_run ? 'can run it' : m.reason}`));
  return parts;
}

async function showJob(id) {
  const job = await api('GET', `/v1/jobs/${encodeURIComponent(id)}`);
  $('#job-title').replaceChildren(`Job ${job.id} `, el('span', { class: 'badge ' + job.state }, job.state),
    canSubmit() && ['pending', 'delayed', 'running'].includes(job.state)
      ? el('button', { class: 'danger', onclick: () => cancelJob(job.id).then(() => showJob(id)) }, 'cancel') : null);
  $('#job-summary').replaceChildren(...summaryRows(job));
  const box = $('#job-waiting');
  box.replaceChildren(...waitingBox(waitingOf(job)));
  box.hidden = !waitingOf(job);
}

function followJob(id) {
  if (state.jobSource) state.jobSource.close();
  $('#timeline').replaceChildren();
  const q = state.token ? '?access_token=' + encodeURIComponent(state.token) : '';
  const src = new EventSource(`/v1/jobs/${encodeURIComponent(id)}/events${q}`);
  state.jobSource = src;
  const add = (m) => {
    let ev; try { ev = JSON.parse(m.data); } catch (e) { return; }
    const text = [ev.type, ev.state, ev.progress !== undefined ? `${ev.progress}%` : null, ev.message, ev.error, ev.worker]
      .filter((x) => x !== undefined && x !== null && x !== '').join(' · ');
    $('#timeline').append(el('li', {}, el('span', { class: 'muted' }, fmtTime(Number((ev.id || '').split('-')[0])) + ' '), text));
    if (ev.type !== 'progress') showJob(id).catch(() => {});
  };
  for (const type of ['submitted', 'started', 'progress', 'completed', 'failed', 'dead', 'cancelled', 'retry_scheduled',
    'ready', 'stalled', 'released', 'retried']) {
    src.addEventListener(type, add);
  }
  src.addEventListener('end', () => src.close());
}

async function route() {
  const m = location.hash.match(/^#\/job\/(.+)$/);
  $('#overview').hidden = !!m;
  $('#job-page').hidden = !m;
  if (!m) { if (state.jobSource) state.jobSource.close(); return; }
  const id = decodeURIComponent(m[1]);
  try { await showJob(id); followJob(id); showError(''); } catch (e) { showError(e.message); }
}

// ---- start -----------------------------------------------------------------------

async function whoami() {
  try {
    const me = await api('GET', '/v1/me');
    state.role = me.role;
    $('#role').textContent = me.name ? `${me.name} (${me.role})` : (me.role || '');
  } catch (e) {
    state.role = null;
    $('#role').textContent = e.status === 401 ? 'token needed' : '';
  }
  $('#submit').hidden = !canSubmit();
}

async function start() {
  $('#token').value = state.token;
  $('#auth').addEventListener('submit', (ev) => {
    ev.preventDefault();
    state.token = $('#token').value.trim();
    localStorage.setItem('kiln.token', state.token);
    if (state.socket) { const s = state.socket; state.socket = null; s.close(); }
    start2();
  });
  $('#submit').addEventListener('submit', submitJob);
  $('#machine-select').addEventListener('change', updateOfflineRow);
  $('#filters').addEventListener('change', () => { state.pageCursors = ['']; scheduleRefresh(); });
  $('#first-page').addEventListener('click', () => { state.pageCursors = ['']; scheduleRefresh(); });
  $('#next-page').addEventListener('click', () => { if (state.nextCursor) { state.pageCursors.push(state.nextCursor); scheduleRefresh(); } });
  window.addEventListener('hashchange', route);
  setInterval(() => loadMachines().catch(() => {}), MACHINES_EVERY_MS);
  setInterval(() => sampleQueues().catch(() => {}), CHART_EVERY_MS);
  await start2();
}

async function start2() {
  // The three first requests go out together; the cards wait for the role.
  const machines = api('GET', '/v1/machines');
  const jobs = api('GET', jobQuery(state.pageCursors[state.pageCursors.length - 1]));
  machines.catch(() => {});
  jobs.catch(() => {});
  await whoami();
  try {
    await Promise.all([loadMachines(machines), loadJobs(jobs)]);
    showError('');
    if (!document.body.dataset.ready) document.body.dataset.readyMs = Math.round(performance.now());
    document.body.dataset.ready = '1'; // first render done (the benchmark waits for it)
  } catch (e) { showError(e.message); }
  sampleQueues().catch(() => {});
  connect();
  route();
}

start();
