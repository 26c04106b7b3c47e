// S-LoRA's capacity measure: the highest request rate at which at least `target` (99%) of the
// requests meet the TTFT SLO. A bounded search: probe `start`, double while probes pass (halve
// while they fail) to bracket the capacity, then bisect the bracket. Each probe is a shorter
// run with the same seed, so probes differ only in how fast the same requests arrive.

/** The rate with two significant digits below 1 and a step of 0.01 above, to keep reports legible. */
const tidy = (r) => (r < 1 ? +r.toPrecision(2) : +r.toFixed(2));

/**
 * cfg: {target, start, max, min, bisections}; probe(rate, i) resolves to a measurement with
 * summary.sloAttainment. Returns {rate, bound, target, probes}: bound is 'bracketed' (rate
 * passed and a rate within the last bisection failed), 'at-least' (every probe up to max
 * passed) or 'below-min' (even min failed; rate is 0).
 */
export async function searchCapacity(cfg, probe) {
  const probes = [];
  const passes = async (rate) => {
    const m = await probe(rate, probes.length);
    const pass = m.summary.sloAttainment !== null && m.summary.sloAttainment >= cfg.target;
    probes.push({ rate, pass, ...m });
    return pass;
  };
  let lo = null; // highest passing rate
  let hi = null; // lowest failing rate
  let rate = tidy(cfg.start);
  if (await passes(rate)) {
    lo = rate;
    while (rate < cfg.max) {
      rate = tidy(Math.min(cfg.max, rate * 2));
      if (!(await passes(rate))) {
        hi = rate;
        break;
      }
      lo = rate;
    }
    if (hi === null) return { rate: lo, bound: 'at-least', target: cfg.target, probes };
  } else {
    hi = rate;
    while (rate > cfg.min) {
      rate = tidy(Math.max(cfg.min, rate / 2));
      if (await passes(rate)) {
        lo = rate;
        break;
      }
      hi = rate;
    }
    if (lo === null) return { rate: 0, bound: 'below-min', target: cfg.target, probes };
  }
  for (let i = 0; i < cfg.bisections; i++) {
    const mid = tidy((lo + hi) / 2);
    if (mid <= lo || mid >= hi) break;
    if (await passes(mid)) lo = mid;
    else hi = mid;
  }
  return { rate: lo, bound: 'bracketed', lowestFailing: hi, target: cfg.target, probes };
}
