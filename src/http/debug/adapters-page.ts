// The visualizer page: one self-contained HTML document (inline CSS, SVG and script, no
// external requests). The diagram is laid out in the browser from the chart JSON, so it
// follows the machine in statecharts/adapter.machine.ts as it changes.
import type { ChartJson } from '../../../statecharts/adapter.machine.js';

const STYLE = `
body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #1d2430; background: #fafbfc; }
h1 { font-size: 18px; margin: 0 0 4px; }
#status { color: #5a6472; margin-bottom: 12px; }
#status.down { color: #b42318; }
svg { background: #fff; border: 1px solid #d8dde4; border-radius: 6px; max-width: 100%; height: auto; }
.region > rect { fill: #f4f6f9; stroke: #c3cad4; stroke-dasharray: 4 3; }
.compound > rect { fill: #eef2f7; stroke: #9aa6b5; }
.leaf > rect { fill: #fff; stroke: #6b7787; }
.leaf.active > rect { fill: #dcefff; stroke: #1d6fd8; stroke-width: 2; }
.leaf.selected > rect { fill: #ffe9b8; stroke: #c27803; stroke-width: 2.5; }
.leaf.final > rect { stroke-width: 3; }
.label { font-weight: 600; fill: #1d2430; }
.region-label { font-size: 11px; fill: #5a6472; text-transform: uppercase; letter-spacing: .05em; }
.chips { font-size: 11px; fill: #1d4f91; }
.edge path { fill: none; stroke: #8a94a3; stroke-width: 1.3; }
.edge text { font-size: 10px; fill: #4a5462; paint-order: stroke; stroke: #fff; stroke-width: 3px; stroke-linejoin: round; }
.edge.last path { stroke: #c27803; stroke-width: 2.5; }
table { border-collapse: collapse; margin-top: 14px; background: #fff; }
th, td { border: 1px solid #d8dde4; padding: 4px 8px; text-align: left; vertical-align: top; white-space: nowrap; }
td.transition { white-space: normal; }
th { background: #f0f3f7; }
tr.selected td { background: #fff4d6; }
tbody tr { cursor: pointer; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.reason { color: #5a6472; font-size: 12px; }
#log { margin-top: 14px; font: 12px/1.5 ui-monospace, monospace; max-height: 240px; overflow: auto; background: #fff; border: 1px solid #d8dde4; padding: 6px 8px; }
`;

