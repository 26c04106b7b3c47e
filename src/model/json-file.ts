// Reading the small JSON files of checkpoints and adapters with errors that name the file.
import { readFileSync, statSync } from 'node:fs';
import { basename } from 'node:path';
import { SafetensorsError, readSafetensorsHeader, type SafetensorsHeader } from './safetensors.js';
import { badRequest } from '../errors.js';

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
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw badRequest(`${path}: cannot read: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw badRequest(`${path}: not valid JSON: ${(err as Error).message}`);
  }
}

/** The strict header reader, with its errors turned into client errors that keep the full path. */
export function readHeader(path: string): SafetensorsHeader {
  try {
    return readSafetensorsHeader(path);
  } catch (err) {
    if (err instanceof SafetensorsError) {
      const tensor = err.tensor === null ? '' : `: tensor "${err.tensor}"`;
      // The reader names only the base name; checkpoints have several shards, so keep the path.
      const detail = err.message.slice(`${basename(err.file)}${tensor}: `.length);
      throw badRequest(`${path}${tensor}: ${detail}`);
    }
    throw err;
  }
}
