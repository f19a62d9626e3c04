// The status page: polls api/status every 2 s and redraws. Everything shown comes from that
// JSON; each figure carries its JSON path (data-k) and raw value (data-raw) so a test can
// check the page against the JSON. Text from the network goes in with textContent only.
'use strict';

const REFRESH_MS = 2000;
/** The JSON the page last drew (the browser test reads it). */
window.statusJson = null;

const FORMATS = {
  n: (v) => (v == null ? '–' : String(v)),
  text: (v) => (v == null || v === '' ? '–' : String(v)),
  bytes: (v) => {
    if (v == null) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let x = v;
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i += 1; }
    return (i === 0 ? String(x) : x.toFixed(x < 10 ? 2 : 1)) + ' ' + units[i];
  },
  secs: (v) => (v == null ? '–' : v.toFixed(2) + ' s'),
  duration: (v) => {
    if (v == null) return '–';
    const d = Math.floor(v / 86400), h = Math.floor(v / 3600) % 24, m = Math.floor(v / 60) % 60, s = v % 60;
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
  },
  ago: (v) => {
    if (!v) return 'never';
    const s = Math.max(0, Math.round((window.statusJson.now - v) / 1000));
    return FORMATS.duration(s) + ' ago';
  },
};

function lookup(obj, path) {
  return path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

/** el('td', {class: 'num'}, child, 'text', …) */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v != null) e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c != null) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

/** A figure bound to a JSON path. */
function val(json, path, fmt = 'n', tag = 'span', attrs = {}) {
  const raw = lookup(json, path);
  const e = el(tag, { ...attrs, 'data-k': path, 'data-fmt': fmt, 'data-raw': JSON.stringify(raw ?? null) });
  e.textContent = FORMATS[fmt](raw);
  return e;
}

function figure(json, label, path, fmt = 'n') {
  return el('div', null, el('dt', null, label), val(json, path, fmt, 'dd'));
}

function dot(status) {
  return el('span', { class: 'dot ' + (status || ''), title: status || 'not in this process' });
}

function card(title, status, ...body) {
  return el('section', { class: 'card' }, el('h2', null, dot(status), title), ...body);
}

/** A table whose rows stack into label/value pairs on a phone. */
function table(columns, rows) {
  if (!rows.length) return el('p', { class: 'empty' }, 'none yet');
  const head = el('tr', null, ...columns.map((c) => el('th', { class: c.num ? 'num' : null }, c.label)));
  const body = rows.map((cells) => el('tr', null, ...cells.map((cell, i) => {
    cell.setAttribute('data-label', columns[i].label);
    if (columns[i].num) cell.classList.add('num');
    if (columns[i].text) cell.classList.add('text');
    return cell;
  })));
  return el('div', { class: 'table' }, el('table', { class: 'stack' }, el('thead', null, head), el('tbody', null, ...body)));
}

function pipeline(json) {
  const r = json.roles;
  const pools = r.lb ? r.lb.details.pools : {};
  const poolStatus = (name) => (pools[name] ? (pools[name].available > 0 ? 'UP' : 'DOWN') : null);
  const exrp = r.exrp && r.exrp.details.dependencies;
  const sink = exrp ? (exrp.genesysCloud || exrp.localSink) : null;
  const stages = [
    ['WebDAV store', r.webdav && r.webdav.status],
    ['lb → excp', poolStatus('excp')],
    ['excp', r.excp && r.excp.status],
    ['lb → exrp', poolStatus('exrp')],
    ['exrp', r.exrp && r.exrp.status],
    [exrp && exrp.genesysCloud ? 'Genesys Cloud' : 'sink', sink],
  ];
  return stages.map(([name, status]) => el('span', { class: 'stage', 'data-stage': name }, dot(status), name,
    status ? null : el('small', { class: 'note' }, ' elsewhere')));
}