const SCRIPT = `
const chart = JSON.parse(document.getElementById('chart').textContent);
const NS = 'http://www.w3.org/2000/svg';
const LEAF_W = 132, LEAF_H = 62, PAD = 14, HEAD = 22, GAP = 44, ARC_ROOM = 50;
const nodes = new Map(chart.states.map((s) => [s.id, { ...s, children: [] }]));
const root = { id: '', type: 'compound', children: [] };
for (const n of nodes.values()) (n.parent === undefined ? root : nodes.get(n.parent)).children.push(n);
const short = (id) => id.split('.').pop();

// Sizes bottom-up: a parallel state stacks its regions, a compound state puts its children in a
// row, and the root stacks its compound children above a row of its plain states. A row of
// states gets room above and below for the arcs between them.
const topRoom = (n) => n === root ? 0 : n.type === 'parallel' || nodes.get(n.parent)?.type === 'parallel' ? HEAD : HEAD + ARC_ROOM;
const bottomRoom = (n) => n === root || n.type === 'parallel' || nodes.get(n.parent)?.type === 'parallel' ? 0 : ARC_ROOM - 14;
function measure(n) {
  if (n.children.length === 0) { n.w = LEAF_W; n.h = LEAF_H; return; }
  n.children.forEach(measure);
  const row = (list) => ({ w: list.reduce((a, c) => a + c.w, 0) + GAP * Math.max(0, list.length - 1), h: Math.max(0, ...list.map((c) => c.h)) });
  let rows;
  if (n.type === 'parallel') rows = n.children.map((c) => [c]);
  else if (n === root) {
    const big = n.children.filter((c) => c.children.length > 0);
    const small = n.children.filter((c) => c.children.length === 0);
    rows = [...big.map((c) => [c]), ...(small.length ? [small] : [])];
  } else rows = [n.children];
  n.rows = rows;
  const sizes = rows.map(row);
  n.w = Math.max(...sizes.map((s) => s.w)) + 2 * PAD;
  n.h = sizes.reduce((a, s) => a + s.h, 0) + rowGap(n) * (rows.length - 1) + 2 * PAD + topRoom(n) + bottomRoom(n);
}
// Rows under the root are spaced wider: the arcs between the final states need room above them.
const rowGap = (n) => n === root ? GAP : GAP * 0.5;
// The middle of the already placed states that c has transitions with, outside its own row.
function pull(c, row) {
  const xs = [];
  for (const t of chart.transitions) {
    const other = t.from === c.id ? t.to : t.to === c.id ? t.from : null;
    const o = other === null ? undefined : nodes.get(other);
    if (o && o.x !== undefined && !row.includes(o)) xs.push(o.x + o.w / 2);
  }
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null;
}
function place(n, x, y) {
  n.x = x; n.y = y;
  if (!n.rows) return;
  let cy = y + PAD + topRoom(n);
  for (const r of n.rows) {
    const h = Math.max(...r.map((k) => k.h));
    if (n === root && r.every((c) => !c.rows)) {
      // The root's plain states (failed, unloaded) sit under the states that lead to them, so
      // their edges drop straight down instead of crossing the whole diagram.
      let seq = x + PAD;
      const want = r.map((c) => { const at = pull(c, r) ?? seq + c.w / 2; seq += c.w + GAP; return { c, at }; });
      want.sort((a, b) => a.at - b.at);
      let min = x + PAD;
      for (const { c, at } of want) { const left = Math.max(min, at - c.w / 2); place(c, left, cy + (h - c.h) / 2); min = left + c.w + GAP; }
      n.w = Math.max(n.w, min - GAP + PAD - x);
    } else {
      // A narrower region of a parallel state sits on the right, which leaves the space under
      // the wide region's left end free for the edges that leave it downwards.
      let cx = n.type === 'parallel' && r.length === 1 ? x + n.w - PAD - r[0].w : x + PAD;
      for (const c of r) { place(c, cx, cy + (h - c.h) / 2); cx += c.w + GAP; }
    }
    cy += h + rowGap(n);
  }
}
measure(root);
place(root, 0, 0);

const svg = document.getElementById('diagram');
svg.setAttribute('viewBox', '0 0 ' + (root.w + 2) + ' ' + (root.h + 2));
svg.setAttribute('width', root.w + 2);
const el = (tag, attrs, parent) => { const e = document.createElementNS(NS, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); parent.appendChild(e); return e; };
const defs = el('defs', {}, svg);
const marker = el('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, defs);
el('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#8a94a3' }, marker);
const boxLayer = el('g', {}, svg), edgeLayer = el('g', {}, svg);
const chipsOf = new Map();
function drawBox(n) {
  if (n !== root) {
    const kind = n.children.length === 0 ? 'leaf' : n.type === 'parallel' || nodes.get(n.parent)?.type === 'parallel' ? 'region' : 'compound';
    const g = el('g', { class: kind + (n.type === 'final' ? ' final' : ''), 'data-state': n.id }, boxLayer);
    el('rect', { x: n.x, y: n.y, width: n.w, height: n.h, rx: 8 }, g);
    if (kind === 'leaf') {
      el('text', { x: n.x + n.w / 2, y: n.y + 20, 'text-anchor': 'middle', class: 'label' }, g).textContent = short(n.id);
      const chips = el('text', { x: n.x + n.w / 2, y: n.y + 40, 'text-anchor': 'middle', class: 'chips' }, g);
      chipsOf.set(n.id, { g, chips });
    } else {
      el('text', { x: n.x + 8, y: n.y + 15, class: kind === 'region' ? 'region-label' : 'label' }, g).textContent = short(n.id);
    }
  }
  n.children.forEach(drawBox);
}
drawBox(root);

// Edges: a curve from border to border, bowed to one side so opposite edges do not overlap.
function border(n, tx, ty) {
  const cx = n.x + n.w / 2, cy = n.y + n.h / 2, dx = tx - cx, dy = ty - cy;
  const s = Math.min(Math.abs((n.w / 2) / (dx || 1e-9)), Math.abs((n.h / 2) / (dy || 1e-9)));
  return [cx + dx * s, cy + dy * s];
}
const edges = [], labels = [];
const seen = new Map();
for (const t of chart.transitions) {
  const a = nodes.get(t.from), b = nodes.get(t.to);
  if (!a || !b) continue;
  const key = [t.from, t.to].sort().join('|');
  const k = seen.get(key) || 0; seen.set(key, k + 1);
  const [ax, ay] = [a.x + a.w / 2, a.y + a.h / 2], [bx, by] = [b.x + b.w / 2, b.y + b.h / 2];
  const dist = Math.hypot(bx - ax, by - ay) || 1;
  // The control point sits twice the apex height off the chord, on the left of the direction
  // of travel: rightward arcs bow up, leftward ones down, so a pair never overlaps.
  const bow = -Math.min(2 * (LEAF_H / 2 + 18 + 12 * k), 0.6 * dist);
  const mx = (ax + bx) / 2 - ((by - ay) / dist) * bow, my = (ay + by) / 2 + ((bx - ax) / dist) * bow;
  const [sx, sy] = border(a, mx, my), [ex, ey] = border(b, mx, my);
  const g = el('g', { class: 'edge', 'data-from': t.from, 'data-to': t.to }, edgeLayer);
  el('path', { d: 'M' + sx + ',' + sy + ' Q' + mx + ',' + my + ' ' + ex + ',' + ey, 'marker-end': 'url(#arrow)' }, g);
  const lx = 0.25 * sx + 0.5 * mx + 0.25 * ex, ly = 0.25 * sy + 0.5 * my + 0.25 * ey;
  const label = el('text', { x: lx, y: ly - 3, 'text-anchor': 'middle' }, g);
  label.textContent = t.event + (t.guard ? ' [' + t.guard + ']' : '');
  labels.push(label);
  edges.push(g);
}
// Labels of neighbouring edges can land on each other or on a state: each is nudged up or down
// to the nearest free spot.
const taken = [...nodes.values()].filter((n) => n.children.length === 0).map((n) => ({ x: n.x, y: n.y, width: n.w, height: n.h }));
const hits = (a, b) => a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
for (const label of labels) {
  const y0 = Number(label.getAttribute('y'));
  const b = label.getBBox(); // an SVGRect: its fields are getters, so it is copied by hand
  const box = { x: b.x - 2, y: b.y, width: b.width + 4, height: b.height };
  const free = [0, -12, 12, -24, 24, -36, 36].find((d) => !taken.some((t) => hits({ ...box, y: box.y + d }, t))) ?? 0;
  label.setAttribute('y', y0 + free);
  taken.push({ ...box, y: box.y + free });
}

// An adapter's published state ('gpuResident.pinned', 'unloading', 'failed') names a chart node.
function stateId(label) {
  if (nodes.has(label)) return label;
  for (const id of nodes.keys()) if (id.endsWith('.' + label)) return id;
  return null;
}
let adapters = [], slots = 0, selected = null;
const log = [];
const fmtBytes = (b) => b === 0 ? '0' : b < 1048576 ? (b / 1024).toFixed(1) + ' KiB' : (b / 1048576).toFixed(2) + ' MiB';
const fmtTime = (t) => new Date(t).toISOString().slice(11, 23);
function render() {
  document.getElementById('pool').textContent = adapters.reduce((n, a) => n + (a.slot === null ? 0 : a.slotSpan), 0) + ' / ' + slots + ' pool slots used, ' + adapters.length + ' adapters';
  const by = new Map();
  for (const a of adapters) { const id = stateId(a.state); if (id) (by.get(id) || by.set(id, []).get(id)).push(a.name); }
  const sel = adapters.find((a) => a.name === selected);
  for (const [id, { g, chips }] of chipsOf) {
    const names = by.get(id) || [];
    g.classList.toggle('active', names.length > 0);
    g.classList.toggle('selected', !!sel && stateId(sel.state) === id);
    chips.textContent = names.length > 3 ? names.slice(0, 2).join(', ') + ' +' + (names.length - 2) : names.join(', ');
    g.setAttribute('data-adapters', names.join(','));
  }
  const lt = sel && sel.lastTransition;
  for (const e of edges) e.classList.toggle('last', !!lt && stateId(lt.from) === e.dataset.from && stateId(lt.to) === e.dataset.to);
  const body = document.getElementById('rows');
  body.replaceChildren(...adapters.map((a) => {
    const tr = document.createElement('tr');
    // Data attributes give scripts and tests stable hooks that do not depend on the cell text.
    tr.dataset.adapter = a.name; tr.dataset.state = a.state; tr.dataset.refcount = String(a.refcount);
    if (a.name === selected) tr.className = 'selected';
    const t = a.lastTransition;
    const cells = [a.name, a.state, a.slot === null ? '-' : a.slotSpan > 1 ? a.slot + '-' + (a.slot + a.slotSpan - 1) : String(a.slot), a.pinned ? 'yes' : 'no', a.refcount + ' (' + a.running + ' running)',
      t ? t.from + ' \\u2192 ' + t.to : '-', fmtBytes(a.cpuBytes), fmtBytes(a.gpuBytes)];
    cells.forEach((text, i) => {
      const td = document.createElement('td');
      td.textContent = text;
      if (i === 1) td.className = 'state';
      if (i === 5) td.className = 'transition';
      if (i === 2 || i >= 6) td.classList.add('num');
      if (i === 5 && t) { const r = document.createElement('div'); r.className = 'reason'; r.textContent = t.reason + ' at ' + fmtTime(t.time); td.appendChild(r); }
      tr.appendChild(td);
    });
    tr.onclick = () => { selected = selected === a.name ? null : a.name; render(); };
    return tr;
  }));
  document.getElementById('log').replaceChildren(...log.map((line) => { const d = document.createElement('div'); d.textContent = line; return d; }));
}
function apply(data) { adapters = data.adapters; slots = data.poolSlots; render(); }
const status = document.getElementById('status');
const source = new EventSource('/debug/adapters/events');
source.addEventListener('snapshot', (e) => apply(JSON.parse(e.data)));
source.addEventListener('transition', (e) => {
  const data = JSON.parse(e.data);
  for (const t of data.transitions) log.unshift(fmtTime(t.time) + '  ' + t.adapter + ': ' + t.from + ' \\u2192 ' + t.to + '  (' + t.reason + ')');
  log.length = Math.min(log.length, 200);
  apply(data);
});
source.onopen = () => { status.textContent = 'live'; status.className = ''; };
source.onerror = () => { status.textContent = 'disconnected; retrying'; status.className = 'down'; };
render();
`;

export function renderAdapterPage(chart: ChartJson): string {
  // JSON inside <script> must not be able to close the element.
  const json = JSON.stringify(chart).replace(/</g, '\\u003c');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>troupe adapters</title>
<style>${STYLE}</style>
</head>
<body>
<h1>Adapters</h1>
<div id="status">connecting</div>
<div id="pool"></div>
<svg id="diagram" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="adapter statechart"></svg>
<table>
<thead><tr><th>adapter</th><th>state</th><th>slot</th><th>pinned</th><th>refcount</th><th>last transition</th><th>CPU</th><th>GPU</th></tr></thead>
<tbody id="rows"></tbody>
</table>
<div id="log"></div>
<script type="application/json" id="chart">${json}</script>
<script>${SCRIPT}</script>
</body>
</html>
`;
}
