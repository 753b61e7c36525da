// Small DOM helpers for the console: elements built with textContent only (server text is
// never parsed as HTML), number formats, and the one chart it draws, a few lines of SVG
// (no chart library: two polylines do not pay for one).

type Child = Node | string;

/** An element with attributes and children; strings become text nodes. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  children: Child[] = [],
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(typeof c === "string" ? document.createTextNode(c) : c);
  return e;
}

export function fmtNumber(n: number, digits = 0): string {
  return n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function fmtBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function fmtDuration(secs: number): string {
  const d = Math.floor(secs / 86400);
  const h = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60);
  const s = Math.floor(secs % 60);
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s}s`;
  return `${s}s`;
}

export interface Series {
  values: number[];
  /** CSS class of its line (colour). */
  cls: string;
}

const SVG = "http://www.w3.org/2000/svg";

/** Lines of `series` over the last `points` values, scaled to the largest value. */
export function lineChart(series: Series[], points: number, width = 600, height = 120): SVGSVGElement {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  const pad = 14;
  const x = (i: number) => (i / Math.max(1, points - 1)) * (width - 2 * pad) + pad;
  const y = (v: number) => height - pad - (v / max) * (height - 2 * pad);
  for (const s of series) {
    const vs = s.values.slice(-points);
    const offset = points - vs.length;
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", s.cls);
    line.setAttribute("points", vs.map((v, i) => `${x(i + offset).toFixed(1)},${y(v).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", "2");
  label.setAttribute("y", "10");
  label.textContent = `max ${fmtNumber(max, 1)}/s`;
  svg.append(label);
  return svg;
}
