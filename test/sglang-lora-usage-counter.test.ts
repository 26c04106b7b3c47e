// SGLang's LoRA usage-counter lifecycles (test/registered/lora/test_lora_usage_counter.py) over
// HTTP on the demo model: every way a request can end must release the adapter it named, or
// /unload_lora_adapter (which waits until no request uses the adapter) would never answer.
// Each case loads the adapter, ends requests one way, then unloads it; a leaked reference makes
// the unload, and so the test, time out. demo-a stays loaded throughout, as SGLang's sentinel.
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { useDemoServer } from './demo-server.js';

const CONTEXT_LEN = 2048;
// A KV cache smaller than the context, so the scheduler refuses a request after its adapter
// check (SGLang's scheduler-side BAD_REQUEST case).
const demo = useDemoServer([
  '--max-loras-per-batch',
  '2',
  '--max-running-requests',
  '1',
  '--context-length',
  String(CONTEXT_LEN),
  '--max-total-tokens',
  '1024',
]);
const TEST_NAME = 'lifecycle_test_adapter';
const PROMPT = 'Write a SQL query that selects all columns from a table.';
let adapterPath: string;

beforeAll(() => {
  adapterPath = join(demo().dir, 'adapters', 'demo-b');
});

const post = (path: string, body: unknown, signal?: AbortSignal): Promise<Response> =>
  fetch(`${demo().base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal });

function payload(o: { n?: number; maxNewTokens?: number; rid?: string; stream?: boolean } = {}): Record<string, unknown> {
  return {
    text: PROMPT,
    lora_path: TEST_NAME,
    sampling_params: { temperature: 0, max_new_tokens: o.maxNewTokens ?? 64, ignore_eos: true, ...(o.n ? { n: o.n } : {}) },
    stream: o.stream ?? false,
    ...(o.rid ? { rid: o.rid } : {}),
  };
}

async function loadTestAdapter(): Promise<void> {
  const res = await post('/load_lora_adapter', { lora_name: TEST_NAME, lora_path: adapterPath });
  expect((await res.json()).success).toBe(true);
}

/** Waits until the scheduler holds this many running and waiting requests. */
async function untilQueued(running: number, waiting: number): Promise<void> {
  for (;;) {
    const s = await demo().engine.stats();
    if (s.running === running && s.waiting === waiting) return;
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** SGLang's _assert_unload_completes: the unload answers 200 once nothing uses the adapter, and it is gone. */
async function assertUnloadCompletes(): Promise<void> {
  const res = await post('/unload_lora_adapter', { lora_name: TEST_NAME });
  expect(res.status).toBe(200);
  expect(Object.keys((await res.json()).loaded_adapters)).not.toContain(TEST_NAME);
  expect((await demo().engine.adapterDetails()).map((a) => a.name)).not.toContain(TEST_NAME);
}

describe('test_lora_usage_counter.py', () => {
  it('test_parallel_sampling_success: n > 1 releases every sample', async () => {
    await loadTestAdapter();
    const res = await post('/generate', payload({ n: 4, maxNewTokens: 8 }));
    expect(res.status).toBe(200);
    expect(await res.json()).toHaveLength(4);
    await assertUnloadCompletes();
  }, 60_000);

  it('test_disconnect_mid_generation: a client gone mid-generation (n = 1 and n = 4) releases it', async () => {
    await loadTestAdapter();
    for (const n of [1, 4]) {
      const controller = new AbortController();
      const pending = post('/generate', payload({ n, maxNewTokens: 900 }), controller.signal);
      await untilQueued(1, n - 1);
      controller.abort();
      await expect(pending).rejects.toThrow();
    }
    await assertUnloadCompletes();
  }, 60_000);

  it('test_abort_request_queued_and_running: /abort_request on a queued and a running request releases both', async () => {
    await loadTestAdapter();
    const running = post('/generate', payload({ rid: 'usage-counter-running', maxNewTokens: 900 }));
    await untilQueued(1, 0);
    const queued = post('/generate', payload({ rid: 'usage-counter-queued', maxNewTokens: 900 }));
    await untilQueued(1, 1);
    expect((await post('/abort_request', { rid: 'usage-counter-queued' })).status).toBe(200);
    expect((await post('/abort_request', { rid: 'usage-counter-running' })).status).toBe(200);
    for (const res of await Promise.all([running, queued])) {
      expect(res.status).toBe(200);
      expect((await res.json()).meta_info.finish_reason.type).toBe('abort');
    }
    await assertUnloadCompletes();
  }, 60_000);

  it('test_validation_failure_after_acquire: a prompt longer than the context is refused and releases it', async () => {
    await loadTestAdapter();
    const res = await post('/generate', {
      input_ids: new Array(CONTEXT_LEN + 100).fill(10),
      lora_path: TEST_NAME,
      sampling_params: { max_new_tokens: 8 },
    });
    expect(res.status).toBe(400);
    await assertUnloadCompletes();
  }, 60_000);

  // SGLang's case sends an unparsable json_schema, which its scheduler refuses; troupe's scheduler
  // refuses a request its KV cache cannot hold, after the adapter check, the same way.
  it('test_scheduler_bad_request: a request the scheduler refuses releases it', async () => {
    await loadTestAdapter();
    const res = await post('/generate', payload({ maxNewTokens: 1500 }));
    expect(res.status).toBe(400);
    expect((await res.json()).error.message).toMatch(/KV cache holds only 1024 tokens/);
    await assertUnloadCompletes();
  }, 60_000);

  it('test_streaming_parallel_disconnect: a stream of n = 4 closed after its first chunk releases it', async () => {
    await loadTestAdapter();
    const res = await post('/generate', payload({ n: 4, maxNewTokens: 100, stream: true }));
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    expect((await reader.read()).done).toBe(false);
    await reader.cancel();
    await assertUnloadCompletes();
  }, 60_000);
});
