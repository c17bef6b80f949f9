// operator.js: the operator view. Signs in with an admin token (kept in
// sessionStorage: this tab only, gone when it closes), manages keys and
// shows usage from /admin/v1.

import { ApiError, json, request } from './api.js';
import { barChart } from './chart.js';
import { $, el, show, int, utcDateTime, today, monthStart, daysBetween, Flash, copySecret, confirmDialog } from './dom.js';
import { fromNano, sumCosts, toNano, usd, shortUsd } from './money.js';

const TOKEN = 'qyai.adminToken';
const STATUSES = new Set(['active', 'disabled', 'revoked']);
const flash = new Flash($('alert'));
let keys = [];

function token() {
  return sessionStorage.getItem(TOKEN) || '';
}

// admin calls the admin API with the session's token; a 401 signs out.
async function admin(path, opts = {}) {
  try {
    return await json(path, { ...opts, token: token() });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) signOut(err.message);
    throw err;
  }
}

// ---- sign-in -------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(TOKEN);
  keys = [];
  $('keys-body').replaceChildren();
  show($('app'), false);
  show($('session'), false);
  show($('signin'));
  flash.clear();
  const e = $('signin-error');
  e.textContent = message || '';
  show(e, Boolean(message));
  $('admin-token').focus();
}

async function signIn(ev) {
  ev.preventDefault();
  const input = $('admin-token');
  const candidate = input.value.trim();
  const err = $('signin-error');
  show(err, false);
  $('signin-submit').disabled = true;
  try {
    // The key list is the cheapest call that proves the token.
    const list = await json('/admin/v1/keys', { token: candidate });
    sessionStorage.setItem(TOKEN, candidate);
    input.value = '';
    enter(list);
  } catch (e) {
    err.textContent = e.message;
    show(err);
  } finally {
    $('signin-submit').disabled = false;
  }
}

function enter(list) {
  show($('signin'), false);
  show($('app'));
  show($('session'));
  if (list) renderKeys(list.data);
  else loadKeys();
  loadUsage();
}

// ---- keys ----------------------------------------------------------------

async function loadKeys() {
  try {
    const list = await admin('/admin/v1/keys');
    renderKeys(list.data);
  } catch (e) {
    flash.error(`Could not load keys: ${e.message}`);
  }
}

function renderKeys(data) {
  keys = data || [];
  const showRevoked = $('show-revoked').checked;
  const rows = keys
    .filter((k) => showRevoked || k.status !== 'revoked')
    .slice()
    .reverse() // newest first
    .map(keyRow);
  $('keys-body').replaceChildren(...rows);
  show($('keys-empty'), rows.length === 0);
  fillKeySelect();
}

function keyRow(k) {
  const status = STATUSES.has(k.status) ? k.status : 'unknown';
  const actions = el('td', { class: 'row-actions' });
  const btn = (action, label, cls = '') =>
    el('button', { type: 'button', class: `btn small ${cls}`, 'data-action': action, 'data-id': k.id, 'aria-label': `${label} ${k.name}` }, label);
  if (status !== 'revoked') {
    actions.append(
      btn('rotate', 'Rotate'),
      status === 'disabled' ? btn('enable', 'Enable') : btn('disable', 'Disable'),
      btn('revoke', 'Revoke', 'danger-ghost'),
    );
  }
  return el(
    'tr',
    { 'data-key-id': k.id, 'data-status': status, class: status === 'revoked' ? 'revoked' : undefined },
    el('td', {}, el('span', { class: 'name' }, k.name), el('span', { class: 'sub mono' }, k.id)),
    el('td', { class: 'mono' }, k.key_prefix),
    el('td', {}, el('span', { class: 'tier' }, k.tier)),
    el('td', { class: 'num' }, int(k.rpm)),
    el('td', { class: 'num' }, int(k.monthly_limit)),
    el('td', {}, el('span', { class: `badge ${status}` }, k.status)),
    el('td', { class: 'nowrap' }, utcDateTime(k.created_at)),
    actions,
  );
}

function fillKeySelect() {
  const sel = $('usage-key');
  const current = sel.value;
  const opts = [el('option', { value: '' }, 'All keys')];
  for (const k of keys) {
    const suffix = k.status === 'active' ? '' : ` (${k.status})`;
    opts.push(el('option', { value: k.id }, `${k.name} · ${k.key_prefix}${suffix}`));
  }
  sel.replaceChildren(...opts);
  sel.value = keys.some((k) => k.id === current) ? current : '';
}

