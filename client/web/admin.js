// @ts-check
/**
 * The admin view: the token (kept in sessionStorage), versions with metrics, the promotion log,
 * promote / roll back / canary share / pause & resume the loop, the arena (share, the always-valid
 * interval of P(candidate ≻ champion) after each judgement with the ½ line, the decision, the
 * length-controlled win rate, thumbs of both versions), and charts of run metrics and of the
 * thumbs-up rate per version. Charts use Chart.js when `/vendor/chart.umd.js` loads; otherwise the
 * same figures are shown as tables.
 */
import { $, el } from './dom.js';

const TOKEN_KEY = 'rlhf-chat.adminToken';

/** @param {string} s */
function setStatus(s, error = false) {
  const e = $('admin-status');
  e.textContent = s;
  e.classList.toggle('error', error);
}

/**
 * @param {string} path
 * @param {{ method?: string, body?: unknown }} [init]
 * @returns {Promise<any>}
 */
async function api(path, init = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY) ?? '';
  const res = await fetch(`/admin${path}`, {
    method: init.method ?? (init.body !== undefined ? 'POST' : 'GET'),
    headers: { authorization: `Bearer ${token}`, ...(init.body !== undefined ? { 'content-type': 'application/json' } : {}) },
    body: init.body !== undefined ? JSON.stringify(init.body) : undefined,
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error(json?.error?.message ?? `HTTP ${res.status}`);
    /** @type {any} */ (err).code = json?.error?.code;
    /** @type {any} */ (err).status = res.status;
    throw err;
  }
  return json;
}

/** @type {Promise<any> | undefined} */
let chartLib;
/** Loads Chart.js once; resolves undefined when it is not installed. */
function loadChart() {
  chartLib ??= new Promise((resolve) => {
    if (/** @type {any} */ (window).Chart) return resolve(/** @type {any} */ (window).Chart);
    const s = document.createElement('script');
    s.src = '/vendor/chart.umd.js';
    s.onload = () => resolve(/** @type {any} */ (window).Chart);
    s.onerror = () => resolve(undefined);
    document.head.append(s);
  });
  return chartLib;
}

/** @type {Map<string, any>} */
const charts = new Map();

/**
 * A line or bar chart in `container`, or a table when Chart.js is absent.
 * @param {HTMLElement} container
 * @param {'line' | 'bar'} type
 * @param {{ label: string, points: [number | string, number][], fill?: string | false, dash?: number[], color?: string, background?: string }[]} series
 * @param {string} xLabel
 */
async function chart(container, type, series, xLabel) {
  charts.get(container.id)?.destroy();
  charts.delete(container.id);
  const Chart = await loadChart();
  if (!series.length) {
    container.replaceChildren(el('p', {}, ['no data']));
    return;
  }
  if (!Chart) {
    const rows = series.flatMap((s) => s.points.map(([x, y]) => el('tr', {}, [el('td', {}, [s.label]), el('td', {}, [String(x)]), el('td', {}, [String(+y.toFixed(4))])])));
    container.replaceChildren(el('table', { 'data-testid': 'chart-table' }, [el('thead', {}, [el('tr', {}, [el('th', {}, ['series']), el('th', {}, [xLabel]), el('th', {}, ['value'])])]), el('tbody', {}, rows)]));
    container.dataset.kind = 'table';
    return;
  }
  const canvas = /** @type {HTMLCanvasElement} */ (el('canvas'));
  container.replaceChildren(canvas);
  container.dataset.kind = 'chart';
  const labels = type === 'bar' ? series[0]?.points.map((p) => String(p[0])) : undefined;
  const c = new Chart(canvas, {
    type,
    data: {
      labels,
      datasets: series.map((s) => ({
        label: s.label,
        data: type === 'bar' ? s.points.map((p) => p[1]) : s.points.map(([x, y]) => ({ x, y })),
        pointRadius: 0,
        ...(s.fill !== undefined ? { fill: s.fill } : {}),
        ...(s.dash ? { borderDash: s.dash } : {}),
        ...(s.color ? { borderColor: s.color } : {}),
        ...(s.background ? { backgroundColor: s.background } : {}),
      })),
    },
    options: {
      animation: false,
      parsing: type !== 'line',
      scales: type === 'line' ? { x: { type: 'linear', title: { display: true, text: xLabel } } } : { y: { min: 0, max: 1 } },
    },
  });
  charts.set(container.id, c);
}

/** @param {unknown} v */
function short(v) {
  return v === null || v === undefined ? '' : String(v);
}

/** @param {Record<string, unknown> | null | undefined} m */
function metricsText(m) {
  if (!m) return '';
  return Object.entries(m)
    .map(([k, v]) => `${k}=${typeof v === 'number' ? +v.toFixed(4) : JSON.stringify(v)}`)
    .join(' ');
}

