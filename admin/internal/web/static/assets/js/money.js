// money.js: exact decimal money. The API sends costs as decimal strings with
// 9 decimals ("0.003922250"); they are added as BigInt nano-dollars and
// never pass through floating point.

const SCALE = 9;
const UNIT = 10n ** BigInt(SCALE);

// toNano parses a non-negative or negative decimal string into nano-dollars.
export function toNano(s) {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(String(s).trim());
  if (!m) throw new Error(`not a decimal amount: ${s}`);
  let frac = m[3] || '';
  if (frac.length > SCALE) {
    if (/[^0]/.test(frac.slice(SCALE))) throw new Error(`more than ${SCALE} decimals: ${s}`);
    frac = frac.slice(0, SCALE);
  }
  const n = BigInt(m[2]) * UNIT + BigInt(frac.padEnd(SCALE, '0'));
  return m[1] ? -n : n;
}

// fromNano formats nano-dollars as a decimal string with 9 decimals.
export function fromNano(n) {
  const neg = n < 0n;
  const a = neg ? -n : n;
  const frac = (a % UNIT).toString().padStart(SCALE, '0');
  return `${neg ? '-' : ''}${a / UNIT}.${frac}`;
}

// sumCosts adds the cost strings of rows exactly and returns nano-dollars.
export function sumCosts(rows, field = 'cost_usd') {
  return rows.reduce((acc, r) => acc + toNano(r[field]), 0n);
}

// usd shows an exact decimal string as money: digit groups in the integer
// part, every decimal kept ("1,234.500000000").
export function usd(s) {
  const [int, frac] = String(s).split('.');
  const neg = int.startsWith('-');
  const digits = neg ? int.slice(1) : int;
  const grouped = digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return `${neg ? '-' : ''}$${grouped}${frac === undefined ? '' : `.${frac}`}`;
}

// shortUsd shows an exact amount of nano-dollars with trailing zeros
// trimmed (at least 2 decimals), for chart axes.
export function shortUsd(nano) {
  let s = fromNano(BigInt(nano));
  s = s.replace(/0+$/, '');
  const [int, frac = ''] = s.split('.');
  return usd(`${int}.${frac.padEnd(2, '0')}`);
}
