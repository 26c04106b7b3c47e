// The open-loop workload of S-LoRA's evaluation (Sheng et al., 2023, section 7): requests arrive
// with Gamma-distributed gaps (rate in requests/s, coefficient of variation cv; cv 1 is a
// Poisson process, larger is burstier), each names one of N adapters with power-law popularity
// (the adapter of popularity rank k is picked with probability proportional to k^-alpha), and
// prompt and output lengths are uniform in given ranges. Everything comes from the seed, and
// each aspect draws from its own stream, so changing the rate keeps the same adapters, lengths
// and prompts and only rescales the arrival times (the capacity search relies on this).
const root = new URL('..', import.meta.url);
const { Rng } = await import(new URL('dist/src/model/demo.js', root).href);

// Separate streams: arrivals, adapter ranking, adapter draws, lengths, token ids.
const STREAM = { arrivals: 1, ranking: 2, adapters: 3, lengths: 4, tokens: 5 };
const streamRng = (seed, stream) => new Rng(seed * 8 + stream);

/** Gamma(shape, 1) by Marsaglia and Tsang (2000); shapes below 1 through Gamma(shape + 1) U^(1/shape). */
export function sampleGamma(rng, shape) {
  if (shape < 1) return sampleGamma(rng, shape + 1) * rng.uniform() ** (1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    const x = rng.normal();
    const v = (1 + c * x) ** 3;
    if (v <= 0) continue;
    if (Math.log(rng.uniform()) < 0.5 * x * x + d - d * v + d * Math.log(v)) return d * v;
  }
}

/** Gaps in seconds with mean 1 / rate and coefficient of variation cv (0: evenly spaced). */
export function* interArrivals(seed, rate, cv) {
  if (!(rate > 0)) throw new Error(`rate must be positive, got ${rate}`);
  if (!(cv >= 0)) throw new Error(`cv must be at least 0, got ${cv}`);
  const rng = streamRng(seed, STREAM.arrivals);
  // Gamma with shape k = 1 / cv^2 and scale 1 / (rate k) has mean 1 / rate and cv as asked.
  const shape = cv === 0 ? Infinity : 1 / (cv * cv);
  for (;;) yield shape === Infinity ? 1 / rate : sampleGamma(rng, shape) / (rate * shape);
}

/** Popularity rank (0 = most popular) to adapter index: a seeded shuffle, so rank 1 is not always a0000. */
export function popularityOrder(seed, n) {
  const rng = streamRng(seed, STREAM.ranking);
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng.uniform() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

/** Cumulative probabilities of ranks 1..n under p(k) proportional to k^-alpha. */
export function powerLawCdf(n, alpha) {
  if (!(n >= 1)) throw new Error(`need at least one adapter, got ${n}`);
  if (!(alpha >= 0)) throw new Error(`alpha must be at least 0, got ${alpha}`);
  const cdf = new Float64Array(n);
  let sum = 0;
  for (let k = 1; k <= n; k++) cdf[k - 1] = sum += k ** -alpha;
  for (let i = 0; i < n; i++) cdf[i] /= sum;
  cdf[n - 1] = 1;
  return cdf;
}

/** The first index whose cumulative probability exceeds u. */
function drawRank(cdf, u) {
  let lo = 0;
  let hi = cdf.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (cdf[mid] > u) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

const uniformInt = (rng, [lo, hi]) => lo + Math.floor(rng.uniform() * (hi - lo + 1));

function checkRange(name, range) {
  const [lo, hi] = range;
  if (!Number.isInteger(lo) || !Number.isInteger(hi) || lo < 1 || hi < lo)
    throw new Error(`${name} must be integers 1 <= min <= max, got ${lo}:${hi}`);
}

/**
 * The requests of one run, in arrival order: {index, at (seconds from the start), adapter (its
 * index in 0..adapters-1), inputIds, maxNewTokens}. Stops at `duration` seconds or after
 * `requests` requests, whichever comes first (at least one must be given).
 * opts: {seed, rate, cv, alpha, adapters, inputLen: [min, max], outputLen: [min, max],
 * tokenRange: [lo, hi) of the random prompt token ids, duration?, requests?}.
 */
export function makeWorkload(opts) {
  const { seed, rate, cv, alpha, adapters, inputLen, outputLen, tokenRange } = opts;
  const duration = opts.duration ?? Infinity;
  const limit = opts.requests ?? Infinity;
  if (duration === Infinity && limit === Infinity) throw new Error('give a duration or a number of requests');
  checkRange('prompt lengths', inputLen);
  checkRange('output lengths', outputLen);
  const [tokLo, tokHi] = tokenRange;
  if (!(tokHi > tokLo && tokLo >= 0)) throw new Error(`token id range must be 0 <= lo < hi, got ${tokLo}:${tokHi}`);
  const gaps = interArrivals(seed, rate, cv);
  const order = popularityOrder(seed, adapters);
  const cdf = powerLawCdf(adapters, alpha);
  const pick = streamRng(seed, STREAM.adapters);
  const lengths = streamRng(seed, STREAM.lengths);
  const tokens = streamRng(seed, STREAM.tokens);
  const out = [];
  let at = 0;
  while (out.length < limit) {
    at += gaps.next().value;
    if (at > duration) break;
    const rank = drawRank(cdf, pick.uniform());
    const promptLen = uniformInt(lengths, inputLen);
    const maxNewTokens = uniformInt(lengths, outputLen);
    const inputIds = Array.from({ length: promptLen }, () => tokLo + Math.floor(tokens.uniform() * (tokHi - tokLo)));
    out.push({ index: out.length, at, adapter: order[rank], rank, inputIds, maxNewTokens });
  }
  return out;
}
