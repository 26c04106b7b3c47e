// Reading the small JSON files of checkpoints and adapters with errors that name the file
// (and never quote it: see json-text.ts).
import { readFileSync, statSync } from 'node:fs';
import { parseJson } from './json-text.js';
import { SafetensorsError, readSafetensorsHeader, tensorLabel, type SafetensorsHeader } from './safetensors.js';
import { badRequest } from '../errors.js';

/** Configs, indexes and token lists are kilobytes; a larger "config" is a mistake and is not read. */
export const MAX_JSON_FILE_BYTES = 64 * 1024 * 1024;

export function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

export function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

export function readJsonFile(path: string): unknown {
  let text: string;
  try {
    const size = statSync(path).size;
    if (size > MAX_JSON_FILE_BYTES) throw new Error(`it is ${size} bytes; a JSON file here may hold at most ${MAX_JSON_FILE_BYTES}`);
    text = readFileSync(path, 'utf8');
  } catch (err) {
    // Node's fs messages name the path and the system error, nothing the file holds.
    throw badRequest(`${path}: cannot read: ${(err as Error).message}`);
  }
  try {
    return parseJson(text);
  } catch (err) {
    throw badRequest(`${path}: ${(err as Error).message}`);
  }
}

/** The strict header reader, with its errors turned into client errors that keep the full path. */
export function readHeader(path: string): SafetensorsHeader {
  try {
    return readSafetensorsHeader(path);
  } catch (err) {
    if (err instanceof SafetensorsError) {
      // The reader names only the base name; checkpoints have several shards, so keep the path.
      throw badRequest(`${path}${err.tensor === null ? '' : `: ${tensorLabel(err.tensor)}`}: ${err.detail}`);
    }
    throw err;
  }
}
