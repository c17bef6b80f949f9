// chart.js: bar charts as inline SVG, built with DOM calls (no library).
// Each chart is a <figure> with a visible caption, an SVG with role="img",
// <title> and <desc>, and a <title> per bar for its exact value.

const NS = 'http://www.w3.org/2000/svg';
let seq = 0;

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

// niceStep is a round step (1, 2, 2.5 or 5 times a power of ten, whole for
// whole-number data) that splits max into about `ticks` parts.
function niceStep(max, ticks) {
  const raw = max / ticks;
  const pow = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) {
    const step = m * pow;
    if (step >= raw && Number.isInteger(step)) return step;
  }
  return Math.max(1, Math.ceil(raw));
}

// barChart renders into figure. opts:
//   title, description: caption and accessible description;
//   items: [{label, value (number, for geometry), text (exact value shown)}];
//   horizontal: bars left to right with labels on the left (categories);
//   tick: formats a value-axis label (vertical charts only);
//   color: 'blue' | 'teal' (a CSS class);
//   shortLabel: formats a category label for the axis.
export function barChart(figure, opts) {
  const { title, description, items, horizontal = false, tick = String, color = 'blue' } = opts;
  const shortLabel = opts.shortLabel || ((l) => l);
  const id = `chart-${++seq}`;
  figure.replaceChildren();
  const cap = document.createElement('figcaption');
  cap.textContent = title;
  figure.append(cap);

  const max = Math.max(0, ...items.map((i) => i.value));
  const W = 520;
  const rowH = 26;
  const H = horizontal ? Math.max(60, 16 + items.length * rowH) : 240;
  const root = svg('svg', {
    viewBox: `0 0 ${W} ${H}`,
    role: 'img',
    'aria-labelledby': `${id}-t ${id}-d`,
    class: `bars ${color}`,
    preserveAspectRatio: 'xMidYMid meet',
  });
  root.append(svg('title', { id: `${id}-t` }, title));
  root.append(svg('desc', { id: `${id}-d` }, description || summary(items)));

  if (items.length === 0 || max === 0) {
    root.append(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' }, 'No usage in this period'));
    figure.append(root);
    return;
  }

  const step = niceStep(max, 4);
  const top = Math.ceil(max / step) * step;
  const ticks = [];
  for (let v = 0; v <= top + step / 2; v += step) ticks.push(v);

  if (horizontal) {
    // Categories: every bar carries its exact value at its end, so no
    // value axis is drawn (its labels would crowd a narrow chart).
    const left = 160;
    const right = 100;
    const y0 = 8;
    const plotW = W - left - right;
    const g = svg('g');
    g.append(svg('line', { x1: left, x2: left, y1: y0, y2: y0 + items.length * rowH, class: 'axis' }));
    items.forEach((it, i) => {
      const y = y0 + i * rowH;
      const w = Math.max(it.value > 0 ? 2 : 0, (it.value / max) * plotW);
      const label = svg('text', { x: left - 8, y: y + rowH / 2 + 4, 'text-anchor': 'end', class: 'label' }, clip(shortLabel(it.label), 22));
      label.append(svg('title', {}, it.label));
      g.append(label);
      const bar = svg('rect', { x: left, y: y + 4, width: w, height: rowH - 8, rx: 3, class: 'bar' });
      bar.append(svg('title', {}, `${it.label}: ${it.text}`));
      g.append(bar);
      g.append(svg('text', { x: left + w + 6, y: y + rowH / 2 + 4, class: 'value' }, it.text));
    });
    root.append(g);
  } else {
    const left = 64;
    const right = 12;
    const topPad = 12;
    const bottom = 34;
    const plotW = W - left - right;
    const plotH = H - topPad - bottom;
    const g = svg('g');
    for (const v of ticks) {
      const y = topPad + plotH - (v / top) * plotH;
      g.append(svg('line', { x1: left, x2: W - right, y1: y, y2: y, class: v === 0 ? 'axis' : 'grid' }));
      g.append(svg('text', { x: left - 8, y: y + 4, 'text-anchor': 'end', class: 'tick' }, tick(v)));
    }
    const slot = plotW / items.length;
    const barW = Math.max(1, Math.min(36, slot * 0.7));
    const every = Math.ceil(items.length / 16);
    items.forEach((it, i) => {
      const h = it.value > 0 ? Math.max(1.5, (it.value / top) * plotH) : 0;
      const x = left + i * slot + (slot - barW) / 2;
      const bar = svg('rect', { x, y: topPad + plotH - h, width: barW, height: h, rx: Math.min(3, barW / 4), class: 'bar' });
      bar.append(svg('title', {}, `${it.label}: ${it.text}`));
      g.append(bar);
      if (i % every === 0) {
        g.append(svg('text', { x: left + i * slot + slot / 2, y: H - bottom + 16, 'text-anchor': 'middle', class: 'tick' }, shortLabel(it.label)));
      }
      if (items.length <= 12 && it.value > 0) {
        g.append(svg('text', { x: left + i * slot + slot / 2, y: topPad + plotH - h - 4, 'text-anchor': 'middle', class: 'value' }, it.text));
      }
    });
    root.append(g);
  }
  figure.append(root);
}

function clip(s, n) {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

function summary(items) {
  const parts = items.filter((i) => i.value > 0).map((i) => `${i.label}: ${i.text}`);
  return parts.length ? parts.join('; ') : 'No usage in this period.';
}
