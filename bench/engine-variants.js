// Engine variants for A/B benchmarks in one process: each variant is a set of environment switches
// (the CUDA backend reads TROUPE_* switches when an engine is made), so two builds' worth of
// choices can be timed side by side, round by round, on one GPU within the same minute instead of
// in separate runs minutes apart (a step's time drifts by about what such choices change).

/**
 * Parses a list such as `default;TROUPE_LORA_IN_GEMM=0 TROUPE_CUDA_GEMV=0` (variants split by `;`,
 * each `default` or NAME=VALUE settings split by spaces; a value may hold commas) into
 * [{ label, env }]. Throws a message naming the bad part.
 */
export function parseVariants(text) {
  if (text === undefined || text.trim() === '') return [{ label: 'default', env: {} }];
  const variants = text.split(';').map((part) => {
    const label = part.trim();
    if (label === '') throw new Error(`LORA_VARIANTS: an empty variant in "${text}"`);
    if (label === 'default') return { label, env: {} };
    const env = {};
    for (const setting of label.split(/\s+/)) {
      const eq = setting.indexOf('=');
      const name = eq > 0 ? setting.slice(0, eq).trim() : '';
      if (!/^[A-Z][A-Z0-9_]*$/.test(name))
        throw new Error(`LORA_VARIANTS: "${setting}" is not NAME=VALUE with an upper-case environment variable name`);
      if (name in env) throw new Error(`LORA_VARIANTS: ${name} is set twice in "${label}"`);
      env[name] = setting.slice(eq + 1).trim();
    }
    return { label, env };
  });
  const labels = new Set(variants.map((v) => v.label));
  if (labels.size !== variants.length) throw new Error(`LORA_VARIANTS: a variant is named twice in "${text}"`);
  return variants;
}

/** Runs make() with the variant's settings in process.env, and puts the environment back after. */
export function withEnv(env, make) {
  const before = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    return make();
  } finally {
    for (const [k, v] of Object.entries(before)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}