async function onKeyAction(ev) {
  const b = ev.target.closest('button[data-action]');
  if (!b) return;
  const k = keys.find((x) => x.id === b.dataset.id);
  if (!k) return;
  const path = `/admin/v1/keys/${encodeURIComponent(k.id)}`;
  flash.clear();
  try {
    switch (b.dataset.action) {
      case 'rotate': {
        const ok = await confirmDialog(`Rotate “${k.name}”?`,
          `A new key is issued and the current key (${k.key_prefix}) stops working at once on every gateway.`, 'Rotate key');
        if (!ok) return;
        const issued = await admin(`${path}/rotate`, { method: 'POST' });
        showSecret('Key rotated', issued);
        break;
      }
      case 'revoke': {
        const ok = await confirmDialog(`Revoke “${k.name}”?`,
          `The key ${k.key_prefix} stops working at once and cannot be enabled again. Its usage history stays.`, 'Revoke key');
        if (!ok) return;
        await admin(path, { method: 'DELETE' });
        flash.notice(`Key “${k.name}” revoked.`);
        break;
      }
      case 'disable':
        await admin(`${path}/disable`, { method: 'POST' });
        flash.notice(`Key “${k.name}” disabled.`);
        break;
      case 'enable':
        await admin(`${path}/enable`, { method: 'POST' });
        flash.notice(`Key “${k.name}” enabled.`);
        break;
      default:
        return;
    }
  } catch (e) {
    flash.error(e.message);
  }
  await loadKeys();
}

// ---- dialogs -------------------------------------------------------------

function openCreate() {
  $('create-form').reset();
  show($('create-error'), false);
  $('create-dialog').showModal();
  $('new-name').focus();
}

async function submitCreate(ev) {
  ev.preventDefault();
  const err = $('create-error');
  show(err, false);
  const body = { name: $('new-name').value.trim(), tier: $('new-tier').value };
  const rpm = $('new-rpm').value.trim();
  const limit = $('new-limit').value.trim();
  const models = $('new-models').value.split(',').map((m) => m.trim()).filter(Boolean);
  if (rpm) body.rpm = Number(rpm);
  if (limit) body.monthly_limit = Number(limit);
  if (models.length) body.models = models;
  $('create-submit').disabled = true;
  try {
    const issued = await admin('/admin/v1/keys', { method: 'POST', body });
    $('create-dialog').close();
    showSecret('Key created', issued);
    await loadKeys();
  } catch (e) {
    err.textContent = e.message;
    show(err);
  } finally {
    $('create-submit').disabled = false;
  }
}

// showSecret shows a newly issued key once. It lives in the dialog's input
// until the dialog closes, then it is wiped from the page.
function showSecret(title, issued) {
  $('secret-title').textContent = title;
  $('secret-about').textContent = `${issued.name} · ${issued.id} · tier ${issued.tier}, ${int(issued.rpm)} RPM, ${int(issued.monthly_limit)} requests/month`;
  $('secret-key').value = issued.key;
  $('secret-copied').textContent = '';
  const d = $('secret-dialog');
  d.dataset.keyId = issued.id;
  d.showModal();
  $('secret-key').select();
}

// closeSecret wipes the key before closing, so that it is gone the moment
// the dialog is; the close event (Escape) wipes it too, but that event is
// dispatched later.
function closeSecret() {
  wipeSecret();
  $('secret-dialog').close();
}

function wipeSecret() {
  $('secret-key').value = '';
  delete $('secret-dialog').dataset.keyId;
}

// ---- usage ---------------------------------------------------------------

function usageQuery(groupBy) {
  const q = new URLSearchParams({ from: $('from').value, to: $('to').value, group_by: groupBy });
  const key = $('usage-key').value;
  if (key) q.set('key_id', key);
  return `/admin/v1/usage?${q}`;
}

async function loadUsage(ev) {
  if (ev) ev.preventDefault();
  const from = $('from').value;
  const to = $('to').value;
  if (!from || !to || to < from) {
    flash.error('Choose a period: “From” must be on or before “To”.');
    return;
  }
  $('refresh-usage').disabled = true;
  try {
    const [byDay, byModel] = await Promise.all([admin(usageQuery('day')), admin(usageQuery('model'))]);
    renderUsage(from, to, byDay.data, byModel.data);
    const sel = $('usage-key');
    const who = sel.value ? sel.options[sel.selectedIndex].textContent : 'all keys';
    $('usage-period').textContent = `${from} to ${to} (UTC days, inclusive), ${who}. Updated ${new Date().toLocaleTimeString('en-GB')}.`;
  } catch (e) {
    flash.error(`Could not load usage: ${e.message}`);
  } finally {
    $('refresh-usage').disabled = false;
  }
}

