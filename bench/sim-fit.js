// The step-time model's fit: the H200 runs' inter-token latency (ITL p50) at each rate they
// ran, against the simulation's at the same rate, workload and settings. ITL p50 is the step
// time a decoding request sees, so it carries the model's terms: the rows decoding together
// (b), the prompt tokens prefilled alongside (c), the distinct adapters (d), and the rest (a).
// The fit minimises the mean squared log ratio by Nelder-Mead; it must run under the
// scheduler that produced the measurements, since admission sets how many rows run together:
// only the runs made under that admission count (sim-setups.js's fitsModel).
import { SETUPS, fitsModel, measured, simulateSetup } from './sim-setups.js';

/** Every measured ITL p50 of the simulated setups that fits the model: fixed-rate runs and capacity probes. */
export function fitPoints() {
  const points = [];
  for (const setup of SETUPS) {
    const fixed = measured(setup, '');
    if (fixed && fitsModel(setup, fixed)) {
      const w = fixed.config.workload;
      points.push({
        label: setup.label,
        setup,
        rate: w.rate,
        duration: w.duration,
        drainTimeout: fixed.config.drainTimeout,
        itlMs: fixed.summary.itl.p50 * 1000,
      });
    }
    const cap = measured(setup, '-capacity');
    for (const p of cap && fitsModel(setup, cap) ? cap.capacity.probes : []) {
      const c = cap.config.capacity;
      points.push({
        label: `${setup.label} probe`,
        setup,
        rate: p.rate,
        duration: c.probeDuration,
        drainTimeout: c.probeDrainTimeout,
        itlMs: p.summary.itl.p50 * 1000,
      });
    }
  }
  return points;
}

/** Measured against simulated ITL p50 (ms) at every point, under `model`. */
export function fitReport(model, points = fitPoints()) {
  return points.map((p) => {
    // The H200 runs were served without pausing for a place (--max-place-wait-steps 0).
    const sim = simulateSetup({ ...p.setup, placeWait: 0 }, { rate: p.rate, duration: p.duration, drainTimeout: p.drainTimeout, model });
    return { run: p.label, rate: p.rate, measuredItlMs: +p.itlMs.toFixed(2), simulatedItlMs: +(sim.summary.itl.p50 * 1000).toFixed(2) };
  });
}

const KEYS = ['a', 'b', 'c', 'd', 'offsetB'];
const loss = (rows) => rows.reduce((s, r) => s + Math.log(r.simulatedItlMs / r.measuredItlMs) ** 2, 0) / rows.length;

/** Nelder-Mead from `start` over the model's terms; b, c and d are kept at least 0. */
export function calibrate(start, { iterations = 60, log = () => {} } = {}) {
  const points = fitPoints();
  const toModel = (x) => Object.fromEntries(KEYS.map((k, i) => [k, ['b', 'c', 'd'].includes(k) ? Math.abs(x[i]) : x[i]]));
  const f = (x) => loss(fitReport(toModel(x), points));
  const scale = [1, 0.02, 0.01, 0.1, 0.5];
  let simplex = [KEYS.map((k) => start[k])];
  for (let i = 0; i < KEYS.length; i++) simplex.push(simplex[0].map((v, j) => (j === i ? v + scale[i] : v)));
  let values = simplex.map(f);
  for (let it = 0; it < iterations; it++) {
    const order = values.map((v, i) => i).sort((i, j) => values[i] - values[j]);
    simplex = order.map((i) => simplex[i]);
    values = order.map((i) => values[i]);
    log(`iteration ${it}: loss ${values[0].toFixed(5)} at ${JSON.stringify(toModel(simplex[0]))}`);
    const n = KEYS.length;
    const centroid = KEYS.map((_, j) => simplex.slice(0, n).reduce((s, x) => s + x[j], 0) / n);
    const along = (t) => centroid.map((c, j) => c + t * (simplex[n][j] - c));
    const reflected = along(-1);
    const fr = f(reflected);
    if (fr < values[0]) {
      const expanded = along(-2);
      const fe = f(expanded);
      [simplex[n], values[n]] = fe < fr ? [expanded, fe] : [reflected, fr];
    } else if (fr < values[n - 1]) {
      [simplex[n], values[n]] = [reflected, fr];
    } else {
      const contracted = along(0.5);
      const fc = f(contracted);
      if (fc < values[n]) {
        [simplex[n], values[n]] = [contracted, fc];
      } else {
        for (let i = 1; i <= n; i++) {
          simplex[i] = simplex[i].map((v, j) => (v + simplex[0][j]) / 2);
          values[i] = f(simplex[i]);
        }
      }
    }
  }
  const best = values.indexOf(Math.min(...values));
  const model = Object.fromEntries(Object.entries(toModel(simplex[best])).map(([k, v]) => [k, +v.toFixed(4)]));
  return { model, loss: values[best], points: fitReport(model, points) };
}

/** The fit's quality in words: the mean absolute error of log ITL, as a percentage. */
export function fitError(rows) {
  return +(100 * (Math.exp(rows.reduce((s, r) => s + Math.abs(Math.log(r.simulatedItlMs / r.measuredItlMs)), 0) / rows.length) - 1)).toFixed(1);
}
