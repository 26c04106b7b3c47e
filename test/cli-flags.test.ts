import { describe, expect, it } from 'vitest';
import { FLAGS } from '../src/config/flags.js';
import { helpText } from '../src/config/help.js';
import { FlagError, parseArgs } from '../src/config/parse.js';
import { parseLoraPath, validateFlags } from '../src/config/validate.js';

const validate = (...argv: string[]) => validateFlags(parseArgs(['--model-path', '/m', ...argv]).flags);
const rejects = (argv: string[], message: RegExp) => {
  expect(() => validate(...argv)).toThrow(FlagError);
  expect(() => validate(...argv)).toThrow(message);
};

describe('flag parsing', () => {
  it('fills SGLang defaults', () => {
    const { options } = validate();
    expect(options).toMatchObject({
      host: '127.0.0.1',
      port: 30000,
      maxLorasPerBatch: 8,
      maxLoadedLoras: null,
      loraEvictionPolicy: 'lru',
      loraBackend: 'csgmv',
      maxLoraChunkSize: 16,
      enableLora: false,
      enableLoraOverlapLoading: false,
      tpSize: 1,
      device: 'auto',
      logLevel: 'info',
      modelPath: '/m',
    });
  });

  it('accepts --flag value, --flag=value and underscores', () => {
    const { options } = validate('--port=8080', '--max_loras_per_batch', '4', '--host', '0.0.0.0');
    expect(options).toMatchObject({ port: 8080, maxLorasPerBatch: 4, host: '0.0.0.0' });
  });

  it('takes --enable-metrics and --trust-remote-code from SGLang command lines, which change nothing', () => {
    expect(validate('--enable-metrics', '--trust-remote-code').options).toEqual(validate().options);
    expect(validate('--enable-metrics=false').options).toEqual(validate().options);
  });

  it('keeps prefixes in the KV cache unless --disable-radix-cache, as SGLang does', () => {
    expect(validate().options.disableRadixCache).toBe(false);
    expect(validate('--disable-radix-cache').options).toEqual({ ...validate().options, disableRadixCache: true });
  });

  it('takes list flags up to the next flag', () => {
    const { options } = validate('--lora-paths', 'a=/x', '/y', '--port', '1');
    expect(options.loraPaths).toEqual([
      { name: 'a', path: '/x', pinned: false },
      { name: '/y', path: '/y', pinned: false },
    ]);
  });

  it('rejects unknown flags, missing values, bad numbers and bad choices by name', () => {
    expect(() => parseArgs(['--no-such-flag'])).toThrow(/unknown flag --no-such-flag/);
    expect(() => parseArgs(['--port'])).toThrow(/--port needs a value/);
    expect(() => parseArgs(['--port', 'abc'])).toThrow(/--port takes an integer, not "abc"/);
    expect(() => parseArgs(['--mem-fraction-static', 'x'])).toThrow(/--mem-fraction-static takes a number/);
    expect(() => parseArgs(['--lora-eviction-policy', 'random'])).toThrow(/must be one of lru, fifo/);
    expect(() => parseArgs(['--lora-target-modules', 'q_proj', 'qkv'])).toThrow(/"qkv" is not one of/);
    expect(() => parseArgs(['--port', '1', '--port', '2'])).toThrow(/given twice/);
    expect(() => parseArgs(['serve'])).toThrow(/unexpected argument "serve"/);
  });

  it('lists every flag in --help with its default', () => {
    const text = helpText();
    for (const f of FLAGS) expect(text).toContain(`--${f.name}`);
    expect(text).toContain('(default: 30000)');
  });
});

describe('--lora-paths items', () => {
  it('parses PATH, NAME=PATH and JSON', () => {
    expect(parseLoraPath('/a/b')).toEqual({ name: '/a/b', path: '/a/b', pinned: false });
    expect(parseLoraPath('x=/a=b')).toEqual({ name: 'x', path: '/a=b', pinned: false });
    expect(parseLoraPath('{"lora_name":"x","lora_path":"/p","pinned":true}')).toEqual({ name: 'x', path: '/p', pinned: true });
  });
  it('rejects malformed items', () => {
    expect(() => parseLoraPath('{"lora_name":"x"')).toThrow(/not valid JSON/);
    expect(() => parseLoraPath('{"lora_name":"x"}')).toThrow(/"lora_name" and "lora_path"/);
    expect(() => parseLoraPath('{"lora_name":"x","lora_path":"/p","pin":1}')).toThrow(/unknown field "pin"/);
    expect(() => parseLoraPath('=/p')).toThrow(/NAME=PATH/);
  });
});

