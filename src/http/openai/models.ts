// GET /v1/models and /v1/models/{model}: the base model and one entry per adapter of the loaded
// set, in SGLang's shape (http_server.py's available_models and protocol.py's ModelCard): the
// base model's id and root are the served name, with max_model_len the context length; an
// adapter's id is its name, root its path and parent the served name. Adapters evicted from
// the loaded set are not listed, though a request naming one loads it again.
import type { Hono } from 'hono';
import type { AdapterStatus, TroupeEngine } from '../../api.js';
import { modelNotFound, openAiError } from './errors.js';

export interface ModelCard {
  id: string;
  object: 'model';
  created: number;
  owned_by: string;
  root: string;
  parent: string | null;
  max_model_len: number | null;
  /** troupe's addition: the adapter statechart's state ("ready" for the base model). */
  state: string;
}

export function registerModels(app: Hono, engine: TroupeEngine, servedModelName: string): void {
  // One creation time for the server's life, so listings are stable.
  const created = Math.floor(Date.now() / 1000);
  const cards = async (): Promise<ModelCard[]> => {
    const base: ModelCard = {
      id: servedModelName,
      object: 'model',
      created,
      owned_by: 'troupe',
      root: servedModelName,
      parent: null,
      max_model_len: engine.modelInfo().contextLength,
      state: 'ready',
    };
    const adapter = (a: AdapterStatus): ModelCard => ({
      id: a.name,
      object: 'model',
      created,
      owned_by: 'troupe',
      root: a.path,
      parent: servedModelName,
      max_model_len: null,
      state: a.error !== null ? 'failed' : a.state,
    });
    return [base, ...(await engine.adapters()).filter((a) => a.loaded).map(adapter)];
  };

  app.get('/v1/models', async (c) => c.json({ object: 'list', data: await cards() }));

  // SGLang retrieves only the base model; an adapter's card is answered too, by its id.
  app.get('/v1/models/:model{.+}', async (c) => {
    const id = c.req.param('model');
    const card = (await cards()).find((m) => m.id === id);
    return card ? c.json(card) : openAiError(c, modelNotFound(`The model '${id}' does not exist`));
  });
}
