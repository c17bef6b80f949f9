// dom.js: small DOM helpers. Text from the API only ever goes through
// textContent or attribute values, never parsed as HTML.

export const $ = (id) => document.getElementById(id);

// el creates an element; attrs are set as attributes (class, data-*, aria-*),
// children are nodes or strings (added as text).
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export function show(e, on = true) {
  e.hidden = !on;
}

// int formats a count with digit groups.
export function int(n) {
  return Number(n).toLocaleString('en-US');
}

// utcDateTime shows an RFC 3339 time as "2026-05-20 12:00" (UTC).
export function utcDateTime(s) {
  const d = new Date(s);
  if (Number.isNaN(d.getTime())) return String(s);
  return d.toISOString().slice(0, 16).replace('T', ' ');
}

// today is the current UTC day, YYYY-MM-DD.
export function today() {
  return new Date().toISOString().slice(0, 10);
}

// monthStart is the first day of the current UTC month, YYYY-MM-DD.
export function monthStart() {
  return `${today().slice(0, 7)}-01`;
}

// daysBetween lists every UTC day from..to (both YYYY-MM-DD, inclusive).
export function daysBetween(from, to) {
  const out = [];
  const end = Date.parse(`${to}T00:00:00Z`);
  for (let t = Date.parse(`${from}T00:00:00Z`); t <= end && out.length < 1000; t += 86400000) {
    out.push(new Date(t).toISOString().slice(0, 10));
  }
  return out;
}

// Flash shows one message at a time in an alert box: errors stay until the
// next action, notices fade after a while.
export class Flash {
  constructor(box) {
    this.box = box;
    this.timer = 0;
  }

  error(message) {
    this.set(message, 'error');
  }

  notice(message) {
    this.set(message, 'notice');
    this.timer = setTimeout(() => this.clear(), 6000);
  }

  set(message, kind) {
    clearTimeout(this.timer);
    this.box.textContent = message;
    this.box.className = `alert ${kind}`;
    this.box.hidden = false;
  }

  clear() {
    clearTimeout(this.timer);
    this.box.hidden = true;
    this.box.textContent = '';
  }
}

// copySecret copies the new key in the secret dialog (#secret-key) to the
// clipboard and says so in #secret-copied; where the clipboard API is refused
// it falls back to the selection.
export async function copySecret() {
  const input = $('secret-key');
  try {
    await navigator.clipboard.writeText(input.value);
    $('secret-copied').textContent = 'Copied to the clipboard.';
  } catch {
    input.select();
    const ok = document.execCommand && document.execCommand('copy');
    $('secret-copied').textContent = ok ? 'Copied to the clipboard.' : 'Select the key and copy it with Ctrl+C.';
  }
}

// confirmDialog asks a yes/no question in the page's #confirm-dialog and
// resolves to the answer. title and okLabel, when given, replace the
// dialog's heading (#confirm-title) and its confirm button's label.
export function confirmDialog(title, text, okLabel) {
  const d = $('confirm-dialog');
  if (title !== undefined) $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  if (okLabel !== undefined) $('confirm-ok').textContent = okLabel;
  return new Promise((resolve) => {
    const done = (v) => {
      $('confirm-ok').removeEventListener('click', yes);
      $('confirm-cancel').removeEventListener('click', no);
      d.removeEventListener('cancel', no);
      if (d.open) d.close();
      resolve(v);
    };
    const yes = () => done(true);
    const no = () => done(false);
    $('confirm-ok').addEventListener('click', yes);
    $('confirm-cancel').addEventListener('click', no);
    d.addEventListener('cancel', no);
    d.showModal();
    $('confirm-cancel').focus();
  });
}