async function refresh() {
  const [versions, promotions, canary, loop, feedback, runs, arena] = await Promise.all([
    api('/versions'),
    api('/promotions'),
    api('/canary'),
    api('/loop'),
    api('/feedback'),
    api('/runs'),
    api('/arena'),
  ]);
  const serving = versions.serving ?? {};
  $('serving').replaceChildren(
    el('p', { 'data-testid': 'serving' }, [
      `champion ${short(serving.champion)}`,
      serving.rerank?.champion ? ` (best of ${serving.rerank.champion.n} by ${short(serving.rerank.champion.reward)})` : '',
      serving.candidate ? ` · candidate ${serving.candidate}` : '',
      serving.rerank?.candidate ? ` (best of ${serving.rerank.candidate.n} by ${short(serving.rerank.candidate.reward)})` : '',
      ` · canary ${canary.share}`,
      ` · arena ${arena.share}`,
      ` · loop ${loop.loopPaused ? 'paused' : 'running'}`,
      serving.lastError ? ` · last error: ${serving.lastError}` : '',
    ]),
  );
  /** @type {HTMLInputElement} */ ($('canary-share')).value = String(canary.share ?? 0);

  const vrows = /** @type {any[]} */ (versions.versions).map((v) => {
    const promote = el('button', { type: 'button', 'data-testid': 'promote', 'data-version': v.id }, ['Promote to champion']);
    /** @type {HTMLButtonElement} */ (promote).disabled = v.id === versions.aliases?.champion || v.kind !== 'policy';
    promote.addEventListener('click', () => void act(`promote ${v.id}`, () => api('/promote', { body: { versionId: v.id, reason: 'promoted from the web page' } })));
    const thumbs = v.thumbs ? `${v.thumbs.up}/${v.thumbs.up + v.thumbs.down}${v.thumbs.upRate === null || v.thumbs.upRate === undefined ? '' : ` (${Math.round(v.thumbs.upRate * 100)}%)`}` : '';
    return el('tr', { 'data-version': v.id }, [
      el('td', {}, [el('code', {}, [v.id])]),
      el('td', {}, [short(v.stage)]),
      el('td', {}, [(v.aliases ?? []).join(', ')]),
      el('td', {}, [short(v.createdAt)]),
      el('td', {}, [thumbs]),
      el('td', {}, [metricsText(v.metrics)]),
      el('td', {}, [promote]),
    ]);
  });
  $('versions').querySelector('tbody')?.replaceChildren(...vrows);

  const prows = /** @type {any[]} */ (promotions.promotions)
    .slice()
    .reverse()
    .map((p) =>
      el('tr', { 'data-testid': 'promotion' }, [
        el('td', {}, [short(p.created_at)]),
        el('td', {}, [short(p.alias)]),
        el('td', {}, [short(p.action)]),
        el('td', {}, [el('code', {}, [short(p.from_version_id)])]),
        el('td', {}, [el('code', {}, [short(p.to_version_id)])]),
        el('td', {}, [short(p.actor)]),
        el('td', {}, [short(p.reason)]),
      ]),
    );
  $('promotions').querySelector('tbody')?.replaceChildren(...prows);

  await showArena(arena);

  const thumbs = /** @type {{ versionId: string, upRate: number | null }[]} */ (feedback.thumbs ?? []).filter((t) => t.upRate !== null && t.upRate !== undefined);
  await chart($('feedback-chart'), 'bar', thumbs.length ? [{ label: 'thumbs-up rate', points: thumbs.map((t) => [t.versionId, /** @type {number} */ (t.upRate)]) }] : [], 'version');

  const select = /** @type {HTMLSelectElement} */ ($('run-select'));
  const keep = select.value;
  select.replaceChildren(...(/** @type {any[]} */ (runs.runs)).map((r) => el('option', { value: r.id }, [`${r.kind} ${r.status} ${r.startedAt} (${r.id})`])));
  if (keep) select.value = keep;
}

/** @param {number} x */
const fmt = (x) => x.toFixed(3);

