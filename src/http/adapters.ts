// SGLang's dynamic LoRA endpoints. Replies have SGLang's shape
// {success, error_message, loaded_adapters: {name: path}}, with 400 when the engine refuses
// (SGLang answers a duplicate or unknown name with 400 too, not 409/404). loaded_adapters is
// the loaded set: an adapter evicted from it past --max-loaded-loras, or being unloaded, is
// left out, as SGLang leaves it out.
import type { Context, Hono } from 'hono';
import type { TroupeEngine } from '../api.js';
import { TroupeError } from '../errors.js';
import type { Log } from '../log.js';
import { asBool, asNonEmptyString, readJsonObject, rejectUnknownKeys } from './validate.js';

const LOAD_KEYS = new Set(['lora_name', 'lora_path', 'pinned']);
const UNLOAD_KEYS = new Set(['lora_name']);

export function registerAdapterRoutes(app: Hono, engine: TroupeEngine, log: Log): void {
  const loaded = async (): Promise<Record<string, string>> =>
    Object.fromEntries((await engine.adapters()).filter((a) => a.loaded).map((a) => [a.name, a.path]));

  // Request-shape errors go through the app's error handler like any other 400; only what the
  // engine refuses is answered in SGLang's success:false form.
  const failure = async (c: Context, action: string, err: unknown): Promise<Response> => {
    const message = err instanceof Error ? err.message : String(err);
    log('warning', `${action} failed: ${message}`);
    // A path outside --lora-allowed-dirs keeps its 403, and a stopped engine its 503.
    const status = err instanceof TroupeError && (err.kind === 'unavailable' || err.kind === 'forbidden') ? err.status : 400;
    return c.json({ success: false, error_message: message, loaded_adapters: await loaded() }, status as 400);
  };

  app.post('/load_lora_adapter', async (c) => {
    const body = await readJsonObject(c.req.raw);
    rejectUnknownKeys(body, LOAD_KEYS, 'field');
    const name = asNonEmptyString(body.lora_name, 'lora_name');
    const path = asNonEmptyString(body.lora_path, 'lora_path');
    const pinned = body.pinned === undefined || body.pinned === null ? false : asBool(body.pinned, 'pinned');
    try {
      await engine.loadAdapter({ name, path, pinned });
    } catch (err) {
      return failure(c, `loading adapter ${JSON.stringify(name)}`, err);
    }
    return c.json({ success: true, error_message: '', loaded_adapters: await loaded() });
  });

  app.post('/unload_lora_adapter', async (c) => {
    const body = await readJsonObject(c.req.raw);
    rejectUnknownKeys(body, UNLOAD_KEYS, 'field');
    const name = asNonEmptyString(body.lora_name, 'lora_name');
    try {
      await engine.unloadAdapter(name);
    } catch (err) {
      return failure(c, `unloading adapter ${JSON.stringify(name)}`, err);
    }
    return c.json({ success: true, error_message: '', loaded_adapters: await loaded() });
  });
}