describe('SGLang LoRA rules', () => {
  it('enables LoRA when --lora-paths is given', () => {
    expect(validate('--lora-paths', 'a=/a').options.enableLora).toBe(true);
  });

  it('ignores --lora-paths with a warning when --enable-lora=false', () => {
    const { options, warnings } = validate('--enable-lora=false', '--lora-paths', 'a=/a');
    expect(options.enableLora).toBe(false);
    expect(options.loraPaths).toEqual([]);
    expect(warnings[0]).toMatch(/ignored/);
  });

  it('requires --max-lora-rank and --lora-target-modules without --lora-paths', () => {
    rejects(['--enable-lora'], /both --max-lora-rank and --lora-target-modules/);
    rejects(['--enable-lora', '--max-lora-rank', '8'], /both --max-lora-rank and --lora-target-modules/);
    rejects(['--enable-lora', '--lora-target-modules', 'q_proj'], /both --max-lora-rank and --lora-target-modules/);
    expect(validate('--enable-lora', '--max-lora-rank', '8', '--lora-target-modules', 'q_proj', 'v_proj').options.loraTargetModules).toEqual([
      'q_proj',
      'v_proj',
    ]);
  });

  it('expands "all" and requires it alone', () => {
    const { options } = validate('--enable-lora', '--max-lora-rank', '8', '--lora-target-modules', 'all');
    expect(options.loraTargetModules).toHaveLength(7);
    rejects(['--enable-lora', '--max-lora-rank', '8', '--lora-target-modules', 'all', 'q_proj'], /"all" must be the only module/);
  });

  it('requires max_loaded_loras >= max_loras_per_batch', () => {
    rejects(
      ['--lora-paths', 'a=/a', '--max-loras-per-batch', '4', '--max-loaded-loras', '3'],
      /--max-loaded-loras \(3\) must be at least --max-loras-per-batch \(4\)/,
    );
    expect(validate('--lora-paths', 'a=/a', '--max-loras-per-batch', '4', '--max-loaded-loras', '4').options.maxLoadedLoras).toBe(4);
  });

  it('requires no more --lora-paths than --max-loaded-loras', () => {
    rejects(
      ['--lora-paths', 'a=/a', 'b=/b', 'c=/c', '--max-loras-per-batch', '2', '--max-loaded-loras', '2'],
      /lists 3 adapters, more than --max-loaded-loras \(2\)/,
    );
  });

  it('with overlap loading requires max_loaded_loras set and <= 2 x max_loras_per_batch', () => {
    rejects(['--lora-paths', 'a=/a', '--enable-lora-overlap-loading'], /at most 2 x --max-loras-per-batch \(16\); it is not set/);
    rejects(['--lora-paths', 'a=/a', '--enable-lora-overlap-loading', '--max-loras-per-batch', '2', '--max-loaded-loras', '5'], /\(4\); it is 5/);
    const ok = validate('--lora-paths', 'a=/a', '--enable-lora-overlap-loading', '--max-loras-per-batch', '2', '--max-loaded-loras', '4');
    expect(ok.options.enableLoraOverlapLoading).toBe(true);
  });

  it('allows at most max_loras_per_batch - 1 pinned adapters', () => {
    const pin = (n: string) => `{"lora_name":"${n}","lora_path":"/${n}","pinned":true}`;
    rejects(['--max-loras-per-batch', '2', '--lora-paths', pin('a'), pin('b')], /at most --max-loras-per-batch - 1 \(1\) may be pinned/);
    expect(validate('--max-loras-per-batch', '2', '--lora-paths', pin('a'), 'b=/b').options.loraPaths[0]!.pinned).toBe(true);
  });

  it('rejects duplicate adapter names', () => {
    rejects(['--lora-paths', 'a=/x', 'a=/y'], /names the adapter "a" twice/);
  });

  it('checks --max-lora-chunk-size is a power of 2 in 16..128', () => {
    for (const bad of ['8', '24', '256']) rejects(['--max-lora-chunk-size', bad], /power of 2 from 16 to 128/);
    for (const good of [16, 32, 64, 128]) expect(validate('--max-lora-chunk-size', String(good)).options.maxLoraChunkSize).toBe(good);
  });

  it('accepts triton as the sgmv backend', () => {
    expect(validate('--lora-backend', 'triton').options.loraBackend).toBe('sgmv');
    expect(validate('--lora-backend', 'sgmv').options.loraBackend).toBe('sgmv');
  });

  it('requires max_loras_per_batch to be positive', () => {
    rejects(['--max-loras-per-batch', '0'], /--max-loras-per-batch must be at least 1/);
  });
});

describe('other rules', () => {
  it('checks ranges and divisibility', () => {
    rejects(['--port', '70000'], /--port must be at most 65535/);
    // Each running sequence holds one of the engine's 65,536 sequence slots.
    rejects(['--max-running-requests', '70000'], /--max-running-requests must be at most 65536, got 70000/);
    expect(validate('--max-running-requests', '65536').options.maxRunningRequests).toBe(65536);
    rejects(['--mem-fraction-static', '1.5'], /between 0 and 1/);
    rejects(['--chunked-prefill-size', '100', '--page-size', '16'], /divisible by --page-size/);
    rejects(['--served-model-name', 'a:b'], /cannot contain ":"/);
    rejects(['--tp-size', '0'], /--tp-size must be at least 1/);
    rejects(['--gpu-id-step', '-1'], /--gpu-id-step must be at least 0/);
  });

  it("takes SGLang's tensor-parallel flags", () => {
    expect(validate('--tp', '4', '--base-gpu-id', '2', '--gpu-id-step', '0').options).toMatchObject({ tpSize: 4, baseGpuId: 2, gpuIdStep: 0 });
    expect(validate('--tensor-parallel-size', '2').options).toMatchObject({ tpSize: 2, baseGpuId: 0, gpuIdStep: 1 });
  });

  it('--disable-cuda-graph turns graphs off', () => {
    expect(validate('--disable-cuda-graph').options.cudaGraphMaxBs).toBe(0);
    expect(validate().options.cudaGraphMaxBs).toBe(256);
  });
});

describe('README', () => {
  it('lists the flags exactly as the flag table does (regenerate with scripts/readme-flags.js)', async () => {
    const { readFileSync } = await import('node:fs');
    const { markdownFlagTable } = await import('../src/config/help.js');
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    expect(readme).toContain(`<!-- flags:start -->\n${markdownFlagTable()}\n<!-- flags:end -->`);
  });
});
