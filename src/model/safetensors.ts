// A strict safetensors reader and a small writer. The format is an 8-byte little-endian
// header length, a JSON header, then the data region; every offset and shape is checked
// against the file before any byte is trusted, so a truncated or inconsistent file fails
// with the file and tensor named instead of producing garbage weights.
import { closeSync, fstatSync, openSync, readSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { describeValue, parseJson, quoteName } from './json-text.js';

export const DTYPE_BYTES: Record<string, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

// A header larger than this is not a real checkpoint; refusing it avoids a huge allocation.
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export class SafetensorsError extends Error {
  constructor(
    readonly file: string,
    readonly tensor: string | null,
    readonly detail: string,
  ) {
    super(`${basename(file)}${tensor === null ? '' : `: ${tensorLabel(tensor)}`}: ${detail}`);
    this.name = 'SafetensorsError';
  }
}

/**
 * How errors name a tensor. A name is only ever seen in a file that is well-formed safetensors
 * (a binary length, then a JSON object), never in a text file reached by mistake, so quoting it
 * tells nothing about other files.
 */
export const tensorLabel = (name: string): string => quoteName('tensor', name);

export interface SafetensorsEntry {
  name: string;
  file: string;
  dtype: string;
  shape: number[];
  offset: number; // absolute byte offset in the file
  nbytes: number;
}

export interface SafetensorsHeader {
  file: string;
  metadata: Record<string, string>;
  tensors: Map<string, SafetensorsEntry>;
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

export function readSafetensorsHeader(file: string): SafetensorsHeader {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (err) {
    throw new SafetensorsError(file, null, `cannot open: ${(err as Error).message}`);
  }
  try {
    const size = fstatSync(fd).size;
    if (size < 8) throw new SafetensorsError(file, null, `file is ${size} bytes, too short for the 8-byte header length`);
    const lenBuf = Buffer.alloc(8);
    readSync(fd, lenBuf, 0, 8, 0);
    const headerLen = lenBuf.readBigUInt64LE(0);
    if (headerLen > BigInt(MAX_HEADER_BYTES)) throw new SafetensorsError(file, null, `header length ${headerLen} exceeds ${MAX_HEADER_BYTES} bytes`);
    const n = Number(headerLen);
    if (8 + n > size) throw new SafetensorsError(file, null, `header length ${n} runs past the end of the ${size}-byte file (truncated?)`);
    const headerBuf = Buffer.alloc(n);
    readSync(fd, headerBuf, 0, n, 8);
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(headerBuf);
    } catch {
      throw new SafetensorsError(file, null, 'header is not valid UTF-8');
    }
    let json: unknown;
    try {
      json = parseJson(text);
    } catch (err) {
      // The position counts from the start of the header, after the 8-byte length.
      throw new SafetensorsError(file, null, `header ${(err as Error).message}`);
    }
    if (json === null || typeof json !== 'object' || Array.isArray(json)) {
      throw new SafetensorsError(file, null, 'header is not a JSON object');
    }
    const dataStart = 8 + n;
    const dataLen = size - dataStart;
    const tensors = new Map<string, SafetensorsEntry>();
    let metadata: Record<string, string> = {};
    for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (raw === null || typeof raw !== 'object' || Array.isArray(raw) || Object.values(raw).some((v) => typeof v !== 'string')) {
          throw new SafetensorsError(file, null, '__metadata__ must map strings to strings');
        }
        metadata = raw as Record<string, string>;
        continue;
      }
      tensors.set(name, parseEntry(file, name, raw, dataStart, dataLen));
    }
    checkOverlaps(file, [...tensors.values()]);
    return { file, metadata, tensors };
  } finally {
    closeSync(fd);
  }
}

