// The one table of `troupe serve` flags. The parser (parse.ts), the validation
// (validate.ts), `--help` (help.ts) and the README's flag table are all generated from it,
// so a flag's name, default and meaning are written down exactly once. Names and defaults
// follow SGLang's server arguments so existing command lines keep working.
import { LORA_MODULES } from '../engine/types.js';

export type FlagKind = 'string' | 'int' | 'float' | 'bool' | 'choice' | 'list';

export interface FlagSpec {
  /** The long name without dashes, as SGLang spells it. */
  name: string;
  aliases?: string[];
  kind: FlagKind;
  /** The value when the flag is absent; null means "decided later" (see help). */
  default: string | number | boolean | null | string[];
  choices?: readonly string[];
  /** For list flags: the allowed items. */
  itemChoices?: readonly string[];
  help: string;
  group: 'model' | 'server' | 'lora' | 'memory' | 'runtime';
}

export const FLAGS: readonly FlagSpec[] = [
  {
    name: 'model-path',
    aliases: ['model'],
    kind: 'string',
    default: null,
    group: 'model',
    help: 'Hugging Face model directory (config.json, *.safetensors, tokenizer.json). Without it, a demo model is served with its adapters: the trained one in models/demo when it is there, else the generated one in demo-model/ (written on first use) with demo-a and demo-b.',
  },
  {
    name: 'tokenizer-path',
    kind: 'string',
    default: null,
    group: 'model',
    help: 'Directory holding tokenizer.json and tokenizer_config.json; defaults to --model-path.',
  },
  {
    name: 'trust-remote-code',
    kind: 'bool',
    default: false,
    group: 'model',
    help: 'Taken so SGLang command lines start unchanged: troupe runs no code from a checkpoint, only its config, weights and tokenizer files.',
  },
  {
    name: 'dtype',
    kind: 'choice',
    default: 'auto',
    choices: ['auto', 'bfloat16', 'half', 'float16', 'float', 'float32'],
    group: 'model',
    help: "What the model computes in. The CUDA backend computes in bfloat16 and the CPU backend in float32, whatever the checkpoint stores; naming the other is refused at start rather than ignored. auto takes the backend's.",
  },
  {
    name: 'served-model-name',
    kind: 'string',
    default: null,
    group: 'model',
    help: 'Model name reported by the API and used in OpenAI "model" fields; defaults to --model-path (demo for the demo model).',
  },
  {
    name: 'context-length',
    kind: 'int',
    default: null,
    group: 'model',
    help: "Longest prompt plus output in tokens; defaults to the model's max_position_embeddings.",
  },
  { name: 'host', kind: 'string', default: '127.0.0.1', group: 'server', help: 'Address to listen on.' },
  { name: 'port', kind: 'int', default: 30000, group: 'server', help: 'Port to listen on.' },
  {
    name: 'enable-metrics',
    kind: 'bool',
    default: false,
    group: 'server',
    help: "Taken so SGLang command lines start unchanged: GET /metrics is always served, under troupe's, vLLM's and SGLang's names.",
  },
  {
    name: 'api-key',
    kind: 'string',
    default: null,
    group: 'server',
    help: 'Require "Authorization: Bearer KEY" on every route except /health, /health_generate, /metrics and /metrics/gateway.',
  },
  {
    name: 'allowed-hosts',
    kind: 'list',
    default: [],
    group: 'server',
    help: 'Host header values accepted (names or name:port; * accepts any). When absent: any when --host is not a loopback address, else localhost, 127.0.0.1 and [::1] only, which stops DNS-rebinding pages from reaching a local server.',
  },
  {
    name: 'max-request-bytes',
    kind: 'int',
    default: 33554432,
    group: 'server',
    help: 'Largest request body in bytes; a larger one is answered 413 before it is read.',
  },
  {
    name: 'max-top-logprobs-num',
    kind: 'int',
    default: 20,
    group: 'server',
    help: 'Largest top_logprobs_num (OpenAI: logprobs, top_logprobs) a request may ask for.',
  },
  {
    name: 'tokenizer-worker-num',
    kind: 'int',
    default: 1,
    group: 'server',
    help: 'Tokenizer threads for prompts and streaming; prompts longer than 64 KiB are tokenized on one more thread of their own, so they never delay the others.',
  },
  {
    name: 'graceful-shutdown-timeout',
    kind: 'float',
    default: 20,
    group: 'server',
    help: 'Seconds that running requests get to finish after SIGTERM or SIGINT; the rest then end with an error. A second signal exits at once.',
  },
  {
    name: 'log-level',
    kind: 'choice',
    default: 'info',
    choices: ['debug', 'info', 'warning', 'error'],
    group: 'server',
    help: 'Least severe log level printed.',
  },
  { name: 'enable-lora', kind: 'bool', default: null, group: 'lora', help: 'Enable LoRA serving. Set automatically when --lora-paths is given.' },
  {
    name: 'lora-paths',
    kind: 'list',
    default: [],
    group: 'lora',
    help: 'Adapters to load at start, each PATH, NAME=PATH, or JSON {"lora_name":...,"lora_path":...,"pinned":bool}.',
  },
  {
    name: 'max-loras-per-batch',
    kind: 'int',
    default: 8,
    group: 'lora',
    help: "Most distinct adapters in one batch, the base model counting as one; also the pool's size in adapters of --max-lora-rank unless --max-gpu-loras is given.",
  },
  {
    name: 'max-gpu-loras',
    kind: 'int',
    default: null,
    group: 'lora',
    help: "troupe's own (SGLang has no such flag): the pool's size in adapters of --max-lora-rank (a pool cut into slots of a lower rank fits more adapters of lower ranks: see Slots by rank), so adapters keep their slot after leaving a batch and come back with no copy. At least --max-loras-per-batch, which still caps the adapters of one batch, and at most --max-loaded-loras when that is set; defaults to --max-loras-per-batch.",
  },
  {
    name: 'max-loaded-loras',
    kind: 'int',
    default: null,
    group: 'lora',
    help: 'Most adapters loaded at once: loading past it evicts the least recently used unpinned one, which a request naming it loads again. Also the most adapters held in CPU memory. At least --max-loras-per-batch; unlimited when absent.',
  },
  {
    name: 'lora-eviction-policy',
    kind: 'choice',
    default: 'lru',
    choices: ['lru', 'fifo'],
    group: 'lora',
    help: 'Which unused adapter leaves the pool when a slot is needed: least recently used, or first loaded.',
  },
  {
    name: 'lora-backend',
    kind: 'choice',
    default: 'csgmv',
    choices: ['csgmv', 'sgmv', 'triton'],
    group: 'lora',
    help: 'LoRA kernels: csgmv (chunked segments) or sgmv (one segment per request). triton is accepted as sgmv.',
  },
  {
    name: 'lora-allowed-dirs',
    kind: 'list',
    default: [],
    group: 'lora',
    help: 'Directories that /load_lora_adapter may read from (symbolic links are resolved first); any directory when absent.',
  },
  {
    name: 'max-lora-rank',
    kind: 'int',
    default: null,
    group: 'lora',
    help: 'Largest adapter rank the pool holds; inferred from --lora-paths when absent.',
  },
  {
    name: 'lora-target-modules',
    kind: 'list',
    default: [],
    itemChoices: [...LORA_MODULES, 'all'],
    group: 'lora',
    help: `Modules the pool holds LoRA weights for (${LORA_MODULES.join(', ')}, or all); inferred from --lora-paths when absent.`,
  },
  { name: 'max-lora-chunk-size', kind: 'int', default: 16, group: 'lora', help: 'Chunk size of the csgmv backend: a power of 2 from 16 to 128.' },
  {
    name: 'max-place-wait-steps',
    kind: 'int',
    default: 50,
    group: 'lora',
    help: "troupe's own. Steps a request may wait for a place in the batch while other adapters hold all --max-loras-per-batch places; then the running requests of one adapter give theirs up (they are preempted, their cache recomputed when they run again, and queue behind the requests waiting then). One adapter at a time, a request at most once. 0: never, as in SGLang.",
  },
  {
    name: 'enable-lora-overlap-loading',
    kind: 'bool',
    default: false,
    group: 'lora',
    help: 'Copy adapters to the GPU while other batches run instead of waiting for them. Needs --max-loaded-loras at most 2 x --max-loras-per-batch.',
  },
  {
    name: 'mem-fraction-static',
    kind: 'float',
    default: 0.85,
    group: 'memory',
    help: 'Fraction of free GPU memory, after the weights, given to the KV cache.',
  },
  {
    name: 'max-total-tokens',
    kind: 'int',
    default: null,
    group: 'memory',
    help: 'KV cache size in tokens; overrides --mem-fraction-static (CPU default: 32768).',
  },
  { name: 'page-size', kind: 'int', default: 16, group: 'memory', help: 'Tokens per KV cache block.' },
  {
    name: 'max-running-requests',
    kind: 'int',
    default: 256,
    group: 'runtime',
    help: 'Most sequences in one batch (at most 65536: each running sequence holds one of the engine’s sequence slots).',
  },
  {
    name: 'chunked-prefill-size',
    kind: 'int',
    default: 2048,
    group: 'runtime',
    help: 'Most prompt tokens prefilled in one step; longer prompts are split into chunks.',
  },
  {
    name: 'tp-size',
    aliases: ['tp', 'tensor-parallel-size'],
    kind: 'int',
    default: 1,
    group: 'runtime',
    help: 'Tensor-parallel degree: the model is split over this many ranks (one GPU each), which run every batch together.',
  },
  { name: 'base-gpu-id', kind: 'int', default: 0, group: 'runtime', help: 'The GPU of rank 0.' },
  {
    name: 'gpu-id-step',
    kind: 'int',
    default: 1,
    group: 'runtime',
    help: 'GPU of rank r = --base-gpu-id + r x this. 0 puts every rank on one GPU (activations then pass through host memory).',
  },
  {
    name: 'disable-custom-all-reduce',
    kind: 'bool',
    default: false,
    group: 'runtime',
    help: "With --tp-size above 1 on GPUs with peer access, send every all-reduce and all-gather through NCCL. By default messages up to 2 MiB (decode steps' hidden states) go through troupe's one-shot peer-to-peer kernels, which avoid NCCL's per-call latency.",
  },
  { name: 'cuda-graph-max-bs', kind: 'int', default: 256, group: 'runtime', help: 'Largest decode batch captured as a CUDA graph.' },
  { name: 'disable-cuda-graph', kind: 'bool', default: false, group: 'runtime', help: 'Run decode steps without CUDA graphs.' },
  {
    name: 'disable-overlap-schedule',
    kind: 'bool',
    default: false,
    group: 'runtime',
    help: 'Schedule each step only after the last one ends. By default the next step is scheduled and sent while the engine runs the current one, and starts as soon as it ends (one engine rank; with --tp-size above 1 steps always go one at a time).',
  },
  {
    name: 'disable-radix-cache',
    kind: 'bool',
    default: false,
    group: 'runtime',
    help: "Compute every prompt in full. By default the KV cache keeps each request's full blocks (--page-size tokens) for later requests that start with the same tokens under the same adapter, as SGLang's radix cache does, until their room is needed.",
  },
  {
    name: 'device',
    kind: 'choice',
    default: 'auto',
    choices: ['auto', 'cpu', 'cuda'],
    group: 'runtime',
    help: 'auto picks CUDA when the addon was built with it and a GPU is present, else CPU.',
  },
];

export function findFlag(name: string): FlagSpec | undefined {
  return FLAGS.find((f) => f.name === name || f.aliases?.includes(name));
}
