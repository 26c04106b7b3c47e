import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeFloats } from '../src/model/demo.js';
import { readSafetensorsHeader, readTensorBytes, toBF16, toFloat32, writeSafetensors } from '../src/model/safetensors.js';

const dir = mkdtempSync(join(tmpdir(), 'troupe-st-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

/** A safetensors file with a hand-written header, to build broken files the writer refuses to make. */
function raw(header: string, dataBytes: number, lengthField?: number): string {
  const file = join(dir, `raw${n++}.safetensors`);
  const h = Buffer.from(header, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(lengthField ?? h.length));
  writeFileSync(file, Buffer.concat([len, h, Buffer.alloc(dataBytes)]));
  return file;
}

const f32 = (values: number[]): Uint8Array => new Uint8Array(new Float32Array(values).buffer);

function valid(): string {
  const file = join(dir, `valid${n++}.safetensors`);
  writeSafetensors(
    file,
    [
      { name: 'a', dtype: 'F32', shape: [2, 3], data: f32([1, 2, 3, 4, 5, 6]) },
      { name: 'b', dtype: 'BF16', shape: [4], data: toBF16(new Float32Array([0.5, -1, 2, 3])) },
      { name: 'empty', dtype: 'F16', shape: [0, 7], data: new Uint8Array(0) },
    ],
    { format: 'pt' },
  );
  return file;
}

describe('safetensors reader', () => {
  it('reads back what the writer wrote', () => {
    const file = valid();
    const h = readSafetensorsHeader(file);
    expect(h.metadata).toEqual({ format: 'pt' });
    expect([...h.tensors.keys()]).toEqual(['a', 'b', 'empty']);
    const a = h.tensors.get('a')!;
    expect(a.shape).toEqual([2, 3]);
    expect(a.nbytes).toBe(24);
    // The header is padded to a multiple of 8 so the data region is aligned.
    expect(a.offset % 8).toBe(0);
    expect([...toFloat32(readTensorBytes(a), 'F32')]).toEqual([1, 2, 3, 4, 5, 6]);
    const b = h.tensors.get('b')!;
    expect(b.offset).toBe(a.offset + 24);
    expect([...toFloat32(readTensorBytes(b), 'BF16')]).toEqual([0.5, -1, 2, 3]);
    expect(h.tensors.get('empty')!.nbytes).toBe(0);
  });

  it('rejects a truncated file, naming the tensor', () => {
    const file = valid();
    truncateSync(file, readSafetensorsHeader(file).tensors.get('b')!.offset + 4);
    expect(() => readSafetensorsHeader(file)).toThrow(/tensor "b".*truncated/);
  });

  it('rejects a file shorter than the length field', () => {
    const file = join(dir, 'short.safetensors');
    writeFileSync(file, Buffer.alloc(5));
    expect(() => readSafetensorsHeader(file)).toThrow(/too short/);
  });

  it('rejects a header length past the end of the file', () => {
    expect(() => readSafetensorsHeader(raw('{}', 0, 1000))).toThrow(/header length 1000 runs past the end/);
    expect(() => readSafetensorsHeader(raw('{}', 0, 2 ** 40))).toThrow(/exceeds/);
  });

  it('rejects a header that is not JSON or not an object', () => {
    expect(() => readSafetensorsHeader(raw('{"a": [1,', 0))).toThrow(/header is not valid JSON \(it ends early\)$/);
    expect(() => readSafetensorsHeader(raw('{"a": 1} trailing', 0))).toThrow(/header is not valid JSON \(at position 9\)$/);
    const binary = join(dir, 'binary.safetensors');
    writeFileSync(binary, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0, 0xff]));
    expect(() => readSafetensorsHeader(binary)).toThrow(/header is not valid UTF-8$/);
    expect(() => readSafetensorsHeader(raw('[1, 2]', 0))).toThrow(/not a JSON object/);
  });

  it('rejects overlapping tensors', () => {
    const header = JSON.stringify({
      x: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      y: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    });
    expect(() => readSafetensorsHeader(raw(header, 12))).toThrow(/tensor "y".*overlaps tensor "x"/);
  });

  it('rejects a shape that does not match its data offsets', () => {
    const header = JSON.stringify({ w: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 20] } });
    expect(() => readSafetensorsHeader(raw(header, 24))).toThrow(/tensor "w".*needs 24 bytes.*hold 20/);
    const backwards = JSON.stringify({ w: { dtype: 'F32', shape: [0], data_offsets: [8, 0] } });
    expect(() => readSafetensorsHeader(raw(backwards, 8))).toThrow(/end before they begin/);
    const badShape = JSON.stringify({ w: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } });
    expect(() => readSafetensorsHeader(raw(badShape, 4))).toThrow(/not a list of non-negative integers/);
  });

  it('rejects an unknown dtype', () => {
    const header = JSON.stringify({ w: { dtype: 'F4', shape: [2], data_offsets: [0, 1] } });
    expect(() => readSafetensorsHeader(raw(header, 1))).toThrow(/tensor "w": unknown dtype: it must be one of F64, .*, got another string$/);
    const inherited = JSON.stringify({ w: { dtype: 'constructor', shape: [2], data_offsets: [0, 1] } });
    expect(() => readSafetensorsHeader(raw(inherited, 1))).toThrow(/unknown dtype/);
  });

  it('refuses to write data that does not fit the shape', () => {
    expect(() => writeSafetensors(join(dir, 'bad.safetensors'), [{ name: 'w', dtype: 'F32', shape: [3], data: f32([1, 2]) }])).toThrow(
      /w has 8 bytes/,
    );
  });
});