function webdavCard(json) {
  const d = json.roles.webdav.details;
  const p = 'roles.webdav.details.';
  const limit = d.quotaBytes != null ? d.quotaBytes : d.freeDiskBytes != null ? d.usedBytes + d.freeDiskBytes : null;
  const share = limit ? Math.min(1, d.usedBytes / limit) : 0;
  const bar = el('div', { class: 'bar' + (share > 0.9 ? ' full' : ''), role: 'meter', 'aria-valuenow': Math.round(share * 100), 'aria-valuemin': 0, 'aria-valuemax': 100 },
    el('div', { style: null }));
  bar.firstChild.style.width = (share * 100).toFixed(1) + '%';
  return card('WebDAV store', json.roles.webdav.status,
    el('dl', { class: 'figures' },
      figure(json, 'used', p + 'usedBytes', 'bytes'),
      figure(json, d.quotaBytes != null ? 'quota' : 'no quota; free disk', d.quotaBytes != null ? p + 'quotaBytes' : p + 'freeDiskBytes', 'bytes'),
      figure(json, 'files', p + 'files'),
      figure(json, 'uploads now', p + 'uploadsInFlight'),
      figure(json, 'locks', p + 'locks')),
    bar,
    el('p', { class: 'note' }, (share * 100).toFixed(1) + '% of ' + (d.quotaBytes != null ? 'the quota' : 'used + free disk') + ' · ', val(json, p + 'root', 'text')));
}

function lbCard(json) {
  const pools = json.roles.lb.details.pools;
  const parts = [];
  for (const name of Object.keys(pools).sort()) {
    const p = `roles.lb.details.pools.${name}.`;
    const pool = pools[name];
    parts.push(el('h3', { class: 'note' }, `pool ${name} on `, val(json, p + 'listen', 'text'), ' · ',
      val(json, p + 'available'), ` of ${pool.peers.length} peers up`));
    parts.push(el('dl', { class: 'figures' },
      figure(json, 'requests', p + 'requests'),
      figure(json, '5xx answers', p + 'requests5xx'),
      figure(json, 'retries', p + 'retries')));
    parts.push(table(
      [{ label: 'peer', text: true }, { label: 'state' }, { label: 'weight', num: true }, { label: 'attempts', num: true }, { label: 'failures', num: true }],
      pool.peers.map((peer, i) => {
        const q = `${p}peers.${i}.`;
        return [val(json, q + 'server', 'text', 'td'), val(json, q + 'state', 'text', 'td', { class: 'state-' + peer.state }),
          val(json, q + 'weight', 'n', 'td'), val(json, q + 'attempts', 'n', 'td'), val(json, q + 'failures', 'n', 'td')];
      })));
  }
  return card('Load balancer', json.roles.lb.status, ...parts);
}

function excpCard(json) {
  const p = 'roles.excp.details.';
  const rp = json.roles.excp.details.recordingProcessor;
  return card('excp: calls', json.roles.excp.status,
    el('dl', { class: 'figures' },
      figure(json, 'open calls', p + 'openCalls'),
      figure(json, 'calls awaiting exrp', p + 'callsAwaitingDelivery'),
      figure(json, 'recordings awaiting exrp', p + 'recordingsAwaitingDelivery'),
      figure(json, 'calls held', p + 'calls')),
    el('p', { class: 'note' }, dot(rp.status), ' recording processor ', val(json, p + 'recordingProcessor.url', 'text'),
      ' · last delivery ', val(json, p + 'recordingProcessor.lastDeliveryMs', 'ago')));
}

