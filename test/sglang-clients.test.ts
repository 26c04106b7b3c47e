// SGLang's own clients against a real troupe server on the demo model. The serving benchmark's
// whole flow for `--backend sglang` is replayed request for request, and its responses are read
// the way it reads them, so what it would record is asserted; then the routes SGLang's tests
// drive that need the real engine: /abort_request ending a running request, logprob_start_len
// against a prompt's length, log_metrics and /get_server_info.
import { describe, expect, it } from 'vitest';
import { useDemoServer } from './demo-server.js';

const demo = useDemoServer();

const PROMPT = 'List 3 countries and their capitals.';

// ---- python/sglang/bench_serving.py ----------------------------------------------------------

/** RequestFuncInput: what the benchmark knows of one request. */
interface BenchInput {
  prompt: string | number[];
  outputLen: number;
  loraName: string | null;
  stream: boolean;
}

/** RequestFuncOutput: what the benchmark records of one request. */
interface BenchOutput {
  success: boolean;
  generatedText: string;
  outputLen: number;
  itl: number[];
  error: string;
}

/**
 * async_request_sglang_generate, for the default flags (no --disable-ignore-eos, no
 * --return-logprob, no --extra-request-body): the payload it posts to /generate and how it reads
 * the reply, line by line as aiohttp's StreamReader yields it, the same for a stream and for
 * --disable-stream's single JSON line.
 */