describe('float conversions', () => {
  it('round-trips bf16 and rounds to nearest even', () => {
    const exact = [0, -0, 1, -2.5, 3.140625, 2 ** -130, Infinity, -Infinity];
    expect([...toFloat32(toBF16(new Float32Array(exact)), 'BF16')]).toEqual(exact);
    const approx = toFloat32(toBF16(new Float32Array([1e30, -1e-30, 0.1])), 'BF16');
    [1e30, -1e-30, 0.1].forEach((v, i) => expect(Math.abs(approx[i]! - v) / Math.abs(v)).toBeLessThan(2 ** -8));
    // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
    const ties = toFloat32(toBF16(new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20])), 'BF16');
    expect([...ties]).toEqual([1, 1 + 2 ** -6, 1 + 2 ** -7]);
    expect(Number.isNaN(toFloat32(toBF16(new Float32Array([NaN])), 'BF16')[0])).toBe(true);
  });

  it('round-trips f16, including subnormals, overflow and ties', () => {
    const exact = [0, 1, -2, 0.5, 65504, 2 ** -14, 2 ** -24, 3 * 2 ** -24, -1.5, Infinity];
    expect([...toFloat32(encodeFloats(new Float32Array(exact), 'F16'), 'F16')]).toEqual(exact);
    const rounded = toFloat32(encodeFloats(new Float32Array([1 + 2 ** -11, 1 + 3 * 2 ** -11, 70000, 2 ** -26, 1.7 * 2 ** -24]), 'F16'), 'F16');
    expect([...rounded]).toEqual([1, 1 + 2 ** -9, Infinity, 0, 2 ** -23]);
    // Random values survive with f16's relative precision.
    const vals = new Float32Array([0.1, -0.337, 123.4, -0.0002]);
    const back = toFloat32(encodeFloats(vals, 'F16'), 'F16');
    vals.forEach((v, i) => expect(Math.abs(back[i]! - v) / Math.abs(v)).toBeLessThan(2 ** -10));
  });

  it('refuses to convert integer tensors', () => {
    expect(() => toFloat32(new Uint8Array(4), 'I32', 'layer.w')).toThrow(/layer\.w: dtype I32 is not a floating-point type/);
  });
});