function exrpCard(json) {
  const d = json.roles.exrp.details;
  const p = 'roles.exrp.details.';
  const deps = Object.keys(d.dependencies).map((k) => el('span', null, dot(d.dependencies[k]), ' ', k, ' '));
  return card('exrp: recording queue', json.roles.exrp.status,
    el('dl', { class: 'figures' },
      figure(json, 'pending', p + 'queue.pending'),
      figure(json, 'working', p + 'queue.working'),
      figure(json, 'done', p + 'queue.done'),
      figure(json, 'dead', p + 'queue.dead'),
      figure(json, 'orphans in store', p + 'orphans.count')),
    el('p', { class: 'note' }, ...deps, '· instance ', val(json, p + 'instance', 'text')),
    ...(d.orgsFailing || []).map((o, i) => el('p', { class: 'note alert', 'data-alert': 'org' }, dot('DOWN'),
      ' Genesys Cloud refuses org ', val(json, `${p}orgsFailing.${i}.org`, 'text'), ' since ',
      val(json, `${p}orgsFailing.${i}.since`, 'ago'), ': ', val(json, `${p}orgsFailing.${i}.reason`, 'text'),
      '. Its recordings wait; fix the credentials and reload exrp.')),
    d.waitingForTenantOrg && d.waitingForTenantOrg.jobs > 0
      ? el('p', { class: 'note alert', 'data-alert': 'tenant' }, dot('DOWN'), ' ', val(json, p + 'waitingForTenantOrg.jobs'),
        ' recording(s) wait for an EX Org of tenant(s) ', d.waitingForTenantOrg.tenants.join(', '),
        ': add [exrp.genesys_cloud.tenants.<name>] and reload exrp.')
      : null);
}

function injectionsCard(json) {
  const recent = json.roles.exrp.details.recent || [];
  const rows = recent.map((r, i) => {
    const q = `roles.exrp.details.recent.${i}.`;
    return [val(json, q + 'at', 'ago', 'td'), val(json, q + 'file', 'text', 'td'), val(json, q + 'tenant', 'text', 'td'),
      val(json, q + 'outcome', 'text', 'td', { class: 'outcome-' + r.outcome, title: r.reason || null }),
      val(json, q + 'seconds', 'secs', 'td'), val(json, q + 'attempts', 'n', 'td')];
  });
  const c = card('Recent injections', json.roles.exrp.status, table(
    [{ label: 'when' }, { label: 'file', text: true }, { label: 'tenant' }, { label: 'outcome' }, { label: 'accepted → done', num: true }, { label: 'attempts', num: true }],
    rows));
  c.classList.add('wide');
  c.id = 'injections';
  return c;
}

function problemsCard(json) {
  const rows = json.problems.map((e, i) => [val(json, `problems.${i}.at`, 'ago', 'td'),
    val(json, `problems.${i}.level`, 'text', 'td', { class: 'level-' + e.level }),
    val(json, `problems.${i}.source`, 'text', 'td'), val(json, `problems.${i}.text`, 'text', 'td')]);
  const c = card('Recent warnings and errors', json.problems.some((e) => e.level === 'error') ? 'DOWN' : 'UP',
    table([{ label: 'when' }, { label: 'level' }, { label: 'from' }, { label: 'what', text: true }], rows));
  c.classList.add('wide');
  c.id = 'problems';
  return c;
}

function draw(json) {
  window.statusJson = json;
  document.getElementById('version').textContent = json.version;
  document.getElementById('uptime').textContent = FORMATS.duration(json.uptimeSeconds);
  const overall = document.getElementById('overall');
  overall.textContent = json.status;
  overall.className = 'badge ' + json.status;
  document.title = (json.status === 'UP' ? '' : '⚠ ') + 'exec-allinone status';
  document.getElementById('pipeline').replaceChildren(...pipeline(json));
  const r = json.roles;
  const cards = [];
  if (r.webdav) cards.push(webdavCard(json));
  if (r.lb) cards.push(lbCard(json));
  if (r.excp) cards.push(excpCard(json));
  if (r.exrp) cards.push(exrpCard(json), injectionsCard(json));
  cards.push(problemsCard(json));
  document.getElementById('cards').replaceChildren(...cards);
}