async function asyncRequestSglangGenerate(base: string, input: BenchInput): Promise<BenchOutput> {
  const payload = {
    [typeof input.prompt === 'string' ? 'text' : 'input_ids']: input.prompt,
    sampling_params: { temperature: 0.0, max_new_tokens: input.outputLen, ignore_eos: true },
    stream: input.stream,
    lora_path: input.loraName,
    return_logprob: false,
    logprob_start_len: -1,
  };
  const output: BenchOutput = { success: false, generatedText: '', outputLen: input.outputLen, itl: [], error: '' };
  let generatedText = '';
  let outputLen = input.outputLen;
  let lastOutputLen = 0;
  let ttft = 0;
  const st = performance.now();
  let mostRecent = st;
  try {
    const response = await fetch(`${base}/generate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(payload),
    });
    if (response.status !== 200) {
      output.error = response.statusText;
      await response.body?.cancel();
      return output;
    }
    const lines = (await response.text()).split(/(?<=\n)/);
    for (const line of lines) {
      const chunkBytes = line.trim();
      if (chunkBytes === '') continue;
      const chunk = chunkBytes.startsWith('data: ') ? chunkBytes.slice('data: '.length) : chunkBytes;
      if (chunk === '[DONE]') continue;
      const data = JSON.parse(chunk) as { text?: string; meta_info: { completion_tokens: number } };
      if (typeof data.text === 'string' && data.text !== '') {
        const timestamp = performance.now();
        generatedText = data.text;
        outputLen = data.meta_info.completion_tokens;
        if (ttft === 0) {
          ttft = timestamp - st;
        } else {
          const newTokens = outputLen - lastOutputLen;
          if (newTokens === 0) continue;
          output.itl.push(...Array.from({ length: newTokens }, () => (timestamp - mostRecent) / newTokens));
        }
        mostRecent = timestamp;
        lastOutputLen = outputLen;
      }
    }
    output.generatedText = generatedText;
    output.success = true;
    output.outputLen = outputLen;
  } catch (err) {
    output.error = String(err);
  }
  return output;
}

describe("SGLang's serving benchmark (bench_serving.py --backend sglang)", () => {
  it('completes the whole run with every request a success of the length asked for', async () => {
    // run_benchmark: the model id comes from /v1/models when --model is not given.
    const models = (await (await fetch(`${demo().base}/v1/models`)).json()) as { data: Array<{ id: string }> };
    expect(models.data[0]!.id).toBe('demo');

    // benchmark(): one warmup request with the first --lora-name and at most 32 tokens.
    const loraNames = ['demo-a', 'demo-b'];
    const warmup = await asyncRequestSglangGenerate(demo().base, {
      prompt: PROMPT,
      outputLen: Math.min(40, 32),
      loraName: loraNames[0]!,
      stream: true,
    });
    expect(warmup, warmup.error).toMatchObject({ success: true, outputLen: 32 });

    // --flush-cache: a bodiless POST; the benchmark does not read the answer, which must not be an error.
    expect((await fetch(`${demo().base}/flush_cache`, { method: 'POST' })).status).toBe(200);

    // The run: every request at once (request rate inf), each on a random --lora-name, plus
    // requests with no adapter (no --lora-name), a --tokenize-prompt one and --disable-stream ones.
    const inputs: BenchInput[] = [
      ...[5, 9, 12, 7].map((outputLen, i) => ({ prompt: `${PROMPT} (${i})`, outputLen, loraName: loraNames[i % 2]!, stream: true })),
      { prompt: PROMPT, outputLen: 6, loraName: null, stream: true },
      { prompt: [128000, 861, 220, 18, 5961], outputLen: 8, loraName: 'demo-b', stream: true },
      { prompt: PROMPT, outputLen: 10, loraName: null, stream: false },
      { prompt: PROMPT, outputLen: 4, loraName: 'demo-a', stream: false },
    ];
    const outputs = await Promise.all(inputs.map((input) => asyncRequestSglangGenerate(demo().base, input)));
    outputs.forEach((out, i) => {
      expect(out.error).toBe('');
      expect(out.success).toBe(true);
      expect(out.outputLen).toBe(inputs[i]!.outputLen);
      expect(out.generatedText.length).toBeGreaterThan(0);
    });
    // calculate_metrics: a streamed request's inter-token latencies cover its tokens after the first.
    expect(outputs[0]!.itl.length).toBeGreaterThan(0);

    // benchmark(): after the run it reads internal_states[0] from /get_server_info.
    const info = await fetch(`${demo().base}/get_server_info`);
    expect(info.status).toBe(200);
    const json = (await info.json()) as { internal_states: Array<Record<string, unknown>> };
    expect(json.internal_states[0]!.avg_spec_accept_length ?? null).toBeNull();
  }, 120_000);
});

// ---- routes SGLang's tests drive -------------------------------------------------------------

const post = (path: string, body: unknown): Promise<Response> =>
  fetch(`${demo().base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

/** The data payloads of the complete events in `buffer`, and what is left of it. */
function takeEvents(buffer: string): { events: string[]; rest: string } {
  const parts = buffer.split('\n\n');
  const rest = parts.pop()!;
  return { events: parts.map((p) => p.slice('data: '.length)), rest };
}

describe("the real engine behind SGLang's routes", () => {
  // entrypoints/http_server.py abort_request -> TokenizerManager.abort_request(rid).
  it('ends a running request by rid; its stream ends with finish reason abort, then [DONE]', async () => {
    const res = await post('/generate', { text: PROMPT, rid: 'long-1', stream: true, sampling_params: { max_new_tokens: 3000, ignore_eos: true } });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    const events: string[] = [];
    while (events.length === 0) {
      const { value } = await reader.read();
      const got = takeEvents(buffer + decoder.decode(value, { stream: true }));
      buffer = got.rest;
      events.push(...got.events);
    }
    const aborted = await post('/abort_request', { rid: 'long-1' });
    expect(aborted.status).toBe(200);
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const got = takeEvents(buffer + decoder.decode(value, { stream: true }));
      buffer = got.rest;
      events.push(...got.events);
    }
    expect(events.at(-1)).toBe('[DONE]');
    const last = JSON.parse(events.at(-2)!) as { meta_info: { finish_reason: { type: string; message: string }; completion_tokens: number } };
    expect(last.meta_info.finish_reason).toEqual({ type: 'abort', message: 'the request was aborted by /abort_request' });
    expect(last.meta_info.completion_tokens).toBeLessThan(3000);
  }, 60_000);

  // managers/scheduler.py: -1 and the last prompt position mean output logprobs only.
  it('serves logprob_start_len -1 and the last prompt position, and refuses earlier and later ones by name', async () => {
    const ask = (start: number, returnLogprob = true): Promise<Response> =>
      post('/generate', {
        input_ids: [128000, 861, 220],
        sampling_params: { max_new_tokens: 1 },
        return_logprob: returnLogprob,
        logprob_start_len: start,
      });
    expect((await ask(-1)).status).toBe(200);
    expect((await ask(2)).status).toBe(200);
    const early = await ask(0);
    expect(early.status).toBe(400);
    expect((await early.json()).error.message).toMatch(/logprob_start_len 0 .*prompt tokens/);
    const late = await ask(3);
    expect(late.status).toBe(400);
    expect((await late.json()).error.message).toContain('only 3 tokens');
    expect((await ask(0, false)).status).toBe(200);
  }, 60_000);

  it('keeps requests with log_metrics false (as /health_generate) out of the request metrics', async () => {
    const counted = async (): Promise<number> => {
      const text = await (await fetch(`${demo().base}/metrics`)).text();
      return text
        .split('\n')
        .filter((l) => l.startsWith('troupe_adapter_requests_total{'))
        .reduce((sum, l) => sum + Number(l.split(' ').at(-1)), 0);
    };
    const before = await counted();
    expect((await post('/generate', { text: PROMPT, sampling_params: { max_new_tokens: 1 }, log_metrics: false })).status).toBe(200);
    expect((await fetch(`${demo().base}/health_generate`)).status).toBe(200);
    expect(await counted()).toBe(before);
    expect((await post('/generate', { text: PROMPT, sampling_params: { max_new_tokens: 1 } })).status).toBe(200);
    expect(await counted()).toBe(before + 1);
  }, 60_000);

  it("reports the engine's queues and KV cache in /get_server_info", async () => {
    const info = (await (await fetch(`${demo().base}/get_server_info`)).json()) as Record<string, any>;
    expect(info).toMatchObject({ served_model_name: 'demo', max_loras_per_batch: 3, context_length: 4096, device: 'cpu', enable_lora: true });
    expect(info.lora_paths.map((l: { lora_name: string }) => l.lora_name)).toEqual(['demo-a', 'demo-b']);
    expect(info.internal_states[0]).toMatchObject({ num_running_reqs: 0, num_waiting_reqs: 0, loaded_lora_adapters: 2 });
    expect(info.internal_states[0].kv_cache_total_blocks).toBeGreaterThan(0);
  }, 60_000);
});

describe('/abort_request on a request still waiting for a batch slot', () => {
  const small = useDemoServer(['--max-running-requests', '1']);

  it('ends it before it ran, and leaves the running one to be ended on its own', async () => {
    const send = (body: unknown): Promise<Response> =>
      fetch(`${small().base}/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const abort = (rid: string): Promise<Response> =>
      fetch(`${small().base}/abort_request`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ rid }) });
    const long = { text: PROMPT, sampling_params: { max_new_tokens: 3000, ignore_eos: true } };
    const running = send({ ...long, rid: 'running' });
    const waiting = send({ ...long, rid: 'waiting' });
    // The one batch slot is taken, so the second request queues; wait until the scheduler says so.
    for (;;) {
      const info = (await (await fetch(`${small().base}/get_server_info`)).json()) as {
        internal_states: Array<{ num_running_reqs: number; num_waiting_reqs: number }>;
      };
      const state = info.internal_states[0]!;
      if (state.num_running_reqs === 1 && state.num_waiting_reqs === 1) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect((await abort('waiting')).status).toBe(200);
    const queued = (await (await waiting).json()) as { meta_info: { finish_reason: { type: string }; completion_tokens: number } };
    expect(queued.meta_info.finish_reason.type).toBe('abort');
    expect(queued.meta_info.completion_tokens).toBe(0);
    expect((await abort('running')).status).toBe(200);
    const ran = (await (await running).json()) as { meta_info: { finish_reason: { type: string }; completion_tokens: number } };
    expect(ran.meta_info.finish_reason.type).toBe('abort');
    expect(ran.meta_info.completion_tokens).toBeLessThan(3000);
  }, 120_000);
});
