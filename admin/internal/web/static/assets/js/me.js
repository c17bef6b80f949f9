// me.js: the key-holder view. The API key lives in a variable of this
// module only (not in storage, not in the URL, not in the input after
// submit) and is sent only to /v1/dashboard/billing/* and
// /v1/dashboard/key/regenerate. A regenerated key replaces it there, and
// is shown once in a dialog that wipes it when it closes.

import { json } from './api.js';
import { barChart } from './chart.js';
import { $, show, int, Flash, copySecret, confirmDialog } from './dom.js';

const flash = new Flash($('alert'));
let apiKey = '';

async function load() {
  const [usage, daily] = await Promise.all([
    json('/v1/dashboard/billing/usage', { token: apiKey }),
    json('/v1/dashboard/billing/daily', { token: apiKey }),
  ]);
  render(usage, daily.data);
}

async function submitKey(ev) {
  ev.preventDefault();
  const input = $('api-key');
  const err = $('key-error');
  show(err, false);
  apiKey = input.value.trim();
  $('key-submit').disabled = true;
  try {
    await load();
    input.value = '';
    show($('enter'), false);
    show($('app'));
    show($('session'));
  } catch (e) {
    apiKey = '';
    err.textContent = e.message;
    show(err);
  } finally {
    $('key-submit').disabled = false;
  }
}

async function refresh() {
  flash.clear();
  $('refresh').disabled = true;
  try {
    await load();
  } catch (e) {
    flash.error(`Could not load usage: ${e.message}`);
  } finally {
    $('refresh').disabled = false;
  }
}

// regenerate asks for a new key with the current one, after a
// confirmation. From the answer on the page uses the new key (the old one
// no longer works) and shows it once.
async function regenerate() {
  flash.clear();
  const ok = await confirmDialog(undefined, `Your current key (${$('session-key').textContent}) stops working at once on every gateway. `
    + 'Applications still using it will get 401 until you give them the new key.');
  if (!ok) return;
  $('regenerate').disabled = true;
  let issued;
  try {
    issued = await json('/v1/dashboard/key/regenerate', { token: apiKey, method: 'POST' });
  } catch (e) {
    flash.error(`Could not regenerate the key: ${e.message}`);
    return;
  } finally {
    $('regenerate').disabled = false;
  }
  apiKey = issued.key;
  $('session-key').textContent = issued.key_prefix;
  showSecret(issued);
  try {
    await load();
  } catch (e) {
    flash.error(`Could not load usage: ${e.message}`);
  }
}

function showSecret(issued) {
  $('secret-about').textContent = `New key ${issued.key_prefix}: same limits, quota and usage history as before.`;
  $('secret-key').value = issued.key;
  $('secret-copied').textContent = '';
  $('secret-dialog').showModal();
  $('secret-key').select();
}

// closeSecret wipes the key from the dialog before closing it; the close
// event (Escape) wipes it too.
function closeSecret() {
  $('secret-key').value = '';
  $('secret-dialog').close();
}

function forget() {
  apiKey = '';
  flash.clear();
  show($('app'), false);
  show($('session'), false);
  show($('enter'));
  $('api-key').focus();
}

function render(u, days) {
  $('session-key').textContent = u.key_prefix;
  $('key-about').textContent = `Key ${u.key_prefix} · tier ${u.tier} · current UTC month`;
  $('requests-used').textContent = int(u.monthly_requests);
  $('monthly-limit').textContent = int(u.monthly_limit);
  $('remaining').textContent = int(u.remaining);
  $('usage-percent').textContent = `${Number(u.usage_percent).toFixed(1)}%`;
  $('prompt-tokens').textContent = int(u.total_prompt_tokens);
  $('completion-tokens').textContent = int(u.total_completion_tokens);
  const pct = Math.min(100, Math.max(0, Number(u.usage_percent)));
  const bar = $('quota-bar');
  bar.setAttribute('aria-valuenow', String(pct));
  bar.setAttribute('aria-valuetext', `${u.usage_percent}% of the monthly limit used`);
  bar.classList.toggle('warn', pct >= 80 && pct < 100);
  bar.classList.toggle('full', pct >= 100);
  // CSSOM, not a style attribute: allowed by the page's CSP.
  $('quota-fill').style.width = `${pct}%`;

  const dayLabel = (d) => String(Number(d.slice(8)));
  barChart($('chart-requests'), {
    title: 'Requests per day',
    items: days.map((d) => ({ label: d.day, value: d.requests, text: `${int(d.requests)} requests` })),
    tick: (v) => int(v),
    shortLabel: dayLabel,
  });
  barChart($('chart-tokens'), {
    title: 'Tokens per day (prompt + completion)',
    color: 'teal',
    items: days.map((d) => {
      const n = d.prompt_tokens + d.completion_tokens;
      return { label: d.day, value: n, text: `${int(d.prompt_tokens)} prompt + ${int(d.completion_tokens)} completion tokens` };
    }),
    tick: (v) => int(v),
    shortLabel: dayLabel,
  });
  $('updated').textContent = `Updated ${new Date().toLocaleTimeString('en-GB')}`;
}

function main() {
  $('key-form').addEventListener('submit', submitKey);
  $('refresh').addEventListener('click', refresh);
  $('forget').addEventListener('click', forget);
  $('regenerate').addEventListener('click', regenerate);
  $('secret-copy').addEventListener('click', copySecret);
  $('secret-done').addEventListener('click', closeSecret);
  $('secret-dialog').addEventListener('close', () => { $('secret-key').value = ''; });
  document.body.dataset.ready = 'true';
}

main();