let timer = null;
async function refresh() {
  clearTimeout(timer);
  try {
    const res = await fetch('api/status', { cache: 'no-store' });
    if (!res.ok) throw new Error('HTTP ' + res.status);
    draw(await res.json());
    document.body.classList.remove('stale');
    document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (err) {
    document.body.classList.add('stale');
    document.getElementById('updated').textContent = 'cannot refresh: ' + err.message;
  }
  document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  timer = setTimeout(refresh, REFRESH_MS);
}

// ---------------------------------------------------------------------------------------------
// Trends: small SVG charts of api/trends. Each line carries the values it was drawn from
// (data-values) so a test can check the drawing against the JSON.

const TRENDS_MS = 10000;
const SVG = 'http://www.w3.org/2000/svg';
/** The JSON the charts last drew (the browser test reads it). */
window.trendsJson = null;
let trendRange = 'hour';

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

/** The last `n` values of a series (all of them when it has fewer). */
function lastValues(values, n) {
  return values.slice(Math.max(0, values.length - n));
}

function fmtValue(unit, v) {
  if (v == null) return '–';
  if (unit === 'bytes') return FORMATS.bytes(v);
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

/** A series' colour class: red for failures, the others in turn. */
function tone(name, i) {
  if (/fail|dead|5xx/.test(name)) return 's2';
  return 's' + [0, 1, 3, 4, 5][i % 5];
}

/** One chart: a line per series on a shared scale; gaps (null) break the line. */
function trendChart(def, series, points) {
  const W = 300, H = 90, PAD = 2;
  const drawn = series.map((s) => lastValues(s.values, points));
  const all = drawn.flat().filter((v) => v != null);
  // A loop, not Math.max(...all): a day of many series passes some engines' argument limit.
  const max = all.reduce((m, v) => (v > m ? v : m), 1);
  const n = Math.max(2, ...drawn.map((v) => v.length));
  const plot = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', class: 'plot', role: 'img',
    'aria-label': `${def.title}: ${series.map((s, i) => `${s.name} ${fmtValue(def.unit, drawn[i][drawn[i].length - 1])}`).join(', ')}` });
  plot.append(svg('line', { x1: 0, y1: H - PAD, x2: W, y2: H - PAD, class: 'axis' }));
  series.forEach((s, i) => {
    const values = drawn[i];
    // Right-aligned: the newest value is at the right edge whatever the series' length.
    const offset = n - values.length;
    let d = '';
    let pen = false;
    values.forEach((v, j) => {
      if (v == null) { pen = false; return; }
      const x = ((offset + j) / (n - 1)) * W;
      const y = H - PAD - (v / max) * (H - 2 * PAD);
      d += `${pen ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)} `;
      pen = true;
    });
    plot.append(svg('path', { d: d.trim() || 'M0,0', class: `line ${tone(s.name, i)}`, 'data-series': s.name, 'data-values': JSON.stringify(values) }));
  });
  const legend = el('ul', { class: 'legend' }, ...series.map((s, i) => el('li', null,
    el('span', { class: `swatch ${tone(s.name, i)}` }), s.name, ' ',
    el('b', null, fmtValue(def.unit, drawn[i][drawn[i].length - 1])))));
  return el('figure', { class: 'chart', 'data-chart': def.id },
    el('figcaption', null, def.title, el('small', { class: 'note' }, ` · max ${fmtValue(def.unit, max)}`)),
    plot, legend);
}

function drawTrends(json) {
  window.trendsJson = json;
  const section = document.getElementById('trends');
  section.hidden = false;
  const perPoint = json.intervalSeconds;
  const points = trendRange === 'hour' ? Math.max(2, Math.round(3600 / perPoint)) : json.capacity;
  const span = (points * perPoint) / 60;
  document.getElementById('trends-note').textContent =
    `every ${FORMATS.duration(Math.round(perPoint))}, ${json.samples} sample(s) so far; window ${span >= 120 ? Math.round(span / 60) + ' h' : Math.round(span) + ' min'}`;
  const charts = json.charts.map((def) => trendChart(def, json.series.filter((s) => s.chart === def.id), points));
  document.getElementById('charts').replaceChildren(...charts);
  section.dataset.points = String(points);
  section.dataset.drawn = String(Number(section.dataset.drawn || 0) + 1);
}

