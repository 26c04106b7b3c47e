// A simulated `troupe serve` for bench/serve-sim.js: the real Scheduler (from dist/) driven in
// virtual time by a discrete-event loop, with a fake loader and a fake GPU whose steps take the
// time a step-time model says. Everything else is the server's own logic: admission, chunked
// prefill, adapter placement and eviction, the loader's ordering and read limit. No wall clock
// is read, so a run is a pure function of its inputs.
//
// The loop follows src/actors/scheduler.worker.ts: schedule, run the step, complete, schedule
// again at once; when nothing is schedulable the loop stops and the next arrival or loader
// answer starts it (an arrival after the events of its instant, as setImmediate does there).
// The loader follows src/actors/loader.worker.ts: a command waits for the earlier commands that
// name its adapter or slot, reads go at most `maxReads` at a time (first come first served),
// and copies one at a time, as the engine's pool fills its slots (one fill holds the pool's lock
// until its copies land, and one transfer link carries them all).
import { fakeResult } from './fake-step.js';

/** A min-heap of events by time, then by insertion, so equal times keep their order. */
class Events {
  heap = [];
  n = 0;
  push(at, fn) {
    const h = this.heap;
    const e = { at, seq: this.n++, fn };
    h.push(e);
    for (let i = h.length - 1; i > 0;) {
      const p = (i - 1) >> 1;
      if (!Events.before(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }
  pop() {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0) {
      h[0] = last;
      for (let i = 0; ;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && Events.before(h[l], h[m])) m = l;
        if (r < h.length && Events.before(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }
  get size() {
    return this.heap.length;
  }
  static before(a, b) {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }
}

function keysOf(c) {
  if (c.kind === 'copy-to-slot') return [`adapter:${c.name}`, `slot:${c.slot}`];
  if (c.kind === 'clear-slot') return [`slot:${c.slot}`];
  if (c.kind === 'swap-slots') return [...c.slots.map((s) => `slot:${s}`), ...c.names.filter((n) => n !== null).map((n) => `adapter:${n}`)];
  return [`adapter:${c.name}`];
}

/**
 * Work that takes `ms` and runs at most `limit` at a time, first come first served; a place
 * passes straight to the next waiter when one ends, as the loader's Limit does. `started`
 * counts the jobs begun.
 */
class Lane {
  constructor(events, clock, limit, ms) {
    Object.assign(this, { events, clock, limit, ms });
    this.running = 0;
    this.waiters = [];
    this.started = 0;
  }

  run(done) {
    if (this.running < this.limit) this.start(done);
    else this.waiters.push(done);
  }

  start(done) {
    this.running++;
    this.started++;
    this.events.push(this.clock() + this.ms, () => {
      this.running--;
      const next = this.waiters.shift();
      if (next) this.start(next);
      done();
    });
  }
}

/** The loader's concurrency with modelled durations; answers go to `answer(event)` when they land. */
class SimLoader {
  constructor(events, clock, spec, answer) {
    Object.assign(this, { events, clock, spec, answer });
    this.byKey = new Map(); // key -> unfinished commands naming it, in order
    this.reads = new Lane(events, clock, spec.maxReads, spec.readMs);
    this.copies = new Lane(events, clock, 1, spec.copyMs);
    this.onCpu = new Set();
  }

  /** Reads and copies begun so far. */
  get counts() {
    return { reads: this.reads.started, copies: this.copies.started };
  }

  /** Counts from now on (after the startup's loads). */
  resetCounts() {
    this.reads.started = 0;
    this.copies.started = 0;
  }

  send(cmd) {
    const job = { cmd, keys: keysOf(cmd), started: false };
    for (const k of job.keys) {
      const q = this.byKey.get(k);
      if (q) q.push(job);
      else this.byKey.set(k, [job]);
    }
    this.tryStart(job);
  }

  tryStart(job) {
    if (job.started || !job.keys.every((k) => this.byKey.get(k)[0] === job)) return;
    job.started = true;
    const { cmd } = job;
    if (cmd.kind === 'load-cpu') this.reads.run(() => this.finish(job));
    else if (cmd.kind === 'copy-to-slot') this.copies.run(() => this.finish(job));
    else this.finish(job);
  }

  finish(job) {
    const { cmd } = job;
    for (const k of job.keys) {
      const q = this.byKey.get(k);
      q.shift();
      if (q.length === 0) this.byKey.delete(k);
    }
    if (cmd.kind === 'load-cpu') {
      this.onCpu.add(cmd.name);
      this.answer({ kind: 'cpu-loaded', name: cmd.name, rank: this.spec.rank, targetModules: this.spec.targetModules, bytes: this.spec.bytes });
    } else if (cmd.kind === 'copy-to-slot') {
      this.answer(
        this.onCpu.has(cmd.name)
          ? { kind: 'slot-ready', name: cmd.name, slot: cmd.slot }
          : { kind: 'load-failed', name: cmd.name, error: 'not in CPU memory' },
      );
    } else if (cmd.kind === 'swap-slots') {
      // Inside the GPU, a small fraction of a copy's time: modelled as done at once.
      const [mover, partner] = cmd.names;
      this.answer({ kind: 'slot-ready', name: mover, slot: cmd.slots[1] });
      if (partner !== null) this.answer({ kind: 'slot-ready', name: partner, slot: cmd.slots[0] });
    } else if (cmd.kind === 'drop-cpu') {
      this.onCpu.delete(cmd.name);
    }
    for (const k of job.keys) {
      const head = this.byKey.get(k)?.[0];
      if (head) this.tryStart(head);
    }
  }
}

/** The step's duration from the step-time model: a + b*rows + c*prefill tokens + d*distinct adapters, in ms. */
export function stepMs(model, batch) {
  const rows = batch.loraSlots.length;
  let decode = 0;
  for (let i = 0; i < rows; i++) if (batch.seqStarts[i + 1] - batch.seqStarts[i] === 1 && batch.sample[i]) decode++;
  const prefill = batch.tokens.length - decode;
  const slots = new Set(batch.loraSlots);
  slots.delete(-1);
  return { ms: model.a + model.b * rows + model.c * prefill + model.d * slots.size, rows, prefill, adapters: slots.size };
}

/**
 * One run. sim: {Scheduler, DEFAULT_SAMPLING, options (SchedulerOptions), names (adapter names,
 * all registered before the first arrival), loader: {readMs, copyMs, maxReads, rank,
 * targetModules, bytes}, model: {a, b, c, d} (ms; copySlowdown: how many times longer a step
 * planned while a copy runs takes, 1 when absent), workload (makeWorkload's requests, `adapter`
 * indexing names), drainTimeout (s), overlapSchedule (troupe serve's default, true; false as
 * --disable-overlap-schedule)}. Returns {records (as the HTTP benchmark keeps them, for
 * serve-client's summarize), elapsed (s, first arrival to last end), stats: sums over the steps (steps, rows, prefillTokens,
 * adapters, busyMs), the most requests waiting at once, and the loader's reads and copies}.
 */
export function simulate(sim) {
  const { Scheduler, options, names, workload } = sim;
  const events = new Events();
  let now = 0;
  const clock = () => now;
  const s = new Scheduler(options);
  const loader = new SimLoader(events, clock, sim.loader, (ev) => {
    s.onLoaderEvent(ev);
    flush();
    kick();
  });
  const flush = () => {
    for (const c of s.takeCommands()) loader.send(c);
    for (const e of s.takeEvents()) record(e);
  };

  let t0 = 0;
  const reqs = workload.map((w) => ({ w, id: `r${w.index}`, ttft: null, last: null, itls: [], outputTokens: 0, end: null, ok: false }));
  const byId = new Map(reqs.map((r) => [r.id, r]));
  let open = reqs.length;
  const record = (e) => {
    const r = byId.get(e.id);
    if (!r) return;
    const at = (now - t0) / 1000;
    // An event carries at most one token (-1: none, the request only finished).
    if (e.token >= 0) {
      if (r.ttft === null) r.ttft = at - r.w.at;
      else r.itls.push(at - r.last);
      r.last = at;
      r.outputTokens++;
    }
    if (e.finish) {
      r.end = at;
      r.ok = e.finish.type !== 'abort';
      byId.delete(e.id);
      open--;
    }
  };

  const stats = { steps: 0, rows: 0, prefillTokens: 0, adapters: 0, busyMs: 0, maxWaiting: 0 };
  // The scheduler thread's loop (scheduler.worker.ts): with overlap scheduling, the step after
  // the one in flight is planned before that one's result is back and starts the moment it
  // ends. A plan that waits for a copy (no overlap loading) then holds back the step after the
  // next, not the next: the engine is still busy for one step of the copy's time.
  const overlapSchedule = sim.overlapSchedule ?? true;
  const inFlight = []; // planned steps, in order: {batch, end}
  let engineFreeAt = 0;
  let busy = false;
  let kicked = false;
  const send = (next) => {
    if (!next) return;
    const t = stepMs(sim.model, next.batch);
    // A step planned while a slot is being filled runs beside the fill's kernels.
    if (loader.copies.running > 0) t.ms *= sim.model.copySlowdown ?? 1;
    stats.steps++;
    stats.rows += t.rows;
    stats.prefillTokens += t.prefill;
    stats.adapters += t.adapters;
    stats.busyMs += t.ms;
    engineFreeAt = Math.max(now, engineFreeAt) + t.ms;
    inFlight.push({ batch: next.batch, end: engineFreeAt });
  };
  const runStep = () => {
    flush();
    if (inFlight.length === 0) send(s.schedule());
    if (overlapSchedule && inFlight.length === 1) send(s.scheduleAhead());
    flush();
    stats.maxWaiting = Math.max(stats.maxWaiting, s.stats().waiting);
    const head = inFlight[0];
    busy = head !== undefined;
    if (!head || head.awaited) return;
    head.awaited = true;
    events.push(head.end, () => {
      inFlight.shift();
      for (const e of s.complete(fakeResult(head.batch))) record(e);
      runStep();
    });
  };
  const kick = () => {
    if (busy || kicked) return;
    kicked = true;
    // After the other events of this instant, as the worker's setImmediate.
    events.push(now, () => {
      kicked = false;
      if (!busy) runStep();
    });
  };

  // Startup: every adapter registered and the loader idle before the first request.
  for (const name of names) s.addAdapter({ name, path: `/adapters/${name}`, pinned: false });
  flush();
  while (events.size > 0) {
    const e = events.pop();
    now = e.at;
    e.fn();
  }
  t0 = now;
  loader.resetCounts();

  const sampling = { ...sim.DEFAULT_SAMPLING, temperature: 0, ignoreEos: true };
  for (const r of reqs) {
    events.push(t0 + r.w.at * 1000, () => {
      s.submit({
        id: r.id,
        promptIds: r.w.inputIds,
        lora: names[r.w.adapter],
        sampling: { ...sampling, maxNewTokens: r.w.maxNewTokens },
        returnLogprob: false,
        topLogprobsNum: 0,
        seed: 0,
      });
      flush();
      kick();
    });
  }
  const lastAt = workload.at(-1)?.at ?? 0;
  const cutAt = t0 + (lastAt + sim.drainTimeout) * 1000;
  while (events.size > 0 && open > 0) {
    const e = events.pop();
    if (e.at > cutAt) break;
    now = e.at;
    e.fn();
  }
  // Unfinished at the cut: failed, as the HTTP benchmark counts them.
  const cut = (cutAt - t0) / 1000;
  for (const r of reqs) if (r.end === null) r.end = cut;
  const records = reqs.map((r) => ({ ok: r.ok, ttft: r.ttft, itls: r.itls, outputTokens: r.outputTokens, e2e: r.end - r.w.at, sentAt: r.w.at }));
  const elapsed = records.reduce((m, r) => Math.max(m, r.sentAt + r.e2e), 0);
  return { records, elapsed, stats: { ...stats, reads: loader.counts.reads, copies: loader.counts.copies } };
}