function parseEntry(file: string, name: string, raw: unknown, dataStart: number, dataLen: number): SafetensorsEntry {
  const fail = (detail: string): never => {
    throw new SafetensorsError(file, name, detail);
  };
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) fail('entry is not an object');
  const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (typeof e.dtype !== 'string' || !Object.hasOwn(DTYPE_BYTES, e.dtype)) {
    fail(
      `unknown dtype: it must be one of ${Object.keys(DTYPE_BYTES).join(', ')}, got ${typeof e.dtype === 'string' ? 'another string' : describeValue(e.dtype)}`,
    );
  }
  const dtype = e.dtype as string;
  if (!Array.isArray(e.shape) || !e.shape.every(isCount)) fail(`shape is not a list of non-negative integers (got ${describeValue(e.shape)})`);
  const shape = e.shape as number[];
  const off = e.data_offsets;
  if (!Array.isArray(off) || off.length !== 2 || !isCount(off[0]) || !isCount(off[1])) {
    fail(`data_offsets is not a pair of non-negative integers (got ${describeValue(off)})`);
  }
  const [begin, end] = off as [number, number];
  if (end < begin) fail(`data_offsets [${begin}, ${end}] end before they begin`);
  const expected = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype]!;
  if (end - begin !== expected) {
    fail(`shape [${shape.join(', ')}] of ${dtype} needs ${expected} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`);
  }
  if (end > dataLen) fail(`data ends at byte ${end} but the file holds only ${dataLen} bytes of data (truncated?)`);
  return { name, file, dtype, shape, offset: dataStart + begin, nbytes: end - begin };
}

function checkOverlaps(file: string, entries: SafetensorsEntry[]): void {
  const sorted = entries.filter((e) => e.nbytes > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.offset < prev.offset + prev.nbytes) {
      throw new SafetensorsError(file, cur.name, `data overlaps ${tensorLabel(prev.name)}`);
    }
  }
}

/** Reads one tensor's raw bytes. */
export function readTensorBytes(entry: SafetensorsEntry): Buffer {
  const buf = Buffer.alloc(entry.nbytes);
  const fd = openSync(entry.file, 'r');
  try {
    let done = 0;
    while (done < entry.nbytes) {
      const got = readSync(fd, buf, done, entry.nbytes - done, entry.offset + done);
      if (got === 0) throw new SafetensorsError(entry.file, entry.name, 'file ended while reading the data (truncated?)');
      done += got;
    }
  } finally {
    closeSync(fd);
  }
  return buf;
}

/** Converts F32, F16 or BF16 bytes to a Float32Array. */
export function toFloat32(bytes: Uint8Array, dtype: string, what = 'tensor'): Float32Array {
  const n = bytes.byteLength / (DTYPE_BYTES[dtype] ?? 1);
  const out = new Float32Array(n);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dtype === 'F32') {
    for (let i = 0; i < n; i++) out[i] = view.getFloat32(i * 4, true);
  } else if (dtype === 'BF16') {
    const u32 = new Uint32Array(1);
    const f32 = new Float32Array(u32.buffer);
    for (let i = 0; i < n; i++) {
      u32[0] = view.getUint16(i * 2, true) << 16;
      out[i] = f32[0]!;
    }
  } else if (dtype === 'F16') {
    for (let i = 0; i < n; i++) out[i] = halfToFloat(view.getUint16(i * 2, true));
  } else {
    throw new Error(`${what}: dtype ${dtype} is not a floating-point type (F32, F16 or BF16)`);
  }
  return out;
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

/** Float32 to bfloat16 bits, rounding to nearest even as torch does. */
export function toBF16(values: Float32Array): Uint8Array {
  const u32 = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const x = u32[i]!;
    const isNaN = (x & 0x7fffffff) > 0x7f800000;
    out[i] = isNaN ? 0x7fc0 : ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return new Uint8Array(out.buffer);
}

export interface TensorToWrite {
  name: string;
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

/** Writes a safetensors file; the header is padded to 8 bytes as the reference implementation does. */
export function writeSafetensors(file: string, tensors: TensorToWrite[], metadata?: Record<string, string>): void {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const expected = t.shape.reduce((a, b) => a * b, 1) * (DTYPE_BYTES[t.dtype] ?? NaN);
    if (expected !== t.data.byteLength) throw new Error(`writeSafetensors: ${t.name} has ${t.data.byteLength} bytes, shape needs ${expected}`);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(headerBytes.length));
  writeFileSync(file, Buffer.concat([len, headerBytes, ...tensors.map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))]));
}