/** The arena section: summary line, thumbs of both versions, and the interval over judgements. @param {any} arena */
async function showArena(arena) {
  /** @type {HTMLInputElement} */ ($('arena-share')).value = String(arena.share ?? 0);
  const s = arena.summary;
  $('arena-summary').textContent = s
    ? `${s.n} judgements (${s.wins} wins, ${s.losses} losses, ${s.ties} ties, ${s.bothBad} both bad) · ` +
      `P(candidate ≻ champion) ${fmt(s.p)}, ${Math.round((1 - s.alpha) * 100)}% always-valid interval [${fmt(s.interval[0])}, ${fmt(s.interval[1])}] · ` +
      `decision: ${s.decision} · at equal length ${fmt(s.lengthControlled.p)} [${fmt(s.lengthControlled.interval[0])}, ${fmt(s.lengthControlled.interval[1])}], ` +
      `${s.lengthControlled.lengthCoef >= 0 ? '+' : ''}${s.lengthControlled.lengthCoef.toFixed(4)} log-odds per word`
    : 'no candidate in the arena';
  const role = (/** @type {string} */ v) => (s && v === s.candidate ? 'candidate' : 'champion');
  $('arena-thumbs')
    .querySelector('tbody')
    ?.replaceChildren(
      ...(/** @type {any[]} */ (arena.thumbs ?? [])).map((t) =>
        el('tr', {}, [el('td', {}, [el('code', {}, [t.versionId])]), el('td', {}, [role(t.versionId)]), el('td', {}, [String(t.up)]), el('td', {}, [String(t.down)]), el('td', {}, [t.upRate === null ? '' : `${Math.round(t.upRate * 100)}%`])]),
      ),
    );
  /** @type {{ n: number, p: number, low: number, high: number }[]} */
  const h = arena.history ?? [];
  await chart(
    $('arena-chart'),
    'line',
    h.length
      ? [
          { label: 'interval low', points: h.map((x) => [x.n, x.low]), fill: false, color: 'rgba(54, 162, 235, 0.5)' },
          { label: 'interval high', points: h.map((x) => [x.n, x.high]), fill: '-1', color: 'rgba(54, 162, 235, 0.5)', background: 'rgba(54, 162, 235, 0.15)' },
          { label: 'P(candidate ≻ champion)', points: h.map((x) => [x.n, x.p]), fill: false, color: 'rgb(20, 60, 160)' },
          { label: '½', points: [[1, 0.5], [h[h.length - 1].n, 0.5]], fill: false, dash: [6, 4], color: 'rgb(120, 120, 120)' },
        ]
      : [],
    'judgements',
  );
}

async function showRun() {
  const id = /** @type {HTMLSelectElement} */ ($('run-select')).value;
  if (!id) return chart($('run-chart'), 'line', [], 'step');
  const names = /** @type {HTMLInputElement} */ ($('run-names')).value.replace(/\s+/g, '');
  const r = await api(`/runs/${encodeURIComponent(id)}${names ? `?names=${encodeURIComponent(names)}` : ''}`);
  const series = Object.entries(/** @type {Record<string, [number, number][]>} */ (r.curves)).map(([label, points]) => ({ label, points }));
  await chart($('run-chart'), 'line', series, 'step');
}

/** Runs an action, reports it, and refreshes the view. @param {string} what @param {() => Promise<unknown>} f */
async function act(what, f) {
  setStatus(`${what}…`);
  try {
    await f();
    await refresh();
    setStatus(`${what}: done`);
  } catch (e) {
    setStatus(`${what}: ${/** @type {Error} */ (e).message}`, true);
  }
}

async function login() {
  try {
    // One request checks the token first: the server counts every request with a wrong token
    // against this address (5, then one per 6 s), so refresh()'s parallel requests would spend the
    // whole allowance on one mistyped token and lock out the right one that follows.
    await api('/canary');
    await refresh();
    $('admin-body').hidden = false;
    $('admin-logout').hidden = false;
    setStatus('logged in');
    await showRun().catch(() => {});
  } catch (e) {
    $('admin-body').hidden = true;
    const err = /** @type {any} */ (e);
    setStatus(err.status === 401 ? 'wrong token' : err.status === 429 ? `too many wrong tokens from this address; wait a few seconds (${err.message})` : err.code === 'admin_disabled' ? 'admin routes are disabled on this server (no ADMIN_TOKEN)' : `error: ${err.message}`, true);
  }
}

export function initAdmin() {
  const input = /** @type {HTMLInputElement} */ ($('admin-token'));
  $('admin-login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value);
    input.value = '';
    void login();
  });
  $('admin-logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $('admin-body').hidden = true;
    $('admin-logout').hidden = true;
    setStatus('logged out');
  });
  $('canary-set').addEventListener('click', () => {
    const share = Number(/** @type {HTMLInputElement} */ ($('canary-share')).value);
    void act(`canary share ${share}`, () => api('/canary', { method: 'PUT', body: { share } }));
  });
  $('arena-set').addEventListener('click', () => {
    const share = Number(/** @type {HTMLInputElement} */ ($('arena-share')).value);
    void act(`arena share ${share}`, () => api('/arena', { method: 'PUT', body: { share } }));
  });
  $('rollback').addEventListener('click', () => void act('roll back champion', () => api('/rollback', { body: { reason: 'rolled back from the web page' } })));
  $('loop-pause').addEventListener('click', () => void act('pause loop', () => api('/loop/pause', { body: {} })));
  $('loop-resume').addEventListener('click', () => void act('resume loop', () => api('/loop/resume', { body: {} })));
  $('run-show').addEventListener('click', () => void showRun().catch((e) => setStatus(`run: ${e.message}`, true)));
  if (sessionStorage.getItem(TOKEN_KEY)) void login();
}