let trendsTimer = null;
async function refreshTrends() {
  clearTimeout(trendsTimer);
  try {
    const res = await fetch('api/trends', { cache: 'no-store' });
    if (res.ok) drawTrends(await res.json());
  } catch (err) {
    document.getElementById('trends-note').textContent = 'cannot refresh: ' + err.message;
  }
  trendsTimer = setTimeout(refreshTrends, TRENDS_MS);
}

for (const b of document.querySelectorAll('#trends [data-range]')) {
  b.addEventListener('click', () => {
    trendRange = b.dataset.range;
    for (const other of document.querySelectorAll('#trends [data-range]')) {
      other.setAttribute('aria-pressed', String(other === b));
    }
    if (window.trendsJson) drawTrends(window.trendsJson);
  });
}

// ---------------------------------------------------------------------------------------------
// Trace: what every role of this process knows of one recording (api/trace).

/** The JSON the trace table last drew (the browser test reads it). */
window.traceJson = null;

function clock(ms) {
  const d = new Date(ms);
  // A time out of Date's range (a file's mtime far off) is shown as it came, not a failure.
  if (!Number.isFinite(d.getTime())) return String(ms);
  return d.toISOString().replace('T', ' ').replace('Z', '');
}

function drawTrace(json) {
  window.traceJson = json;
  const section = document.getElementById('trace');
  const rows = json.events.map((e) => {
    const cells = [el('td', null, clock(e.at)), el('td', null, e.role), el('td', { class: 'step' }, e.step),
      el('td', null, e.file || '–'), el('td', null, e.detail), el('td', null, e.corrId || '–')];
    return cells;
  });
  const t = table([{ label: 'when (UTC)' }, { label: 'role' }, { label: 'step' }, { label: 'file', text: true },
    { label: 'what', text: true }, { label: 'corrId', text: true }], rows);
  const tbody = t.querySelector('tbody');
  if (tbody) {
    json.events.forEach((e, i) => {
      const tr = tbody.children[i];
      tr.dataset.role = e.role;
      tr.dataset.step = e.step;
      if (e.stopped) tr.classList.add('stopped');
    });
  }
  const stopped = json.events.filter((e) => e.stopped);
  const summary = json.events.length
    ? `${json.events.length} event(s) from ${json.roles.join(', ')}` + (stopped.length ? ` · stops: ${stopped.map((e) => e.step).join(', ')}` : '')
    : `no role of this process (${json.roles.join(', ')}) knows it`;
  section.replaceChildren(el('h2', null, 'Trace of ', el('code', null, json.id)), el('p', { class: 'note' }, summary), t);
  section.hidden = false;
}

document.getElementById('trace-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const id = document.getElementById('trace-id').value.trim();
  const section = document.getElementById('trace');
  try {
    const res = await fetch('api/trace?id=' + encodeURIComponent(id), { cache: 'no-store' });
    const json = await res.json();
    if (!res.ok) throw new Error(json.error || 'HTTP ' + res.status);
    drawTrace(json);
  } catch (err) {
    section.replaceChildren(el('h2', null, 'Trace'), el('p', { class: 'note alert' }, 'cannot trace: ' + err.message));
    section.hidden = false;
  }
});

// A hidden tab stops polling and catches up when shown again.
document.addEventListener('visibilitychange', () => {
  if (!document.hidden) {
    refresh();
    refreshTrends();
  } else {
    clearTimeout(timer);
    clearTimeout(trendsTimer);
  }
});
refresh();
refreshTrends();