function renderUsage(from, to, days, models) {
  const sum = (rows, f) => rows.reduce((a, r) => a + r[f], 0);
  const cost = fromNano(sumCosts(days));
  $('total-requests').textContent = int(sum(days, 'requests'));
  $('total-prompt').textContent = int(sum(days, 'prompt_tokens'));
  $('total-completion').textContent = int(sum(days, 'completion_tokens'));
  $('total-cost').textContent = usd(cost);
  $('total-cost').dataset.exact = cost;

  const byDay = new Map(days.map((r) => [r.day, r]));
  const span = daysBetween(from, to);
  const oneMonth = from.slice(0, 7) === to.slice(0, 7);
  const dayLabel = (d) => (oneMonth ? String(Number(d.slice(8))) : d.slice(5));
  const zero = { requests: 0, cost_usd: '0.000000000' };
  const dayRows = span.map((d) => ({ day: d, ...(byDay.get(d) || zero) }));

  barChart($('chart-day-requests'), {
    title: 'Requests per day',
    items: dayRows.map((r) => ({ label: r.day, value: r.requests, text: `${int(r.requests)} requests` })),
    tick: (v) => int(v),
    shortLabel: dayLabel,
  });
  barChart($('chart-day-cost'), {
    title: 'Cost per day (USD)',
    color: 'teal',
    items: dayRows.map((r) => ({ label: r.day, value: Number(toNano(r.cost_usd)), text: usd(r.cost_usd) })),
    tick: shortUsd,
    shortLabel: dayLabel,
  });
  const ms = models.slice().sort((a, b) => b.requests - a.requests);
  barChart($('chart-model-requests'), {
    title: 'Requests per model',
    horizontal: true,
    items: ms.map((r) => ({ label: r.model, value: r.requests, text: int(r.requests) })),
    tick: (v) => int(v),
  });
  barChart($('chart-model-cost'), {
    title: 'Cost per model (USD)',
    horizontal: true,
    color: 'teal',
    items: ms.map((r) => ({ label: r.model, value: Number(toNano(r.cost_usd)), text: usd(r.cost_usd) })),
    tick: shortUsd,
  });

  const cells = (r) => [
    el('td', { class: 'num' }, int(r.requests)),
    el('td', { class: 'num' }, int(r.prompt_tokens)),
    el('td', { class: 'num' }, int(r.cache_hit_tokens)),
    el('td', { class: 'num' }, int(r.cache_miss_tokens)),
    el('td', { class: 'num' }, int(r.completion_tokens)),
    el('td', { class: 'num' }, int(r.reasoning_tokens)),
    el('td', { class: 'num mono' }, usd(r.cost_usd)),
  ];
  $('model-body').replaceChildren(
    ...(ms.length
      ? ms.map((r) => el('tr', {}, el('th', { scope: 'row', class: 'mono' }, r.model), ...cells(r)))
      : [el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'No usage in this period.'))]),
  );
  const total = {
    requests: sum(models, 'requests'),
    prompt_tokens: sum(models, 'prompt_tokens'),
    cache_hit_tokens: sum(models, 'cache_hit_tokens'),
    cache_miss_tokens: sum(models, 'cache_miss_tokens'),
    completion_tokens: sum(models, 'completion_tokens'),
    reasoning_tokens: sum(models, 'reasoning_tokens'),
    cost_usd: fromNano(sumCosts(models)),
  };
  $('model-foot').replaceChildren(el('tr', {}, el('th', { scope: 'row' }, 'Total'), ...cells(total)));
}

// downloadCSV fetches the report as CSV (the admin API needs the bearer
// token, so a plain link cannot do) and saves it under the server's name.
async function downloadCSV() {
  const status = $('csv-status');
  status.textContent = 'Preparing…';
  try {
    const res = await request(usageQuery($('csv-group').value), { token: token(), accept: 'text/csv' });
    const blob = await res.blob();
    const m = /filename="([^"]+)"/.exec(res.headers.get('Content-Disposition') || '');
    const name = m ? m[1] : 'qyai-usage.csv';
    const url = URL.createObjectURL(blob);
    const a = el('a', { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    status.textContent = `Downloaded ${name}.`;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) signOut(e.message);
    status.textContent = '';
    flash.error(`Could not download the CSV: ${e.message}`);
  }
}

// ---- wiring --------------------------------------------------------------

function main() {
  $('from').value = monthStart();
  $('to').value = today();
  $('signin-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', () => signOut(''));
  $('reload-keys').addEventListener('click', () => { flash.clear(); loadKeys(); });
  $('show-revoked').addEventListener('change', () => renderKeys(keys));
  $('keys-body').addEventListener('click', onKeyAction);
  $('new-key').addEventListener('click', openCreate);
  $('create-form').addEventListener('submit', submitCreate);
  $('create-cancel').addEventListener('click', () => $('create-dialog').close());
  $('secret-copy').addEventListener('click', copySecret);
  $('secret-done').addEventListener('click', closeSecret);
  $('secret-dialog').addEventListener('close', wipeSecret);
  $('period-form').addEventListener('submit', loadUsage);
  $('download-csv').addEventListener('click', downloadCSV);
  if (token()) enter(null);
  else signOut('');
  document.body.dataset.ready = 'true';
}

main();
